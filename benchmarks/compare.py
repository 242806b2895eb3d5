"""vitkit against the reference runtimes, side by side, in one process, on the same weights and inputs.

    .venv/bin/python benchmarks/compare.py --model vit_base_patch16_224 --batch-sizes 1 16
    .venv/bin/python benchmarks/compare.py --model vit_small_patch16_224 --batch-sizes 1 16 --quick
    .venv/bin/python benchmarks/compare.py --model vit_base_patch16_224 --modes e2e decode

Modes (--modes, default all three):
  model   model-only throughput of: transformers ViTForImageClassification (eager and sdpa attention, built from
          the same vitkit weights through `save_hf`), timm (through the tests' torchvision stand-in),
          onnxruntime fp32 (a quick torch.onnx export of the vitkit network), vitkit unprepared, vitkit
          default (eager fp32, packed linears), vitkit bf16, and (without --quick) vitkit torch.compile fp32/bf16.
          The table: img/s (median), ms per batch p50/p95, RSS added by building + first runs of that runtime
          (in-process, indicative only: freed memory is reused), speed-up over transformers-sdpa fp32 (median
          of per-round ratios), max abs logit difference from the unprepared vitkit fp32 network. Then peak RSS
          of transformers and each vitkit path, each in a fresh process (benchmarks/memory.py). Compile times
          are cold (inductor's on-disk cache off) unless --compile-cache.
  e2e     decode + preprocess (2 loader workers) + model over ../shared/images, batch 16, vs model-only
          img/s at the same batch size (target >= 85%), for the default and the bf16 path.
  decode  20 generated 12-megapixel JPEGs: end-to-end img/s with and without JPEG draft decoding, and the
          top-1 agreement of draft vs normal decoding with the real DeiT-Tiny on the 100 real photos (as they
          are, and upscaled to 4000x3000 JPEGs, where draft decoding actually reduces).

Timing method: the machine is shared, so each round first waits until other processes use < 0.25 core
(vitkit.tasks.bench.wait_quiet), then times every runtime back to back; img/s and ratios are medians
over rounds. Random weights are drawn N(0, 1/fan_in) (not the near-zero training init) so that logits and
their differences are O(1)-meaningful.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMAGES = SHARED / "images" / "imagenet-sample-100"
DEIT_TINY = SHARED / "weights" / "deit-tiny-patch16-224" / "model.safetensors"

sys.path.insert(0, str(ROOT))
import vitkit  # noqa: E402
from vitkit.runtime import prepare  # noqa: E402
from vitkit.runtime.machine import machine, model_flops  # noqa: E402
from vitkit.runtime.measure import peak_rss_mb, reset_peak_rss, wait_quiet  # noqa: E402
from vitkit.tasks.bench import bench_end_to_end, bench_model  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@torch.no_grad()
def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights N(0, 1/fan_in), norms 1 + 0.1 N, biases / tokens / positions 0.02 N: O(1) activations and
    logits at any width and depth (the training init's zero-ish head would make logit diffs meaningless)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in net.named_parameters():
        r = torch.randn(p.shape, generator=g)
        if p.ndim >= 2 and "pos_embed" not in name and "token" not in name:
            p.copy_(r / math.sqrt(p[0].numel()))
        elif name.endswith("weight") and p.ndim == 1:  # LayerNorm
            p.copy_(1 + 0.1 * r)
        else:
            p.copy_(0.02 * r)
    return net.eval()


@dataclass
class Runtime:
    name: str
    fn: object  # pixels (B, 3, H, W) float32 -> logits float32 (B, C)
    mem_mb: float = float("nan")  # RSS added by building it + its first runs
    note: str = ""
    times: dict = field(default_factory=dict)  # batch size -> [seconds per batch]
    rounds: dict = field(default_factory=dict)  # batch size -> [round median seconds]
    diff: dict = field(default_factory=dict)  # batch size -> max abs logit diff
    config: object = None  # the network's ViTConfig and input size: its FLOPs per image
    size: int = 224


def build(name: str, make, example: torch.Tensor, runtimes: list[Runtime], skipped: list[str]) -> Runtime | None:
    """Build one runtime, measuring the RSS it adds (weights, packing, compiled code, activations)."""
    gc.collect()
    before = rss_mb()
    reset_peak_rss()
    try:
        fn, note = make()
        with torch.inference_mode():
            for _ in range(2):
                fn(example)
    except Exception as e:  # noqa: BLE001 - a reference runtime that cannot run here is reported, not fatal
        skipped.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        print(f"  skipped {name}: {skipped[-1]}", flush=True)
        return None
    rt = Runtime(name, fn, peak_rss_mb() - before, note)
    runtimes.append(rt)
    print(f"  built {name:<28} +{rt.mem_mb:7.0f} MB  {note}", flush=True)
    return rt


def hf_runtime(folder: Path, attn: str):
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(folder, attn_implementation=attn).eval()
    return (lambda x: model(pixel_values=x).logits), f"transformers, attn_implementation={attn}"


def timm_runtime(net, arch: str):
    sys.path.insert(0, str(ROOT / "tests"))
    from reference_timm import import_timm, using_standin

    from vitkit.checkpoints.layouts import timm_keymap

    timm = import_timm()
    model = timm.create_model(arch, pretrained=False, num_classes=net.config.num_classes).eval()
    model.load_state_dict(timm_keymap(net.config).to_foreign(net.state_dict(), net.config), strict=True)
    via = "torchvision stand-in" if using_standin() else "real torchvision"
    return model, f"timm {timm.__version__} ({via})"


def ort_runtime(net, size: int, threads: int):
    import onnxruntime as ort

    path = Path(tempfile.mkdtemp(prefix="vitkit-onnx-")) / "model.onnx"
    start = time.perf_counter()
    torch.onnx.export(copy.deepcopy(net), (torch.randn(1, 3, size, size),), str(path), dynamo=False,
                      opset_version=17, input_names=["pixels"], output_names=["logits"],
                      dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}})
    export_s = time.perf_counter() - start
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fn = lambda x: torch.from_numpy(session.run(None, {"pixels": x.numpy()})[0])  # noqa: E731
    return fn, f"onnxruntime {ort.__version__}, torch.onnx.export (TorchScript) {export_s:.1f} s"


def vitkit_runtime(net, backend: str | None, dtype: str | None, warmup_batch: int | None = None):
    copy_ = copy.deepcopy(net)
    if backend is None:
        return copy_, "vitkit VisionTransformer as loaded (no prepare)"
    prepared = prepare(copy_, backend, dtype, "cpu", warmup_batch=warmup_batch)
    note = f"packed={prepared.runtime.packed}"
    if backend == "compile":
        note += f", compile {prepared.runtime.compile_s:.1f} s at batch {warmup_batch}"
    return prepared, note


def vitkit_onnx_runtime(net, spec, dtype: str):
    """vitkit's own onnxruntime paths: the exported fp32 graph, or the INT8 graph of the default recipe (SmoothQuant
    scales from the generated calibration images), as --fast builds them."""
    from vitkit.runtime.fast import int8_network, onnx_fp32_network, tensors_digest

    digest = tensors_digest(net)  # the graphs --fast builds for these weights, so it reuses them
    if dtype == "fp32":
        onnx_net = onnx_fp32_network(net, spec, digest, "benchmark")
    else:
        onnx_net = int8_network(net, spec, digest, calibration_pixels(spec, 32), "benchmark", lambda m: None)
    return onnx_net, f"{onnx_net.session.get_providers()[0]}, {onnx_net.graph.dynamic_batch and 'dynamic' or '1'} batch"


def calibration_pixels(spec, count: int) -> torch.Tensor:
    from vitkit.data.calibration import calibration_images
    from vitkit.data.transforms import preprocess_batch

    return preprocess_batch(calibration_images(count), spec)


def fast_runtime(net, spec, bs: int, log):
    """What `--fast` chooses for these (random) weights at batch `bs`, checked on the generated calibration set."""
    from vitkit.runtime.fast import choose

    chosen, choice = choose(copy.deepcopy(net), spec, torch.device("cpu"), bs, "cls",
                            lambda: (calibration_pixels(spec, 100), "generated calibration images"), "benchmark", log)
    log(choice.summary())
    return chosen, f"chose {choice.runtime}"


def peak_dtype(name: str) -> str:
    return "bf16" if "bf16" in name else "int8" if "INT8" in name or "int8" in name else "fp32"


def time_runtimes(runtimes: list[Runtime], x: torch.Tensor, bs: int, rounds: int, iters: int, log) -> int:
    """Interleaved timing rounds; -> how many rounds started on a machine that never became quiet."""
    contended = 0
    for r in range(rounds):
        quiet = wait_quiet()
        contended += not quiet["quiet"]
        log(f"  batch {bs} round {r + 1}/{rounds}: other load {quiet['other_load']}, waited {quiet['waited_s']} s"
            + ("" if quiet["quiet"] else "  (NOT QUIET: timings of this round are contended)"))
        for rt in runtimes:
            times = []
            with torch.inference_mode():
                for _ in range(iters):
                    t = time.perf_counter()
                    rt.fn(x)
                    times.append(time.perf_counter() - t)
            rt.times.setdefault(bs, []).extend(times)
            rt.rounds.setdefault(bs, []).append(statistics.median(times))
    return contended


def table(runtimes: list[Runtime], bs: int, baseline: str) -> tuple[str, list[dict]]:
    base = next((rt for rt in runtimes if rt.name == baseline), None)
    rows, lines = [], [
        f"| runtime (batch {bs}) | img/s | ms p50 | ms p95 | RSS added MB (in-process) | x {baseline} "
        "| GFLOP/s | % of peak | max abs diff | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    here, flops = machine(), model_flops(runtimes[0].config, runtimes[0].size) if runtimes else 0
    for rt in runtimes:
        ms = sorted(t * 1000 for t in rt.times[bs])
        p50, p95 = statistics.median(ms), ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
        ratio = (statistics.median(b / t for b, t in zip(base.rounds[bs], rt.rounds[bs])) if base else float("nan"))
        gflop_s = bs * 1000 / p50 * flops / 1e9
        peak = here.peak(peak_dtype(rt.name))
        row = dict(runtime=rt.name, batch_size=bs, img_s=round(bs * 1000 / p50, 2), ms_p50=round(p50, 1),
                   ms_p95=round(p95, 1), rss_added_mb=round(rt.mem_mb), ratio=round(ratio, 2),
                   gflop_s=round(gflop_s, 1), peak_fraction=round(gflop_s / peak, 3) if peak else None,
                   max_abs_diff=rt.diff[bs], note=rt.note)
        rows.append(row)
        fraction = f"{100 * row['peak_fraction']:.0f}% ({peak_dtype(rt.name)})" if peak else "-"
        lines.append(f"| {rt.name} | {row['img_s']:.2f} | {p50:.1f} | {p95:.1f} | {rt.mem_mb:.0f} | {ratio:.2f}x | "
                     f"{gflop_s:.0f} | {fraction} | {rt.diff[bs]:.2e} | {rt.note} |")
    return "\n".join(lines), rows


def model_mode(args, log) -> list[dict]:
    loaded = vitkit.load(arch=args.model)
    net, spec = randomize(loaded.net, args.seed), loaded.spec
    size = spec.input_size
    gen = torch.Generator().manual_seed(args.seed + 1)
    inputs = {bs: torch.randn(bs, 3, size, size, generator=gen) for bs in args.batch_sizes}
    with torch.inference_mode():
        refs = {bs: net(x) for bs, x in inputs.items()}
    hf_dir = Path(tempfile.mkdtemp(prefix="vitkit-hf-"))
    from vitkit.checkpoints.save import save_hf

    save_hf(net, spec, hf_dir)
    example = inputs[min(args.batch_sizes)]
    runtimes: list[Runtime] = []
    skipped: list[str] = []
    log(f"building runtimes for {args.model} ({sum(p.numel() for p in net.parameters()) / 1e6:.1f} M params), "
        f"{torch.get_num_threads()} threads")
    build("transformers-eager fp32", lambda: hf_runtime(hf_dir, "eager"), example, runtimes, skipped)
    build("transformers-sdpa fp32", lambda: hf_runtime(hf_dir, "sdpa"), example, runtimes, skipped)
    build("timm fp32", lambda: timm_runtime(net, args.model), example, runtimes, skipped)
    build("onnxruntime fp32", lambda: ort_runtime(net, size, torch.get_num_threads()), example, runtimes, skipped)
    build("vitkit unprepared fp32", lambda: vitkit_runtime(net, None, None), example, runtimes, skipped)
    build("vitkit eager fp32 (default)", lambda: vitkit_runtime(net, "eager", "fp32"), example, runtimes, skipped)
    build("vitkit eager bf16", lambda: vitkit_runtime(net, "eager", "bf16"), example, runtimes, skipped)
    build("vitkit onnx fp32", lambda: vitkit_onnx_runtime(net, spec, "fp32"), example, runtimes, skipped)
    build("vitkit INT8 onnx (default recipe)", lambda: vitkit_onnx_runtime(net, spec, "int8"), example, runtimes,
          skipped)
    for rt in runtimes:
        rt.config, rt.size = net.config, size
    per_batch: dict[int, list[Runtime]] = {bs: list(runtimes) for bs in args.batch_sizes}
    for bs in args.batch_sizes:  # --fast chooses per batch size
        rt = build(f"vitkit --fast (batch {bs})", lambda: fast_runtime(net, spec, bs, log), inputs[bs], runtimes,
                   skipped)
        if rt is not None:
            runtimes.remove(rt)
            rt.config, rt.size = net.config, size
            per_batch[bs].append(rt)
    if not args.quick:
        for bs in args.batch_sizes:
            for dtype in ("fp32", "bf16"):
                rt = build(f"vitkit compile {dtype}", lambda: vitkit_runtime(net, "compile", dtype, bs),
                           inputs[bs], runtimes, skipped)
                if rt is not None:
                    runtimes.remove(rt)
                    rt.config, rt.size = net.config, size
                    per_batch[bs].append(rt)
    results, text = [], []
    for bs in args.batch_sizes:
        for rt in per_batch[bs]:
            with torch.inference_mode():
                rt.diff[bs] = float((rt.fn(inputs[bs]).float() - refs[bs]).abs().max())
        iters = args.iters or max(1, round(8 / bs))
        contended = time_runtimes(per_batch[bs], inputs[bs], bs, args.rounds, iters, log)
        md, rows = table(per_batch[bs], bs, "transformers-sdpa fp32")
        if contended:
            md += (f"\n\nWARNING: {contended} of {args.rounds} rounds ran while other processes kept the CPU busy: "
                   "these numbers are not representative; run again on a quiet machine.")
        results += rows
        text.append(md)
    log("")
    log(f"## {args.model}: model only, random weights, {torch.get_num_threads()} threads")
    for md in text:
        log(md)
        log("")
    for s in skipped:
        log(f"not measured: {s}")
    if not args.no_memory:
        import importlib.util

        spec_ = importlib.util.spec_from_file_location("vitkit_bench_memory", Path(__file__).with_name("memory.py"))
        memory = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(memory)
        for row in memory.measure(args.model, args.batch_sizes, log=log):
            results.append(dict(mode="memory", **row))
    return results


def e2e_mode(args, log) -> list[dict]:
    from vitkit.data.sources import expand_inputs

    folder = Path(args.images)
    paths = expand_inputs([str(folder)])
    results = []
    log(f"## {args.model}: end to end over {folder} ({len(paths)} images x {args.e2e_repeat}), batch 16, "
        f"{args.workers} workers")
    log("| path | model-only img/s | e2e img/s | e2e / model-only | model busy img/s |")
    log("|---|---:|---:|---:|---:|")
    for path in ("default fp32", "--fast"):
        model = vitkit.load(arch=args.model)
        randomize(model.net, args.seed)
        if path == "--fast":
            model.net, note = fast_runtime(model.net, model.spec, 16, log)
            path = f"--fast ({note})"
        else:
            model.net = prepare(model.net, "eager", "fp32", "cpu")
        ratios = []
        for _ in range(args.e2e_runs):
            wait_quiet()
            only = bench_model(model, 16, warmup=1, iters=3)
            wait_quiet()
            e2e = bench_end_to_end(model, paths, 16, args.workers, repeat=args.e2e_repeat)
            ratios.append((only["img_s"], e2e["img_s"], e2e["model_busy_img_s"]))
        only_s, e2e_s, busy = (statistics.median(v) for v in zip(*ratios))
        results.append(dict(mode="e2e", path=path, model_only_img_s=only_s, e2e_img_s=e2e_s,
                            ratio=round(e2e_s / only_s, 3), model_busy_img_s=busy, runs=ratios))
        log(f"| {path} | {only_s:.2f} | {e2e_s:.2f} | {e2e_s / only_s:.0%} | {busy:.2f} |")
        del model
        gc.collect()
    log("")
    return results


def make_12mp(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` 4000x3000 JPEGs of random smooth content (low-res noise upsampled, plus mild grain)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        small = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
        big = np.asarray(small.resize((4000, 3000), Image.Resampling.BICUBIC), dtype=np.int16)
        big = np.clip(big + rng.integers(-6, 7, big.shape), 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:02d}.jpg"
        Image.fromarray(big).save(path, quality=90)
        paths.append(str(path))
    return paths


def upscale_to_12mp(paths: list[str], folder: Path) -> list[str]:
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as image:
            image = image.convert("RGB")
            size = (4000, 3000) if image.width >= image.height else (3000, 4000)
            target = folder / (Path(p).stem + "_12mp.jpg")
            image.resize(size, Image.Resampling.BICUBIC).save(target, quality=92)
        out.append(str(target))
    return out


def top1(model, paths: list[str], draft: bool, workers: int) -> torch.Tensor:
    from vitkit.data.loader import iter_batches

    preds = []
    for batch in iter_batches(paths, model.spec, 16, workers, draft=draft):
        assert not batch.errors, batch.errors
        preds.append(model(batch.pixels).argmax(-1))
    return torch.cat(preds)


def decode_mode(args, log) -> list[dict]:
    from vitkit.data.sources import expand_inputs

    if DEIT_TINY.exists():
        model, which = vitkit.load(str(DEIT_TINY), arch="deit_tiny_patch16_224"), "real DeiT-Tiny"
    else:
        model, which = vitkit.load(arch="deit_tiny_patch16_224"), "random DeiT-Tiny (real weights not found)"
    model.net = prepare(model.net, "eager", "fp32", "cpu")
    results = []
    with tempfile.TemporaryDirectory(prefix="vitkit-12mp-") as tmp:
        start = time.perf_counter()
        big = make_12mp(Path(tmp), args.decode_count, args.seed)
        size_mb = sum(Path(p).stat().st_size for p in big) / len(big) / 1e6
        log(f"## fast decode: {len(big)} generated 4000x3000 JPEGs ({size_mb:.1f} MB each, made in "
            f"{time.perf_counter() - start:.0f} s), {which}, eager fp32, batch 16, {args.workers} workers")
        log("| decoding | e2e img/s | model busy img/s |")
        log("|---|---:|---:|")
        for draft in (False, True):
            runs = []
            for _ in range(args.e2e_runs):
                wait_quiet()
                runs.append(bench_end_to_end(model, big, 16, args.workers, draft=draft))
            img_s = statistics.median(r["img_s"] for r in runs)
            results.append(dict(mode="decode", draft=draft, e2e_img_s=img_s, runs=[r["img_s"] for r in runs]))
            log(f"| {'draft (reduce on decode)' if draft else 'full decode'} | {img_s:.2f} | "
                f"{statistics.median(r['model_busy_img_s'] for r in runs):.1f} |")
    real = expand_inputs([str(IMAGES)])
    normal, draft = top1(model, real, False, args.workers), top1(model, real, True, args.workers)
    agree = float((normal == draft).float().mean())
    results.append(dict(mode="draft_agreement", images=len(real), agreement=agree, upscaled=False))
    log(f"\ntop-1 agreement, draft vs normal decoding, {len(real)} real photos as they are: {agree:.1%}")
    if not args.no_upscaled:
        with tempfile.TemporaryDirectory(prefix="vitkit-up-") as tmp:
            up = upscale_to_12mp(real, Path(tmp))
            normal, draft = top1(model, up, False, args.workers), top1(model, up, True, args.workers)
            agree = float((normal == draft).float().mean())
            flips = [Path(real[i]).name for i in (normal != draft).nonzero().flatten().tolist()]
        results.append(dict(mode="draft_agreement", images=len(up), agreement=agree, upscaled=True, flips=flips))
        log(f"top-1 agreement, draft vs normal decoding, the same photos upscaled to 12 MP JPEGs: {agree:.1%}"
            + (f" (differ: {', '.join(flips)})" if flips else ""))
    log("")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_base_patch16_224", help="a vitkit architecture name (ARCHS)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--modes", nargs="+", default=["model", "e2e", "decode"], choices=["model", "e2e", "decode"])
    parser.add_argument("--quick", action="store_true", help="no torch.compile runtimes, fewer rounds")
    parser.add_argument("--compile-cache", action="store_true",
                        help="let inductor reuse its on-disk cache (default: off, so compile times are cold)")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak RSS table")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 5, --quick 2)")
    parser.add_argument("--iters", type=int, default=0, help="timed batches per runtime per round (default 8/bs)")
    parser.add_argument("--images", default=str(IMAGES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--e2e-repeat", type=int, default=3, help="feed the folder this many times per e2e run")
    parser.add_argument("--e2e-runs", type=int, default=3, help="e2e runs per path (median reported)")
    parser.add_argument("--decode-count", type=int, default=20)
    parser.add_argument("--no-upscaled", action="store_true", help="skip the 12 MP upscaled-photos agreement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    if args.quick:
        args.e2e_runs, args.e2e_repeat = 1, 1
    log = lambda line: print(line, flush=True)  # noqa: E731
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 native: "
        f"{vitkit.runtime.cpu_bf16_native()}, AMX: {getattr(torch.cpu, '_is_amx_tile_supported', lambda: False)()}")
    if not args.compile_cache:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = False
        inductor_config.autotune_local_cache = False
    results = []
    for mode in args.modes:
        results += {"model": model_mode, "e2e": e2e_mode, "decode": decode_mode}[mode](args, log)
        gc.collect()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
