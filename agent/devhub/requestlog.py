"""The test hub's request log: answered requests, and the body bytes of those still in flight."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from agent.devhub.faults import FaultKind, Kind


@dataclass(frozen=True)
class RequestRecord:
    """One answered request, as the test hub saw it (tokens are never recorded)."""

    kind: Kind
    method: str
    path: str
    query: str
    status: int
    range: str | None
    bytes_sent: int
    authorized: bool
    fault: str | None
    started: float
    finished: float


class LiveRequest(Protocol):
    """A request being answered (the HTTP handler), read while it runs."""

    @property
    def sent(self) -> int:
        """Body bytes written so far."""
        ...

    @property
    def last_write(self) -> bool:
        """Set just before the write that may complete the response for the client."""
        ...


class RequestLog:
    """Records requests as they finish; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._finished = threading.Condition(self._lock)
        self._log: list[RequestRecord] = []
        self._inflight: dict[LiveRequest, str] = {}

    def begin(self, request: LiveRequest, path: str) -> None:
        """A request for `path` started: count its bytes live until it finishes."""
        with self._lock:
            self._inflight[request] = path

    def finish(self, request: LiveRequest, record: RequestRecord) -> None:
        """A request finished: log it."""
        # One step, so bytes_served never counts a request twice or not at all.
        with self._lock:
            del self._inflight[request]
            self._log.append(record)
            self._finished.notify_all()

    def records(
        self, kind: FaultKind = "any", method: str | None = None, path: str | None = None
    ) -> list[RequestRecord]:
        """Logged requests, optionally filtered by kind, method and path substring."""
        with self._lock:
            self._settle()
            log = list(self._log)
        return [
            r
            for r in log
            if (kind == "any" or r.kind == kind)
            and (method is None or r.method == method)
            and (path is None or path in r.path)
        ]

    def bytes_served(self, path: str | None = None) -> int:
        """Body bytes sent (requests in flight included) to paths containing `path`."""
        with self._lock:
            self._settle()
            done = sum(r.bytes_sent for r in self._log if path is None or path in r.path)
            live = sum(h.sent for h, p in self._inflight.items() if path is None or path in p)
        return done + live

    def clear(self) -> None:
        """Forget logged requests."""
        with self._lock:
            self._log.clear()

    def _settle(self) -> None:
        """Wait (briefly, holding the lock) for requests whose response may already be complete."""
        # A client can see its response before the handler has logged it; without this a test
        # that asserts on the log right after its request would race the handler.
        self._finished.wait_for(lambda: not any(h.last_write for h in self._inflight), timeout=2)
