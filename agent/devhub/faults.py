"""Fault injection: what a fault does, and the queue of faults waiting for matching requests."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

# What a request was for: the reply kinds a fault (and the request log) can select on.
Kind = Literal["revision", "tree", "resolve", "cdn", "other"]
FaultKind = Literal["revision", "tree", "resolve", "cdn", "any"]


@dataclass(frozen=True)
class Fault:
    """A misbehaviour applied to the next `times` matching requests (None: forever).

    Matching: `kind` ("revision", "tree", "resolve", "cdn" or "any"), `path` a substring of the
    decoded request path, `method` ("GET"/"HEAD"). Without `method`, faults that act on the body
    (reset_after, truncate_after, corrupt, trickle_bps, stall with stall_after > 0) match only
    replies that have a body, so a client's HEAD does not use them up.

    Effects: `status` (+ `headers`, `body`) replaces the reply; `body` alone replaces the reply's
    body with status 200; `redirect_loop` answers 302 to the same URL; `reset_after` sends the
    headers and N body bytes then resets the connection (RST); `truncate_after` sends N body
    bytes under the full Content-Length then closes cleanly; `stall` waits that many seconds
    after `stall_after` body bytes (before the headers if the reply has no body); `trickle_bps`
    paces the body; `corrupt` flips one byte in the middle of the body.
    """

    kind: FaultKind = "any"
    path: str | None = None
    method: str | None = None
    times: int | None = 1
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | str | None = None
    redirect_loop: bool = False
    reset_after: int | None = None
    truncate_after: int | None = None
    stall: float | None = None
    stall_after: int = 0
    trickle_bps: int | None = None
    corrupt: bool = False

    @property
    def replaces_reply(self) -> bool:
        """Whether the fault answers instead of the hub."""
        return self.status is not None or self.body is not None or self.redirect_loop

    @property
    def acts_on_body(self) -> bool:
        """Whether the fault needs a body to act on."""
        return (
            self.reset_after is not None
            or self.truncate_after is not None
            or self.trickle_bps is not None
            or self.corrupt
            or (self.stall is not None and self.stall_after > 0)
        )

    def label(self) -> str:
        """A short description for the request log."""
        names = ("status", "redirect_loop", "reset_after", "truncate_after", "stall")
        parts = [f"{n}={getattr(self, n)}" for n in names if getattr(self, n) not in (None, False)]
        parts += [f"{n}={getattr(self, n)}" for n in ("trickle_bps", "corrupt") if getattr(self, n)]
        return ",".join(parts) or "body"


class FaultQueue:
    """Faults in the order they were added, each with its uses left; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[tuple[Fault, int | None]] = []

    def add(self, fault: Fault) -> None:
        """Queue a fault; faults are tried in the order they were added."""
        with self._lock:
            self._faults.append((fault, fault.times))

    def clear(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[Fault]:
        """Faults that still have uses left."""
        with self._lock:
            return [f for f, _ in self._faults]

    def take(self, kind: Kind, method: str, path: str, has_body: bool) -> Fault | None:
        """The first fault matching this request, using one of its uses up."""
        with self._lock:
            for i, (fault, left) in enumerate(self._faults):
                if fault.kind not in ("any", kind):
                    continue
                if fault.path is not None and fault.path not in path:
                    continue
                if fault.method is not None and fault.method.upper() != method:
                    continue
                if fault.method is None and fault.acts_on_body and not has_body:
                    continue
                if left is None:
                    return fault
                if left <= 1:
                    del self._faults[i]
                else:
                    self._faults[i] = (fault, left - 1)
                return fault
        return None
