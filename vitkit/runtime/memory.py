"""Give back the pages of weights that packing has replaced, so that preparing a network never holds two
copies of its weights.

vitkit loads safetensors memory-mapped (`load_state_dict(assign=True)`: parameters point into the file's
mapping). Packing reads each weight once, and the pages it read stay resident, counted in the process's
RSS, for as long as the mapping lives, even after the module has dropped the tensor. `release_file_pages`
asks the kernel to page them out (`madvise(MADV_PAGEOUT)`, Linux >= 5.4): for clean file-backed pages that
just unmaps them, and their content stays readable (it is re-read from the file if anything touches it
again), so it is safe whatever else still refers to the tensor. Memory that is not file-backed is left
alone (it is freed when its last reference goes). Everywhere else this is a no-op.

Try it:  python -m pytest tests/test_runtime.py -q -k memory
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import torch

MADV_PAGEOUT = 21
_libc = None


def _file_mappings() -> list[tuple[int, int]]:
    """[(start, end)] of this process's mappings that have a file behind them."""
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                start, end = (int(v, 16) for v in parts[0].split("-"))
                ranges.append((start, end))
    return ranges


def release_file_pages(tensors: list[torch.Tensor | None]) -> int:
    """Page out the whole pages of each contiguous CPU tensor that lie in a file mapping. -> bytes released
    (asked for). Never raises: a platform without /proc or madvise just keeps the pages."""
    global _libc
    if not sys.platform.startswith("linux"):
        return 0
    try:
        ranges = _file_mappings()
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        page = mmap.PAGESIZE
        released = 0
        for t in tensors:
            if t is None or t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
                continue
            lo, hi = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
            if not any(start <= lo and hi <= end for start, end in ranges):
                continue
            start, end = -(-lo // page) * page, hi // page * page  # whole pages inside the tensor only
            if end > start and _libc.madvise(start, end - start, MADV_PAGEOUT) == 0:
                released += end - start
        return released
    except (OSError, AttributeError, ValueError):
        return 0
