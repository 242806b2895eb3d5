"""The inference engine behind `vitkit serve`: one worker thread owns the model and runs micro-batches.

Callers (the web server's event loop, a test, any thread) first turn an upload into pixels with `prepare`
(decode + preprocess, run in the caller's own thread pool), then `submit` the pixels into a bounded queue
and get a `concurrent.futures.Future`. The worker takes the first waiting request, gathers more until it
has `max_batch` of them or `max_wait_ms` have passed, runs them through the model as one batch and
completes each future. A full queue refuses at once (`EngineBusy`), so an overload is answered quickly
instead of piling up; a request whose caller gave up (cancelled future) is dropped before it costs any
compute.

The batch runs the same calls as `vitkit classify` / `vitkit embed`: `Model.__call__` + `Model.top_k` for
labels, `Model.embed_pixels` for vectors, after vitkit.data's `decode_image` + `preprocess`.

The model's intra-op threads are pinned to `threads` (default: all cores but one, which is left to the web
server and decoding): on a small machine, a torch pool as wide as the machine fighting with the server for
the same cores is many times slower than either alone. The pin is set in the worker thread, and OpenMP keeps
it per thread: the rest of the process keeps its own setting.

Try it:  python -m pytest tests/test_service_engine.py -q
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from vitkit.api import Model
from vitkit.data.decode import DEFAULT_MAX_PIXELS, decode_image
from vitkit.data.transforms import preprocess

KINDS = ("classify", "embed")
CLOSE_WAIT_S = 10.0  # at shutdown, how long to wait for the model to finish what is queued


class EngineBusy(RuntimeError):
    """The queue is full: the caller should retry later."""


class EngineStopped(RuntimeError):
    """The engine is not running (not started yet, or shutting down)."""


class ModelFailure(RuntimeError):
    """The model raised on a batch: every request of that batch gets this, with the model's error as cause."""


@dataclass
class _Request:
    kind: str  # "classify" | "embed"
    option: int | str  # classify: top_k; embed: pool
    pixels: torch.Tensor  # (3, H, W)
    future: Future


