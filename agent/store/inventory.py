"""One scan of DIR into typed records: the table `status` prints and the facts `gc` plans from.

Scanning only reads: markers, last-use and verification records, lock states and directory
listings. Nothing is hashed and no file of a model is opened. Names on disk that preload would
never have written (not a valid ORG/NAME) are not models and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.errors import UsageError
from agent.manifest import Manifest
from agent.spec import Layout, ModelSpec, validate_repo_id
from agent.store import locks, markers, usage
from agent.store.layouts import strategies
from agent.store.paths import CachePaths
from agent.store.verified import LastVerified, last_verified


@dataclass(frozen=True)
class Installed:
    """A model with a current marker in one layout."""

    spec: ModelSpec  # repo and layout
    manifest: Manifest | None  # None: the marker does not parse or is not this model's (corrupt)
    last_used: float  # the recorded last use, else when the marker was written
    verified: LastVerified | None  # the last verification of the current commit
    busy: bool  # a process holds the model's lock
    eviction: tuple[Path, ...]  # removing the model: readers stop seeing it first, files go last
    data: Path  # every revision's bytes
    other_markers: tuple[Path, ...]  # markers of the other complete revisions
    superseded: tuple[Path, ...]  # files of other revisions that the current one does not use


@dataclass(frozen=True)
class Leftover:
    """The staging folder of a transfer: partial files, whichever layout it was for."""

    repo: str
    path: Path
    busy: bool


@dataclass(frozen=True)
class Unpublished:
    """A model's folder of a layout with no marker: a first transfer that never published."""

    repo: str
    layout: Layout
    busy: bool


@dataclass(frozen=True)
class Inventory:
    """Everything preload wrote under one DIR."""

    root: Path
    models: tuple[Installed, ...]  # by layout, then repo
    staging: tuple[Leftover, ...]  # by repo
    unpublished: tuple[Unpublished, ...]  # by layout, then repo


def scan(root: Path) -> Inventory:
    """Read DIR once into an `Inventory`."""
    paths = CachePaths(root)
    layouts = strategies(paths)
    busy = _LockStates(paths)
    models: list[Installed] = []
    unpublished: list[Unpublished] = []
    for layout, strategy in layouts.items():
        marked: set[str] = set()
        for marker in paths.current_markers(layout):
            spec = _spec(paths.marker_repo(marker), layout)
            if spec is None:
                continue
            marked.add(spec.repo)
            m = markers.current(paths, spec)
            used = usage.last_used(root, spec.repo, layout)
            last = last_verified(root, spec)
            models.append(
                Installed(
                    spec=spec,
                    manifest=m,
                    last_used=used if used is not None else _mtime(marker),
                    verified=last if m is not None and last is not None and last.commit == m.commit else None,
                    busy=busy(spec.repo),
                    eviction=strategy.eviction(spec),
                    data=strategy.data(spec),
                    other_markers=tuple(paths.other_marker_entries(spec)),
                    superseded=strategy.superseded(spec, m) if m is not None else (),
                )
            )
        unpublished += [
            Unpublished(repo, layout, busy(repo))
            for repo in strategy.repo_folders()
            if repo not in marked and _valid(repo)
        ]
    return Inventory(root, tuple(models), tuple(_staging(paths, busy)), tuple(unpublished))


class _LockStates:
    """Each repo's lock is checked once per scan (a lock is per repo, not per layout)."""

    def __init__(self, paths: CachePaths) -> None:
        self._paths = paths
        self._seen: dict[str, bool] = {}

    def __call__(self, repo: str) -> bool:
        if repo not in self._seen:
            self._seen[repo] = locks.busy(self._paths.lock(ModelSpec(repo)))
        return self._seen[repo]


def _staging(paths: CachePaths, busy: _LockStates) -> list[Leftover]:
    try:
        entries = sorted(paths.staging_root.iterdir())
    except OSError:
        return []
    found = []
    for d in entries:
        repo = paths.staging_repo(d.name)
        if repo is not None and d.is_dir() and not d.is_symlink() and _valid(repo):
            found.append(Leftover(repo, d, busy(repo)))
    return found


def _valid(repo: str) -> bool:
    """Whether a repo id found on disk is one preload could have written."""
    try:
        validate_repo_id(repo)
    except UsageError:
        return False
    return True


def _spec(repo: str, layout: Layout) -> ModelSpec | None:
    return ModelSpec(repo, layout=layout) if _valid(repo) else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
