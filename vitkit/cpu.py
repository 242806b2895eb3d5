"""What this CPU is: its model name and instruction-set flags, as /proc/cpuinfo spells them (empty elsewhere). Torch-
free: the runtime's machine probe and the INT8 builder read it.

Try it:  python -c "from vitkit.cpu import cpu_info; print(cpu_info()[0])"
"""

from __future__ import annotations

import functools
import platform

INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")  # the instructions that multiply u8 x s8 without saturating


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, flags)."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return model, flags
    found_model = None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "model name" and found_model is None:
            found_model = value.strip()
        elif name.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return found_model or model, flags


def has_int8_dot() -> bool:
    """Whether an x86 CPU has VNNI or AMX-INT8. Without them onnxruntime's u8 x s8 kernels (AVX2 vpmaddubsw) add
    pairs of products in int16 and can saturate: INT8 graphs built for such a CPU use 7-bit weights."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True  # ARM and others: their int8 dot products do not saturate this way
    return bool(cpu_info()[1] & set(INT8_DOT))
