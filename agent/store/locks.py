"""Per-model flocks: the one process transferring a model, or evicting it, holds its lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_POLL = 0.2


@contextlib.contextmanager
def hold(
    path: Path,
    deadline: float | None = None,
    on_wait: Callable[[float], None] | None = None,
) -> Iterator[bool]:
    """flock `path`, polling until `deadline` (monotonic); the kernel drops it if we die.

    Yields False if the deadline passed first. `deadline=0` means "try once".
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    started = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    yield False
                    return
                if on_wait is not None:
                    on_wait(time.monotonic() - started)
                time.sleep(LOCK_POLL)
        yield True
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """True if some process holds the lock right now."""
    if not path.exists():
        return False
    with hold(path, deadline=0) as got:
        return not got


def busy(path: Path) -> bool:
    """`is_locked` for reporting: a lock that cannot be checked (read-only mount) is not busy."""
    try:
        return is_locked(path)
    except OSError:
        return False
