"""Named points where a test can kill the process (PRELOAD_CRASH_AT=name) to prove crash safety.

Each point sits between two durable steps of a transfer or publish; the reliability tests
kill there and check that no model is reported ready early and the next run completes.
"""

from __future__ import annotations

import os
import signal

ENV = "PRELOAD_CRASH_AT"
POINTS = ("file_renamed", "before_fsync_dirs", "before_pointer", "before_marker", "after_marker")


def reached(name: str) -> None:
    """SIGKILL ourselves if the environment names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
