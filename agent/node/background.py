"""Background threads the agent waits for at shutdown: periodic checks and watermark GC passes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Background:
    """Starts named daemon threads and remembers them until they end (loop thread only)."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []

    def spawn(self, target: Callable[[], None], name: str) -> None:
        """Run `target` in a thread that `join` waits for."""
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def busy(self, name: str) -> bool:
        """Whether a thread of this name still runs."""
        return any(t.name == name and t.is_alive() for t in self._threads)

    def join(self, deadline: float) -> bool:
        """Wait for every thread until the monotonic `deadline`; True if all ended."""
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)
