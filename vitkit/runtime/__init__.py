"""Runtime backends behind one interface, and the one place that chooses between them:
`inference_network(net, spec, backend, dtype, device)` gives the network a `Model` runs: the loaded
`VisionTransformer` prepared in place (`prepare`: eager with oneDNN-packed linears, bf16, torch.compile;
backends.py), or an onnxruntime session over it exported in memory (onnx_backend.py). measure.py tells what
the machine is doing while something is timed. See `docs/benchmarks.md` for what each backend buys.

Try it:  python -m pytest tests/test_runtime.py -q
"""

from vitkit.runtime.backends import (
    BACKENDS,
    DTYPES,
    PreparedViT,
    RuntimeInfo,
    RuntimeUnavailable,
    available,
    cpu_bf16_native,
    prepare,
    resolve,
)

__all__ = ["BACKENDS", "DTYPES", "PreparedViT", "RuntimeInfo", "RuntimeUnavailable", "available",
           "cpu_bf16_native", "inference_network", "prepare", "resolve"]


def inference_network(net, spec, backend: str = "auto", dtype: str = "auto", device="cpu", source: str | None = None):
    """`net` for inference on `device` with `backend`/`dtype`: prepared in place (eager, compile), or for "onnx"
    exported at spec.input_size, verified, and run by onnxruntime (a new object; `net` untouched)."""
    if backend == "onnx":
        from vitkit.runtime.onnx_backend import onnx_from_network

        return onnx_from_network(net, spec, dtype=dtype, device=device, source=source)
    return prepare(net, backend, dtype, device)
