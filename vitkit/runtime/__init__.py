"""Runtime backends behind one interface: `prepare(net, backend, dtype, device)` makes a loaded
`VisionTransformer` a fast inference network (eager with oneDNN-packed linears, bf16, torch.compile;
ONNX Runtime reserved). See `backends.py` for the choices and `docs/benchmarks.md` for what each buys.

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
           "cpu_bf16_native", "prepare", "resolve"]
