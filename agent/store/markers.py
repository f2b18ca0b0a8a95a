"""Completion markers: a model's manifest, written last, is what says a revision is complete."""

from __future__ import annotations

from pathlib import Path

from agent.errors import IntegrityError
from agent.manifest import Manifest
from agent.spec import ModelSpec
from agent.store.paths import CachePaths


def read(paths: CachePaths, spec: ModelSpec, path: Path) -> Manifest | None:
    """The manifest at `path` if it parses and speaks for this repo, layout and marker name."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        m = Manifest.from_json(data)
    except IntegrityError:
        return None
    if m.repo != spec.repo or m.layout != spec.layout.value:
        return None
    if path != paths.marker(spec) and not paths.is_other_marker_of(path, m.commit):
        return None
    return m


def current(paths: CachePaths, spec: ModelSpec) -> Manifest | None:
    """The current revision's manifest, if its marker is well-formed."""
    return read(paths, spec, paths.marker(spec))


def others(paths: CachePaths, spec: ModelSpec) -> list[Manifest]:
    """The other complete revisions' manifests, newest first."""
    found = [m for p in paths.other_marker_files(spec) if (m := read(paths, spec, p))]
    return sorted(found, key=lambda m: -m.completed_at)
