"""Transfer progress: counters any thread can read, and the periodic progress log line."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

from agent import log


@dataclass
class Progress:
    """Thread-safe counters, readable while a transfer runs."""

    total: int = 0
    done: int = 0
    fetched: int = 0
    files_total: int = 0
    files_done: int = 0
    connections: int = 0  # requests running now (streams and helpers)
    peak_connections: int = 0
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int) -> None:
        """Count `n` bytes received."""
        with self._lock:
            self.done += n
            self.fetched += n

    def resumed(self, n: int) -> None:
        """Count `n` bytes found on disk from an earlier run."""
        with self._lock:
            self.done += n

    def connection(self, delta: int) -> int:
        """Count a connection opened (+1) or closed (-1); the count now."""
        with self._lock:
            self.connections += delta
            self.peak_connections = max(self.peak_connections, self.connections)
            return self.connections

    def file_finished(self) -> None:
        """Count one file published into place."""
        with self._lock:
            self.files_done += 1

    def rate(self) -> float:
        """Bytes per second received in this run."""
        elapsed = time.monotonic() - self.started
        return self.fetched / elapsed if elapsed > 0 else 0.0


class ProgressReporter:
    """Logs a `progress` line every `interval` seconds while in its `with` block."""

    def __init__(self, progress: Progress, interval: float, repo: str) -> None:
        self.progress = progress
        self.interval = interval
        self.repo = repo
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._log = log.get()

    def __enter__(self) -> ProgressReporter:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            p = self.progress
            rate = p.rate()
            left = max(0, p.total - p.done)
            self._log.info(
                "progress",
                repo=self.repo,
                bytes_done=p.done,
                bytes_total=p.total,
                percent=round(100 * p.done / p.total, 1) if p.total else 100.0,
                mb_per_s=round(rate / 1e6, 1),
                eta_s=round(left / rate) if rate > 0 else None,
                files_done=p.files_done,
                files_total=p.files_total,
                connections=p.connections,
            )
