"""Named points where a test can kill the process (PRELOAD_CRASH_AT=name) to prove crash safety.

Each point sits between two durable steps of a transfer or publish; the reliability tests
kill there and check that no model is reported ready early and the next run completes.
`name:N` kills the N-th time the point is reached (e.g. `file_renamed:3`, after the third
file of a model is renamed into place); plain `name` is `name:1`.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "PRELOAD_CRASH_AT"
POINTS = ("file_renamed", "before_fsync_dirs", "before_pointer", "before_marker", "after_marker")
# A repair of recorded damage (Store.drop_damaged): after the bad files are deleted, and after
# the record is cleared (before anything is refetched).
REPAIR_POINTS = ("damage_files_removed", "damage_cleared")

_reached: dict[str, int] = {}
_lock = threading.Lock()


def reached(name: str) -> None:
    """SIGKILL ourselves if the environment names this point (and this is its N-th time)."""
    want = os.environ.get(ENV)
    if not want:
        return
    point, _, nth = want.partition(":")
    if point != name:
        return
    with _lock:
        _reached[name] = count = _reached.get(name, 0) + 1
    if count >= (int(nth) if nth.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)
