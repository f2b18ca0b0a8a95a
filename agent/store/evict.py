"""Removing what garbage collection chose, never outside DIR: symlinks are unlinked, not followed."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from agent.store.paths import CachePaths


def remove(root: Path, path: Path) -> None:
    """Remove `path` if it lies inside `root` through real directories only."""
    _check_inside(root, path)
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _check_inside(root: Path, path: Path) -> None:
    rel = path.relative_to(root)  # raises ValueError for anything outside
    if not rel.parts or ".." in rel.parts:
        raise ValueError(f"refusing to remove {path}: not strictly inside {root}")
    real_parent = Path(os.path.realpath(path.parent))
    if real_parent != Path(os.path.realpath(root)).joinpath(*rel.parts[:-1]):
        raise ValueError(f"refusing to remove {path}: a parent directory is a symlink")


def prune_empty_parents(root: Path, paths: Iterable[Path]) -> None:
    """Drop the ORG directories an eviction left empty (never `root` or the state dirs)."""
    stop = CachePaths(root).pruning_stops()
    for path in paths:
        parent = path.parent
        if parent not in stop and parent.is_relative_to(root) and not parent.is_symlink():
            with contextlib.suppress(OSError):
                parent.rmdir()
