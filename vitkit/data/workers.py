"""Decode workers that never outlive the process that started them: each asks the kernel (Linux
prctl(PR_SET_PDEATHSIG)) to be killed when its parent dies, and so does a forkserver, so a `kill -9` of a
command leaves no server or worker behind holding hundreds of MB (the resource tracker then exits too).

Try it:  python -m pytest tests/test_hostile.py -q -k workers
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn`: SIGKILL this process when its parent exits (a no-op off Linux)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the call: nobody will read this worker's output
        os._exit(0)


def worker_context(start_method: str | None):
    """The multiprocessing context for workers: for "forkserver", one whose server process also dies with
    its parent (it imports vitkit.data.parent_watch first), so that server and workers go together."""
    if start_method is None:
        return None
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload(["vitkit.data.parent_watch"])
    return context
