"""Request-body limits, enforced while the body streams in, before any route parses it: more than
`max_bytes` is refused with 413 (at once when Content-Length says so, else as soon as the count passes it),
a body still incomplete `timeout_s` after the request began is refused with 408 (a slow-upload attack
would otherwise hold a connection and a buffer for as long as it likes), and the bodies of all requests
together may hold at most `budget_bytes` at once: past it, 503 with Retry-After (32 parallel 19 MB bodies
would otherwise take gigabytes).

Try it:  python -m pytest tests/test_service_api.py -q -k "too_large or slow"
"""

from __future__ import annotations

import asyncio
import ctypes
import gc

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vitkit.service.errors import BadRequest, Busy, PayloadTooLarge, RequestTimeout

BUDGET_UPLOADS = 4  # largest uploads held at once, as a multiple of the per-request limit
TRIM_AFTER_BYTES = 2**20  # after a body this large, freed heap goes back to the system


def release_freed_memory() -> None:
    """glibc keeps freed blocks of large bodies in its heap; malloc_trim gives them back (a no-op elsewhere).
    A collection first frees bodies that only reference cycles (an exception's traceback) still hold."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class BodyLimit:
    """ASGI middleware: wraps `receive` of every HTTP request (see the module doc)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, budget_bytes: int | None = None):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.budget_bytes = budget_bytes or BUDGET_UPLOADS * max_bytes
        self.in_flight = 0  # body bytes received by requests that have not finished (one event loop: no lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_length(scope)
        except (BadRequest, PayloadTooLarge) as err:
            await err.response(scope["path"])(scope, receive, send)
            return
        held = [0]  # this request's body bytes, counted in self.in_flight until it finishes
        try:
            await self.app(scope, self._limited(receive, held), send)
        finally:
            self.in_flight -= held[0]
            if held[0] > TRIM_AFTER_BYTES:
                release_freed_memory()

    def _check_length(self, scope: Scope) -> None:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is None:
            return
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length header")
        if int(declared) > self.max_bytes:
            raise PayloadTooLarge(f"{self._too_large()} (Content-Length: {int(declared)})")

    def _limited(self, receive: Receive, held: list[int]) -> Receive:
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        received, complete = 0, False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body: e.g. waiting for a disconnect, no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(f"the request body did not arrive within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                received += size
                held[0] += size
                self.in_flight += size
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._too_large())
                if self.in_flight > self.budget_bytes:
                    raise Busy(f"the server holds {self.budget_bytes // 2**20} MB of uploads already: retry shortly")
            return message

        return limited_receive

    def _too_large(self) -> str:
        return f"request body exceeds the limit of {self.max_bytes} bytes"
