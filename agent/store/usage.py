"""Last-use records that garbage collection orders by: DIR/.preload/used/<layout>/ORG/NAME.

A record is an empty file whose mtime is the last successful `preload` or `wait`
of the model. Recording is best effort: a reader's cache mount may be read-only. Like
everything under DIR, records and their directories are readable by every uid whatever the
umask (FILE_MODE, DIR_MODE): `status` and `gc` may run as another user.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from agent.spec import Layout, ModelSpec
from agent.store.fs import FILE_MODE, make_dirs
from agent.store.paths import CachePaths


def record_path(root: Path, repo: str, layout: Layout) -> Path:
    """Where the last use of a model in a layout is recorded."""
    return CachePaths(root).used(repo, layout)


def touch(root: Path, spec: ModelSpec) -> None:
    """Record that `spec` was used now; silently skipped where DIR is not writable."""
    path = record_path(root, spec.repo, spec.layout)
    with contextlib.suppress(OSError):
        try:
            os.utime(path)  # the owner may set the time of a read-only file
        except FileNotFoundError:
            make_dirs(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
            try:
                os.fchmod(fd, FILE_MODE)  # os.open's mode is filtered by the umask; fchmod's is not
            finally:
                os.close(fd)


def last_used(root: Path, repo: str, layout: Layout) -> float | None:
    """When the model was last used, if that was ever recorded."""
    try:
        return record_path(root, repo, layout).stat().st_mtime
    except OSError:
        return None


def forget(root: Path, repo: str, layout: Layout) -> None:
    """Drop the record of an evicted model."""
    with contextlib.suppress(OSError):
        record_path(root, repo, layout).unlink()
