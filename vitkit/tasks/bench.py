"""Measure inference speed: model-only (random pixels, fixed shape) and end to end over a folder of images
(decode + preprocess in loader workers + model), on any runtime backend / dtype.

Every result is a flat dict: img_s, ms_p50, ms_p95 (per batch), peak_rss_mb, backend, dtype, batch_size,
plus details. img_s is batch_size / median batch time, so one slow outlier does not move it.

Try it:  python -c "import vitkit; from vitkit.tasks.bench import bench_model; \
print(bench_model(vitkit.load(arch='deit_tiny_patch16_224'), batch_size=1))"
"""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

import torch

from vitkit.data.sources import expand_inputs
from vitkit.models.vit import VisionTransformer
from vitkit.progress import bar
from vitkit.runtime import PreparedViT, prepare
from vitkit.runtime.measure import peak_rss_mb, reset_peak_rss


def _summary(times_s: list[float], batch_size: int) -> dict:
    ms = sorted(t * 1000 for t in times_s)
    p50 = statistics.median(ms)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return {"img_s": round(batch_size * 1000 / p50, 2), "ms_p50": round(p50, 2), "ms_p95": round(p95, 2),
            "iters": len(ms)}


def _network(model_or_net) -> tuple[VisionTransformer, object]:
    """(the network, the owning vitkit Model or None)."""
    if isinstance(model_or_net, torch.nn.Module):
        return model_or_net, None
    return model_or_net.net, model_or_net


# -- model only --------------------------------------------------------------------------------------
def bench_model(model_or_net, batch_size: int = 1, image_size: int | None = None, backend: str | None = "auto",
                dtype: str | None = "auto", warmup: int = 3, iters: int = 20, device: str | None = None,
                min_time_s: float = 0.0, seed: int = 0, progress: bool = False) -> dict:
    """Model-only throughput of a vitkit `Model` or a network on a fixed random batch.

    A plain network is first prepared (in place) for `backend` / `dtype`; backend=None measures it as it is
    (the unoptimised reference). An already prepared network is measured as prepared. With backend
    "compile" the first call compiles; its time is reported as compile_s and is not in the timings.
    Runs `warmup` untimed batches then at least `iters` timed ones (and at least `min_time_s` seconds), with a
    progress bar on stderr when `progress` (outside the timings).
    """
    net, owner = _network(model_or_net)
    reset_peak_rss()
    start_prepare = time.perf_counter()
    if backend is not None and isinstance(net, VisionTransformer) and not isinstance(net, PreparedViT):
        device = device or (str(owner.device) if owner is not None else "cpu")
        net = prepare(net, backend, dtype, device)
        if owner is not None:
            owner.net = net  # prepare works in place; keep the Model's handle consistent
    prepare_s = time.perf_counter() - start_prepare
    info = getattr(net, "runtime", None)
    dev = torch.device(info.device) if info else next(net.parameters()).device
    size = image_size or net.config.image_size
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch_size, net.config.in_chans, size, size, generator=gen)

    def step():
        with torch.inference_mode():
            out = net(pixels.to(dev))
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
        return out

    untimed = max(warmup, 1)  # the first call always runs untimed
    with bar(None if min_time_s else untimed + iters, "bench", unit="batch", show=progress, leave=False) as done:
        first = time.perf_counter()
        step()
        first_s = time.perf_counter() - first
        done.update()
        for _ in range(untimed - 1):
            step()
            done.update()
        times: list[float] = []
        begin = time.perf_counter()
        while len(times) < iters or time.perf_counter() - begin < min_time_s:
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
            done.update()
    result = _summary(times, batch_size)
    result.update(
        peak_rss_mb=round(peak_rss_mb(), 1), backend=info.backend if info else "plain",
        dtype=info.dtype if info else str(next(net.parameters()).dtype).replace("torch.", ""),
        batch_size=batch_size, image_size=size, device=str(dev), threads=torch.get_num_threads(),
        packed=bool(info and info.packed), prepare_s=round(prepare_s, 3), first_call_s=round(first_s, 3),
        compile_s=round(info.compile_s, 2) if info and info.compile_s is not None else None,
        model_params_m=round(sum(t.numel() for t in net.state_dict().values()) / 1e6, 2),  # packed weights are buffers
    )
    return result


def with_peak_fraction(result: dict, config, image_size: int) -> dict:
    """`result` plus the arithmetic rate it implies (gflop_s: img/s x the model's FLOPs per image) and its fraction
    of this machine's measured GEMM peak for the dtype it ran in (vitkit.runtime.machine; probed once, cached)."""
    from vitkit.runtime.machine import machine, model_flops

    flops = model_flops(config, image_size)
    dtype = {"float32": "fp32", "bfloat16": "bf16"}.get(result["dtype"], result["dtype"])
    here = machine()
    peak = here.peak(dtype) if result.get("device", "cpu").startswith("cpu") else None
    gflop_s = result["img_s"] * flops / 1e9
    return {**result, "gflop_per_image": round(flops / 1e9, 2), "gflop_s": round(gflop_s, 1),
            "peak_gflop_s": peak, "peak_fraction": round(gflop_s / peak, 3) if peak else None, "cpu": here.cpu}


# -- end to end --------------------------------------------------------------------------------------
def bench_end_to_end(model, folder: str | Path | list[str], batch_size: int = 16, workers: int = 2,
                     draft: bool = False, repeat: int = 1, warmup_batches: int = 1, progress: bool = False) -> dict:
    """Images/s of decode + preprocess (in `workers` loader processes) + model over a folder (or a list of
    paths), as `vitkit classify` runs it. `model` is a vitkit `Model` (prepared or not). The first
    `warmup_batches` model calls run on random pixels before the clock starts (compilation, allocator);
    worker start-up is inside the measured time, as a user sees it. `repeat` > 1 feeds the list that many
    times through one loader (a longer run on a small folder). `progress`: a bar of the images on stderr."""
    from vitkit.data.loader import iter_batches  # the loader owns the worker processes

    paths = expand_inputs([str(folder)]) if isinstance(folder, (str, Path)) else list(folder)  # sorted
    if not paths:
        raise FileNotFoundError(f"no images in {folder}")
    net = model.net
    info = getattr(net, "runtime", None)
    size = model.spec.input_size
    for _ in range(warmup_batches):
        model(torch.randn(batch_size, net.config.in_chans, size, size))
    gc.collect()
    reset_peak_rss()
    images = errors = 0
    model_times: list[float] = []
    begin = time.perf_counter()
    with bar(len(paths) * repeat, "bench", show=progress, leave=False) as done:
        for batch in iter_batches(paths * repeat, model.spec, batch_size, workers, draft=draft):
            errors += len(batch.errors)
            if batch.indices:
                t = time.perf_counter()
                model(batch.pixels)
                model_times.append(time.perf_counter() - t)
                images += len(batch.indices)
            done.update(len(batch.indices) + len(batch.errors))
    total = time.perf_counter() - begin
    model_s = sum(model_times)
    result = _summary(model_times, batch_size)
    result.update(
        img_s=round(images / total, 2), seconds=round(total, 3), images=images, errors=errors,
        model_busy_img_s=round(images / model_s, 2) if model_s else None,
        peak_rss_mb=round(peak_rss_mb(), 1), backend=info.backend if info else "plain",
        dtype=info.dtype if info else "fp32", batch_size=batch_size, workers=workers, draft=draft,
        image_size=size, threads=torch.get_num_threads(),
    )
    return result