def default_threads() -> int:
    """All the cores this process may use but one (at least one)."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


class Engine:
    """A model behind a bounded queue, run in micro-batches by one worker thread (see the module doc)."""

    def __init__(self, model: Model, max_batch: int = 32, max_wait_ms: float = 10.0, queue_size: int = 256,
                 threads: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, fast_decode: bool = False,
                 stall_s: float = 120.0):
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0 or (threads is not None and threads < 1):
            raise ValueError(f"need max_batch >= 1, queue_size >= 1, max_wait_ms >= 0 and threads >= 1; got "
                             f"{max_batch}, {queue_size}, {max_wait_ms} and {threads}")
        self.model = model
        self.max_batch, self.max_wait_s, self.queue_size = max_batch, max_wait_ms / 1000, queue_size
        self.threads = threads or default_threads()
        self.max_pixels, self.fast_decode = max_pixels, fast_decode
        self.observers: list[Callable[[int, float], None]] = []  # called with (batch size, seconds) per batch
        self._queue: queue.Queue[_Request | None] = queue.Queue(queue_size)
        self._lock = threading.Lock()  # orders submit() against close()
        self._accepting = False
        self._thread: threading.Thread | None = None
        self._warm = threading.Event()
        self._failure: BaseException | None = None
        self.stall_s = stall_s  # a batch running longer than this: the engine is stuck, not ready
        self._batch_started: float | None = None  # monotonic time the running batch began

    # -- caller side ----------------------------------------------------------------------------------
    def prepare(self, data: bytes) -> torch.Tensor:
        """An encoded image -> pixels (3, H, W) for `submit`. Raises ImageDecodeError (ImageTooLarge for the
        pixel limit) with the reason. Runs in the caller's thread: keep it off an event loop."""
        draft = self.model.spec.resize if self.fast_decode else None
        return preprocess(decode_image(data, max_pixels=self.max_pixels, draft_size=draft), self.model.spec)

    def submit(self, kind: str, pixels: torch.Tensor, option: int | str) -> Future:
        """Queue one image: kind "classify" (option: top_k) -> list[Prediction], or "embed" (option: pool)
        -> np.ndarray (D,) L2-normalised. Raises EngineBusy when the queue is full, EngineStopped when the
        engine is not running."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
        future: Future = Future()
        with self._lock:
            if not self._accepting:
                raise EngineStopped("the model is not running (starting up or shutting down)")
            if not self.ready:
                raise EngineStopped(self.trouble())
            try:
                self._queue.put_nowait(_Request(kind, option, pixels, future))
            except queue.Full:
                raise EngineBusy(f"{self.queue_size} requests are already waiting for the model") from None
        return future

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def ready(self) -> bool:
        """Started, warmed up, accepting requests, its worker alive and not stuck on a batch."""
        return self._accepting and self._thread is not None and self._thread.is_alive() and not self.stalled

    @property
    def stalled(self) -> bool:
        started = self._batch_started
        return started is not None and time.monotonic() - started > self.stall_s

    def trouble(self) -> str:
        """Why the engine is not ready, in words."""
        if self._thread is None or not self._accepting:
            return "the model is not running (starting up or shutting down)"
        if not self._thread.is_alive():
            return f"the model's worker thread has died ({self._failure or 'no error recorded'})"
        if self.stalled:
            return f"the model has been on one batch for more than {self.stall_s:g} s"
        return "ready"

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self) -> Engine:
        """Start the worker and wait for its warm-up batch; a no-op when already running."""
        if self.ready:
            return self
        self._warm.clear()
        self._failure = None
        self._thread = threading.Thread(target=self._work, name="vitkit-engine", daemon=True)
        self._thread.start()
        self._warm.wait()
        if self._failure is not None:
            raise RuntimeError(f"the model failed its warm-up batch: {self._failure}") from self._failure
        with self._lock:
            self._accepting = True
        return self

    def close(self) -> None:
        """Stop accepting, finish what is queued, stop the worker. The engine can be started again."""
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
        if self._thread.is_alive() and not self.stalled:
            self._queue.put(None)  # after every accepted request; blocks while a full queue drains
        self._thread.join(timeout=CLOSE_WAIT_S)  # a stuck model is left behind (a daemon thread)
        self._fail_queued(EngineStopped("the server is shutting down"))

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- worker side ----------------------------------------------------------------------------------
    def _work(self) -> None:
        torch.set_num_threads(self.threads)  # this thread's intra-op pool: the one the model runs on
        try:
            size = self.model.spec.input_size
            self.model(torch.zeros(1, 3, size, size))  # first-call costs (allocations, kernel choice) paid here
        except Exception as err:  # reported by start(), which is waiting for it
            self._failure = err
            return
        finally:
            self._warm.set()
        stop, batch = False, []
        try:
            while not stop:
                batch, stop = self._gather()
                batch = [r for r in batch if r.future.set_running_or_notify_cancel()]  # skip abandoned ones
                self._run(batch)
        except BaseException as err:  # the worker cannot go on: fail what waits, fast, instead of timing out
            self._failure = err
            died = EngineStopped(f"the model's worker thread has died: {err}")
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(died)
            self._fail_queued(died)
            logging.getLogger("vitkit.service").error("the engine's worker thread died", exc_info=err)

    def _fail_queued(self, error: Exception) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and item.future.set_running_or_notify_cancel():
                item.future.set_exception(error)

    def _gather(self) -> tuple[list[_Request], bool]:
        """Wait for a first request, then take more until max_batch or max_wait; -> (batch, stop seen)."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, batch: list[_Request]) -> None:
        if not batch:
            return
        start = time.perf_counter()
        self._batch_started = time.monotonic()
        groups: dict[tuple[str, str | None], list[_Request]] = {}
        for r in batch:  # one model call for all classifications, one per pooling for embeddings
            groups.setdefault((r.kind, r.option if r.kind == "embed" else None), []).append(r)
        for (kind, pool), group in groups.items():
            pixels = torch.stack([r.pixels for r in group])  # (B, 3, H, W)
            try:
                results = self._classify(pixels, group) if kind == "classify" else self._embed(pixels, pool)
            except Exception as err:  # the model itself failed: each caller of this group gets the error
                failure = ModelFailure(f"the model failed on a batch of {len(group)}: {err}")
                failure.__cause__ = err
                for r in group:
                    r.future.set_exception(failure)
                continue
            for r, result in zip(group, results):
                r.future.set_result(result)
        self._batch_started = None
        seconds = time.perf_counter() - start
        for observe in self.observers:
            observe(len(batch), seconds)

    def _classify(self, pixels: torch.Tensor, group: list[_Request]) -> list:
        logits = _finite(self.model(pixels))
        rows = self.model.top_k(logits, max(r.option for r in group))  # sorted, so a prefix is top-k
        return [row[:r.option] for row, r in zip(rows, group)]

    def _embed(self, pixels: torch.Tensor, pool: str) -> list:
        return list(_finite(self.model.embed_pixels(pixels, pool)).numpy())  # B x (D,)


def _finite(values: torch.Tensor) -> torch.Tensor:
    """The model's outputs, or an error when any is NaN or infinite (no score can be made of them)."""
    if not torch.isfinite(values).all():
        raise ValueError("the model produced non-finite outputs (NaN or infinity)")
    return values
