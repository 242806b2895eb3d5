"""What this machine can do, measured: the CPU and the instruction sets that decide the fast path, the GPU, and the
best GEMM rate of each kind of arithmetic vitkit runs (GFLOP/s; for int8, GOP/s):

    fp32          torch.mm (MKL / oneDNN on a plain weight)
    fp32_packed   oneDNN's inner product on a pre-packed weight: what vitkit's eager fp32 path runs on
    fp32_onnx     onnxruntime's MatMul (MLAS): what the onnx fp32 backend runs on (faster than oneDNN on some CPUs)
    bf16_packed   the same in bf16 (only where the CPU has bf16 instructions: AVX512-BF16 or AMX)
    int8          onnxruntime's MatMulInteger (uint8 x int8 -> int32): what vitkit's INT8 graphs run on

Each rate is the best of a few repetitions of a ViT-B MLP-sized GEMM (1024 x 768 x 3072) on torch's threads: a
few seconds in all. The result is cached per machine (CPU model, flags, threads, torch and onnxruntime versions) in
$VITKIT_CACHE_DIR/machine/, so that `vitkit bench` and `vitkit doctor` report fractions of *this* machine's peak.
`model_flops(config, size)` counts one image's multiply-adds x 2 (ViT-B/16 at 224: 35.1 GFLOP).

Try it:  python -c "from vitkit.runtime.machine import machine; print(machine().summary())"
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from vitkit.cache import cache_dir
from vitkit.checkpoints.io import write_atomic_text
from vitkit.config import ViTConfig
from vitkit.cpu import cpu_info

# the instruction sets that decide which runtime is fastest (as /proc/cpuinfo spells them)
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
GEMM = (1024, 768, 3072)  # (M, K, N): 1024 tokens through a ViT-B fc1
KINDS = ("fp32", "fp32_packed", "fp32_onnx", "bf16_packed", "int8")
PROBE_VERSION = 2


@dataclass
class Machine:
    cpu: str
    flags: tuple[str, ...]  # those of FLAGS this CPU has
    threads: int  # torch's intra-op threads when probed
    gpu: str | None
    torch: str
    onnxruntime: str | None
    peaks: dict[str, float | None] = field(default_factory=dict)  # kind -> GFLOP/s (None: cannot run here)
    probe_s: float = 0.0
    key: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def peak(self, dtype: str) -> float | None:
        """The rate a runtime computing in `dtype` ("fp32", "bf16", "int8") can reach at best here: for fp32 the
        fastest of the plain, packed and onnxruntime GEMMs."""
        if dtype == "fp32":
            rates = [r for r in (self.peaks.get(k) for k in ("fp32", "fp32_packed", "fp32_onnx")) if r]
            return max(rates) if rates else None
        return self.peaks.get({"bf16": "bf16_packed"}.get(dtype, dtype))

    def summary(self) -> str:
        rates = ", ".join(f"{k} {v:.0f}" if v else f"{k} -" for k, v in self.peaks.items())
        return (f"{self.cpu} ({self.threads} threads; {' '.join(self.flags) or 'no AVX2'}); GEMM peaks GFLOP/s: "
                f"{rates}" + (f"; GPU {self.gpu}" if self.gpu else ""))


# -- what the CPU is ------------------------------------------------------------------------------------------
def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def describe() -> Machine:
    """The machine without its rates (instant)."""
    model, flags = cpu_info()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    found = tuple(f for f in FLAGS if f in flags)
    threads = torch.get_num_threads()
    ort = _onnxruntime_version()
    key_text = json.dumps([PROBE_VERSION, model, found, threads, gpu, torch.__version__, ort])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    return Machine(model, found, threads, gpu, torch.__version__, ort, key=key)


# -- the rates ------------------------------------------------------------------------------------------------
def _best_rate(run, flop: float, reps: int, min_s: float = 0.5) -> float:
    """The best of at least `reps` timed calls lasting at least `min_s` in all, after three warm-up calls (oneDNN
    builds its kernel, onnxruntime wakes its thread pool): the best, because a shared machine only ever slows a
    call down."""
    for _ in range(3):
        run()
    best, count, begin = float("inf"), 0, time.perf_counter()
    while count < reps or time.perf_counter() - begin < min_s:
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
        count += 1
    return flop / best / 1e9


def _torch_rate(kind: str, reps: int) -> float | None:
    from vitkit.runtime.backends import cpu_bf16_native
    from vitkit.runtime.packed_linear import PackedLinear, packing_available

    m, k, n = GEMM
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen) / k**0.5
    if kind == "fp32":
        wt = w.t().contiguous()
        return _best_rate(lambda: torch.mm(x, wt), 2 * m * k * n, reps)
    dtype = torch.bfloat16 if kind == "bf16_packed" else torch.float32
    if not packing_available() or (dtype == torch.bfloat16 and not cpu_bf16_native()):
        return None
    layer, xd = PackedLinear(w, None, dtype), x.to(dtype)
    with torch.inference_mode():
        return _best_rate(lambda: layer(xd), 2 * m * k * n, reps)


def _onnx_rate(int8: bool, reps: int, threads: int) -> float | None:
    """onnxruntime's MatMul on float32, or MatMulInteger (uint8 activations, int8 weights, as its dynamic INT8
    graphs use)."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    m, k, n = GEMM
    rng = np.random.default_rng(0)
    if int8:
        weight = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w")
        inits = [weight, numpy_helper.from_array(np.array(128, np.uint8), "a_zero")]
        node = helper.make_node("MatMulInteger", ["a", "w", "a_zero"], ["y"])
        a_type, y_type, a = TensorProto.UINT8, TensorProto.INT32, rng.integers(0, 256, (m, k), dtype=np.uint8)
    else:
        inits = [numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")]
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        a_type, y_type, a = TensorProto.FLOAT, TensorProto.FLOAT, rng.standard_normal((m, k), dtype=np.float32)
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", a_type, [m, k])],
                              [helper.make_tensor_value_info("y", y_type, [m, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _best_rate(lambda: session.run(None, {"a": a}), 2 * m * k * n, reps)


def probe(reps: int = 8) -> Machine:
    """Measure the GEMM rates now (a few seconds), without the cache."""
    from vitkit.runtime.measure import wait_quiet

    found = describe()
    wait_quiet(max_wait_s=10)  # other processes would lower every rate
    start = time.perf_counter()
    for kind in KINDS:
        if kind in ("fp32_onnx", "int8"):
            rate = _onnx_rate(kind == "int8", reps, found.threads)
        else:
            rate = _torch_rate(kind, reps)
        found.peaks[kind] = round(rate, 1) if rate else None
    found.probe_s = round(time.perf_counter() - start, 2)
    return found


def machine(refresh: bool = False) -> Machine:
    """This machine with its measured rates: from the cache when this machine was probed before, else probed now
    and cached (refresh=True probes again)."""
    here = describe()
    path = cache_dir("machine") / f"{here.key}.json"
    if not refresh and path.is_file():
        try:
            cached = json.loads(path.read_text())
            return Machine(**{**cached, "flags": tuple(cached["flags"])})
        except (OSError, ValueError, TypeError):
            pass  # an unreadable cache entry is measured again
    found = probe()
    os.makedirs(path.parent, exist_ok=True)
    write_atomic_text(json.dumps(found.to_dict(), indent=2) + "\n", path)
    return found


def model_flops(config: ViTConfig, image_size: int) -> float:
    """FLOPs (2 x multiply-adds) of one image through the network at `image_size`: patch embedding, every
    block's linears and attention products, and the head. Norms, softmax and activations are left out."""
    grid = image_size // config.patch_size
    tokens = grid * grid + config.num_prefix_tokens
    d, hidden = config.width, config.mlp_dim
    gated = 3 if config.mlp == "swiglu" else 2  # SwiGLU: fc1 gives gate and value, fc2 the output
    per_block = 2 * tokens * (4 * d * d + gated * d * hidden) + 2 * 2 * tokens * tokens * d
    patch = 2 * grid * grid * config.in_chans * config.patch_size**2 * d
    head = 2 * config.embed_dim * config.num_classes
    return float(config.depth * per_block + patch + head)
