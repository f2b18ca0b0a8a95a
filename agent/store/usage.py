"""Last-use records that garbage collection orders by: DIR/.preload/used/<layout>/ORG/NAME.

A record is an empty file whose mtime is the last successful `preload` or `wait`
of the model. Recording is best effort: a reader's cache mount may be read-only.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from agent.spec import Layout, ModelSpec
from agent.store.paths import CachePaths


def record_path(root: Path, repo: str, layout: Layout) -> Path:
    """Where the last use of a model in a layout is recorded."""
    return CachePaths(root).used(repo, layout)


def touch(root: Path, spec: ModelSpec) -> None:
    """Record that `spec` was used now; silently skipped where DIR is not writable."""
    path = record_path(root, spec.repo, spec.layout)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


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
