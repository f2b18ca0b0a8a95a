"""PathWatch: wakes promptly when a file appears under directories that do not exist yet."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from agent.ops.watch import PathWatch


def publish_later(target: Path, delay: float) -> None:
    """Create the target's directories, then the file by rename, after a delay."""

    def run() -> None:
        time.sleep(delay)
        target.parent.mkdir(parents=True)
        tmp = target.with_name(".tmp")
        tmp.write_text("{}")
        os.replace(tmp, target)

    threading.Thread(target=run, daemon=True).start()


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "poll"])
def test_wakes_soon_after_the_file_appears(tmp_path: Path, use_inotify: bool) -> None:
    """The file and three levels of directories appear later: a 30 s wait ends well before its timeout."""
    target = tmp_path / "a" / "b" / "c" / "marker.json"
    with PathWatch(target, use_inotify=use_inotify) as watch:
        assert watch.mode == ("inotify" if use_inotify else "poll")
        publish_later(target, 0.3)
        began = time.monotonic()
        while not target.exists():
            assert time.monotonic() - began < 10, "never woke up"
            watch.wait(30)
        # A watch that missed the change would have slept out the whole 30 s wait.
        assert time.monotonic() - began < 10


def test_times_out_quietly_when_nothing_changes(tmp_path: Path) -> None:
    """No change: wait returns False after its timeout."""
    with PathWatch(tmp_path / "x" / "marker.json") as watch:
        began = time.monotonic()
        assert watch.wait(0.3) is False
        assert 0.25 <= time.monotonic() - began < 2
