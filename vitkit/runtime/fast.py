"""precision="fast" (`--fast`): the fastest runtime on this machine whose outputs still agree with exact fp32.

Candidates (those that can run here):
    fp32        eager, oneDNN-packed linears (within ~1e-5 of exact: the default's own kernels)
    onnx-fp32   onnxruntime on the fp32 graph (within ~1e-5 too; its MLAS GEMMs beat oneDNN's on some CPUs, e.g.
                1.2-1.3x on an AVX2-only EPYC), exported once and cached
    bf16        eager, packed bf16 linears (a CPU with AVX512-BF16 or AMX; a GPU with bf16)
    fp16        eager (GPU only)
    int8        onnxruntime INT8 graph of the default quantization recipe (CPU), built once from the plain network
                and cached
The onnx candidates need the onnx extra; their graphs live in $VITKIT_CACHE_DIR/fast/.
torch.compile is not a candidate: measured slower than the packed eager path on both CPUs this project runs on
(docs/benchmarks.md), and it costs 10-30 s per input shape.

Each candidate runs the calibration inputs (the user's images, else the first inputs of the job, else a generated
set: vitkit.data.calibration) and is compared with the exact fp32 network on the same inputs: top-1 agreement
(>= 99%) and mean cosine of the embeddings (>= 0.999) must both hold, else it is refused. Of the accepted ones
the fastest at the job's batch size wins (model only, medians of a few timed batches), if it beats exact fp32 by
at least 5% (less is within the timing noise of a shared machine). The choice is cached per
(weights, input size, batch size, device, machine): later runs with the same model here reuse it without
measuring, whatever the command (classify, embed, index, serve, bench).

Try it:  python -c "import vitkit; m = vitkit.load(arch='deit_tiny_patch16_224', precision='fast'); print(m.fast)"
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vitkit.cache import cache_dir
from vitkit.checkpoints.io import write_atomic_bytes, write_atomic_text
from vitkit.config import PreprocessSpec
from vitkit.runtime.backends import RuntimeUnavailable, prepare, resolve
from vitkit.runtime.machine import describe

MIN_AGREEMENT = 0.99  # top-1 agreement with exact fp32 on the calibration inputs
MIN_COSINE = 0.999  # mean cosine of the embeddings with exact fp32
CALIBRATION_INPUTS = 100  # how many inputs are compared: fewer cannot tell 99% agreement from 96%
TIMED_BATCHES = 3  # interleaved timing rounds
ROUND_S = 0.5  # the least time each candidate runs per round
MIN_GAIN = 1.05  # another runtime replaces exact fp32 only when it is at least this much faster (timing noise)
CACHE_VERSION = 1


@dataclass
class Trial:
    runtime: str  # "fp32" | "onnx-fp32" | "bf16" | "fp16" | "int8"
    img_s: float | None = None
    top1_agreement: float | None = None  # None: a backbone without a classifier head
    cosine_mean: float | None = None
    cosine_min: float | None = None
    accepted: bool = False
    reason: str = ""  # why it was refused or could not run


@dataclass
class FastChoice:
    runtime: str
    batch_size: int
    device: str
    calibration: str  # what the calibration inputs were
    inputs: int
    trials: list[Trial] = field(default_factory=list)
    machine: str = ""
    key: str = ""
    seconds: float = 0.0
    reused: bool = False  # True: read from the cache, nothing measured in this process

    def to_dict(self) -> dict:
        return asdict(self)

    def trial(self, runtime: str) -> Trial | None:
        return next((t for t in self.trials if t.runtime == runtime), None)

    def summary(self) -> str:
        """One line per candidate, the chosen one first: what --fast prints."""
        chosen = self.trial(self.runtime)
        base = self.trial("fp32")
        speed = (f", {chosen.img_s / base.img_s:.2f}x fp32" if chosen and base and chosen.img_s and base.img_s
                 and chosen is not base else "")
        head = (f"fast: {self.runtime} at batch {self.batch_size} on {self.device}{speed}"
                f"{' (cached choice)' if self.reused else ''}; checked on {self.inputs} {self.calibration}")
        lines = [head]
        for t in self.trials:
            agreement = "-" if t.top1_agreement is None else f"{100 * t.top1_agreement:.1f}%"
            cosine = "-" if t.cosine_mean is None else f"{t.cosine_mean:.5f}"
            rate = "-" if t.img_s is None else f"{t.img_s:.1f} img/s"
            verdict = "chosen" if t.runtime == self.runtime else ("ok" if t.accepted else f"refused: {t.reason}")
            lines.append(f"  {t.runtime:<9} {rate:>12}  top-1 agreement {agreement:>6}  cosine {cosine}  {verdict}")
        return "\n".join(lines)


# -- identity and cache ---------------------------------------------------------------------------------------
def tensors_digest(net: torch.nn.Module) -> str:
    """blake2b over every tensor of the state dict (names, shapes, dtypes, bytes): the same weights -> the same
    digest, wherever they were loaded from. Not the files' sha256 (checkpoints.provenance): a fresh head
    (load(num_classes=...)) or random weights change the network without changing any file."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in net.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def choice_key(digest: str, input_size: int, batch_size: int, device: torch.device) -> str:
    text = json.dumps([CACHE_VERSION, digest, input_size, batch_size, str(device), describe().key])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _cached(key: str) -> FastChoice | None:
    path = cache_dir("fast") / f"{key}.json"
    try:
        data = json.loads(path.read_text())
        data["trials"] = [Trial(**t) for t in data["trials"]]
        return FastChoice(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _remember(choice: FastChoice) -> None:
    folder = cache_dir("fast")
    os.makedirs(folder, exist_ok=True)
    write_atomic_text(json.dumps({**choice.to_dict(), "reused": False}, indent=2) + "\n", folder / f"{choice.key}.json")


# -- the candidates -------------------------------------------------------------------------------------------
def candidates(device: torch.device) -> list[str]:
    """The runtimes that can run on `device` here, exact fp32 first."""
    names = []
    for dtype in ("fp32", "bf16", "fp16"):
        try:
            resolve("eager", dtype, device)
        except RuntimeUnavailable:
            continue
        names.append(dtype)
    if device.type == "cpu" and _onnx_available():
        names[1:1] = ["onnx-fp32"]
        names.append("int8")
    return names


def _onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def graph_path(digest: str, input_size: int, dtype: str) -> Path:
    return cache_dir("fast") / f"{digest}-{input_size}-{dtype}.onnx"


def onnx_fp32_network(net, spec: PreprocessSpec, digest: str, source: str | None):
    """The fp32 onnxruntime network of `net`: the cached graph, or exported now (dynamic batch, verified against
    PyTorch) and cached."""
    from vitkit.onnx.export import export_bytes
    from vitkit.runtime.onnx_backend import OnnxNet

    path = graph_path(digest, spec.input_size, "fp32")
    if not path.is_file():
        data, _ = export_bytes(net, spec=spec, dynamic_batch=True, source=source, verify_random=2, verify_photos=[])
        os.makedirs(path.parent, exist_ok=True)
        write_atomic_bytes(data, path)
    return OnnxNet(path, "cpu", torch.get_num_threads(), source=f"{source or 'network'} (onnxruntime fp32)")


def int8_network(net, spec: PreprocessSpec, digest: str, calibration: torch.Tensor, source: str | None,
                 log: Callable[[str], None]):
    """The INT8 onnxruntime network of `net` (plain, untouched): the cached graph, or built now with the default
    recipe (SmoothQuant scales from `calibration`) and cached."""
    from vitkit.int8.build import build_int8
    from vitkit.int8.onnx_int8 import add_metadata
    from vitkit.int8.recipe import default_recipe
    from vitkit.runtime.onnx_backend import OnnxNet

    path = graph_path(digest, spec.input_size, "int8")
    if not path.is_file():
        log(f"fast: building the INT8 graph once (cached in {path.parent})")
        recipe = default_recipe("dynamic")
        built = build_int8(net, spec.input_size, recipe, calibration)
        data = add_metadata(built.int8, net, spec, dynamic_batch=built.dynamic_batch, source=source or "network",
                            quantization={"method": "dynamic", "recipe": recipe.to_dict(),
                                          "recipe_text": recipe.describe(), "made_by": "precision=fast"})
        os.makedirs(path.parent, exist_ok=True)
        write_atomic_bytes(data, path)
    return OnnxNet(path, "cpu", torch.get_num_threads(), source=f"{source or 'network'} (onnxruntime INT8)")


def build(runtime: str, net, spec: PreprocessSpec, device: torch.device, digest: str, calibration: torch.Tensor,
          source: str | None, log: Callable[[str], None], keep: bool = False):
    """The network for `runtime`. keep=False works on a copy (the plain `net` stays exact for other candidates);
    keep=True prepares `net` itself, in place (the final choice)."""
    if runtime == "int8":
        return int8_network(net, spec, digest, calibration, source, log)
    if runtime == "onnx-fp32":
        return onnx_fp32_network(net, spec, digest, source)
    return prepare(net if keep else copy.deepcopy(net), "eager", runtime, device)


# -- measuring ------------------------------------------------------------------------------------------------
@torch.inference_mode()
def outputs(net, pixels: torch.Tensor, pool: str, batch_size: int, device: torch.device
            ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(logits (N, C) or None for a backbone, embeddings (N, D)), float32 on the CPU."""
    logits, embeddings = [], []
    for chunk in pixels.split(batch_size):
        chunk = chunk.to(device)
        if net.config.num_classes:
            logits.append(net(chunk).float().cpu())
        embeddings.append(net.pool_pixels(chunk, pool).float().cpu())
    return (torch.cat(logits) if logits else None), torch.cat(embeddings)


def agreement(reference: tuple, found: tuple) -> dict:
    ref_logits, ref_emb = reference
    logits, emb = found
    cos = torch.nn.functional.cosine_similarity(ref_emb.flatten(1), emb.flatten(1), dim=-1)  # (N,)
    out = {"cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6),
           "top1_agreement": None}
    if ref_logits is not None:
        out["top1_agreement"] = round(float((ref_logits.argmax(-1) == logits.argmax(-1)).float().mean()), 4)
    return out


@torch.inference_mode()
def speed(nets: dict, pixels: torch.Tensor, batch_size: int, device: torch.device) -> dict[str, float]:
    """Images per second of each network (logits, or embeddings for a backbone) at `batch_size`, timed in
    TIMED_BATCHES interleaved rounds of at least ROUND_S each (a shared machine's speed drifts: every candidate
    sees the same drift) after a warm-up call; the median of the rounds."""
    reps = -(-batch_size // len(pixels))
    batch = pixels.repeat(reps, 1, 1, 1)[:batch_size].to(device)  # (batch_size, C, H, W)

    def run(net):
        out = net(batch) if net.config.num_classes else net.forward_features(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    for net in nets.values():
        run(net)
    rates: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(TIMED_BATCHES):
        for name, net in nets.items():
            count, start = 0, time.perf_counter()
            while count == 0 or time.perf_counter() - start < ROUND_S:
                run(net)
                count += 1
            rates[name].append(count * batch_size / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def choose(net, spec: PreprocessSpec, device: torch.device, batch_size: int, pool: str,
           calibration: Callable[[], tuple[torch.Tensor, str]], source: str | None = None,
           log: Callable[[str], None] = lambda msg: None, refresh: bool = False):
    """-> (the chosen inference network, FastChoice). `net` is the plain network; it is prepared in place when a
    PyTorch runtime wins, else released to the INT8 session. `calibration()` -> (pixels (N, C, S, S), what they
    are): called only when the choice is not cached."""
    device = torch.device(device)
    digest = tensors_digest(net)
    key = choice_key(digest, spec.input_size, batch_size, device)
    cached = None if refresh else _cached(key)
    if cached is not None and cached.runtime in candidates(device):
        cached.reused = True
        pixels = None
        if cached.runtime == "int8" and not graph_path(digest, spec.input_size, "int8").is_file():
            pixels, _ = calibration()  # the cached graph was deleted: build it again
        return build(cached.runtime, net, spec, device, digest, pixels, source, log, keep=True), cached
    start = time.perf_counter()
    pixels, what = calibration()
    pixels = pixels[:CALIBRATION_INPUTS]
    net = net.eval()
    reference = outputs(net, pixels, pool, batch_size, device)
    choice = FastChoice("fp32", batch_size, str(device), what, len(pixels), machine=describe().cpu, key=key)
    built = {}
    for runtime in candidates(device):
        trial = Trial(runtime)
        choice.trials.append(trial)
        try:
            built[runtime] = build(runtime, net, spec, device, digest, pixels, source, log)
        except Exception as err:  # a runtime that cannot take this model (e.g. an INT8 export it cannot fuse)
            trial.reason = f"could not be built: {str(err).splitlines()[0][:160]}"
            continue
        trial.__dict__.update(agreement(reference, outputs(built[runtime], pixels, pool, batch_size, device)))
        refused = []
        if trial.top1_agreement is not None and trial.top1_agreement < MIN_AGREEMENT:
            refused.append(f"top-1 agreement {100 * trial.top1_agreement:.1f}% < {100 * MIN_AGREEMENT:.0f}%")
        if trial.cosine_mean < MIN_COSINE:
            refused.append(f"cosine {trial.cosine_mean:.4f} < {MIN_COSINE}")
        trial.accepted = not refused
        trial.reason = "; ".join(refused)
        log(f"fast: {runtime}: top-1 agreement {trial.top1_agreement}, cosine {trial.cosine_mean}"
            + (f" (refused: {trial.reason})" if refused else ""))
    log(f"fast: timing {', '.join(built)} at batch {batch_size}")
    for runtime, rate in speed(built, pixels, batch_size, device).items():
        choice.trial(runtime).img_s = round(rate, 2)
    built.clear()  # the copies go before the chosen network is made from `net`
    accepted = [t for t in choice.trials if t.accepted and t.img_s]
    if accepted:
        best = max(accepted, key=lambda t: t.img_s)
        exact = choice.trial("fp32")
        gain = best.img_s / exact.img_s if exact and exact.img_s else float("inf")
        choice.runtime = best.runtime if gain >= MIN_GAIN else "fp32"
    choice.seconds = round(time.perf_counter() - start, 1)
    _remember(choice)
    return build(choice.runtime, net, spec, device, digest, pixels, source, log, keep=True), choice
