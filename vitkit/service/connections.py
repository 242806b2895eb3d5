"""Connection limits under uvicorn: a client must finish each request's headers within `HEADER_TIMEOUT_S`
(of connecting, or of the previous response) or be disconnected, and at most `max_connections()` connections
are open at once: past that, the connection that has waited longest for its headers is dropped to make
room (a new one is refused only when every open connection is busy), so half-open connections can neither
pile up until the process runs out of file descriptors nor lock real clients out. `run` serves an app with
them; SIGTERM and Ctrl-C stop it.

Try it:  python -m pytest tests/test_service_hostile.py -q
"""

from __future__ import annotations

import asyncio
import resource

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
CONNECTIONS = 1000
SPARE_FILES = 64  # descriptors kept for the model, the index and logs


def max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(CONNECTIONS, soft - SPARE_FILES))


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap (see the module doc)."""

    header_timeout_s = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        if len(self.connections) > max_connections():
            waiting = [c for c in self.connections if isinstance(c, GuardedH11) and c is not self and c.waiting]
            if not waiting:
                transport.close()
                return
            min(waiting, key=lambda c: c._armed_at).transport.close()
        self._arm()

    @property
    def waiting(self) -> bool:
        """Connected, with no request's headers complete since it was armed."""
        return self._deadline is not None and self.cycle is self._waiting_cycle

    def _arm(self) -> None:
        """Wait for the headers of the next request: the request cycle now is the one they must replace."""
        self._cancel()
        self._waiting_cycle = self.cycle
        self._armed_at = self.loop.time()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        if self.cycle is self._waiting_cycle and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None and self.cycle is not self._waiting_cycle:  # a request's headers came
            self._cancel()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)


def run(app, host: str, port: int, log_level: str = "info", header_timeout_s: float = HEADER_TIMEOUT_S) -> None:
    import uvicorn

    protocol = type("GuardedH11", (GuardedH11,), {"header_timeout_s": header_timeout_s})
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol,
                            timeout_keep_alive=5, timeout_graceful_shutdown=10)
    uvicorn.Server(config).run()
