"""Free space: the check before a transfer starts, and what a set of paths occupies."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from agent.errors import DiskSpaceError
from agent.store.fs import existing_ancestor
from agent.units import fmt_bytes

SPACE_MARGIN_MIN = 64 << 20
SPACE_MARGIN_FRACTION = 0.01


def check_space(root: Path, needed: int) -> None:
    """Refuse to start when the bytes still needed (plus a margin) exceed free space."""
    st = os.statvfs(existing_ancestor(root))
    free = st.f_bavail * st.f_frsize
    margin = max(SPACE_MARGIN_MIN, int(needed * SPACE_MARGIN_FRACTION))
    if needed and needed + margin > free:
        raise DiskSpaceError(
            f"not enough space on {root}: need {fmt_bytes(needed)} (+{fmt_bytes(margin)} margin), "
            f"free {fmt_bytes(free)}",
            free_wanted=needed + margin,
        )


def disk_usage(root: Path) -> tuple[int, int]:
    """(free, total) bytes on the filesystem of `root`, as an unprivileged writer sees them."""
    st = os.statvfs(root)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def allocated(paths: Iterable[Path]) -> int:
    """Allocated bytes under `paths`, each inode once (hard links), symlinks not followed."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(p: str) -> None:
        nonlocal total
        with contextlib.suppress(OSError):
            st = os.lstat(p)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512

    for path in paths:
        add(str(path))
        if path.is_dir() and not path.is_symlink():
            for dirpath, dirnames, filenames in os.walk(path):
                for n in dirnames + filenames:
                    add(os.path.join(dirpath, n))
    return total
