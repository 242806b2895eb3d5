"""Progress on stderr, never on stdout (stdout carries the results scripts read): a tqdm bar for counted work,
a spinner for a phase that cannot be counted (building an ONNX graph, writing a checkpoint, probing the
machine). Both appear only once the work has run for a second, so quick runs stay quiet; the spinner is drawn
only when stderr is a terminal (a log gets no animation). Every command that runs over images, iterations or
phases shows its progress through this module.

    with bar(len(paths), "classify") as progress:
        for batch in batches: ...; progress.update(len(batch))
    with spinner("verifying with onnxruntime"):
        ...

Try it:  vitkit export onnx --model vitkit-digits --out /tmp/digits.onnx    (a spinner while it builds, verifies)
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

SHOW_AFTER_S = 1.0  # work that ends sooner shows nothing


def bar(total: int | None, desc: str | None = None, unit: str = "img", show: bool = True,
        leave: bool = True) -> tqdm:
    """A progress bar on stderr for `total` steps (None: a running count), drawn after SHOW_AFTER_S."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, file=sys.stderr, dynamic_ncols=True,
                leave=leave, delay=SHOW_AFTER_S)


@contextmanager
def spinner(text: str, show: bool = True) -> Iterator[None]:
    """A spinner with `text` and the time elapsed on a terminal's stderr while the block runs; cleared after."""
    if not (show and sys.stderr.isatty()):
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    # stdout and stderr are left alone: rich's redirection would send the results' lines to stderr
    live = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True, redirect_stdout=False, redirect_stderr=False)
    live.add_task(text, total=None)
    started = threading.Event()

    def start() -> None:
        live.start()
        started.set()

    timer = threading.Timer(SHOW_AFTER_S, start)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()  # when it has fired already: until the spinner has started
        if started.is_set():
            live.stop()


@contextmanager
def above_bars(out: TextIO) -> Iterator[None]:
    """Writes to `out` inside the block land above any progress bar drawn on the same terminal (the bar is
    cleared, then drawn again below them); elsewhere (a pipe, a file) they are written as they are."""
    if not out.isatty():
        yield
        return
    with tqdm.external_write_mode(file=out):
        yield
