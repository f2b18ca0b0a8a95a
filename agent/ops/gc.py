"""Disk garbage collection: free space under DIR by evicting what nobody is asking for.

Order: first complete models that are neither kept (configured, `--keep`) nor pinned, least
recently used first, with leftovers of abandoned downloads among them; then superseded
revisions of the remaining models. Pinned models are never touched. A model whose lock is
held is in use and skipped; every deletion happens while holding that lock, so no preload
can run into it. Nothing outside DIR is ever removed: symlinks are unlinked, never followed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from agent import log
from agent.errors import UsageError
from agent.spec import Layout, ModelSpec, validate_repo_id
from agent.store import STATE, Store, usage
from agent.units import fmt_bytes


class Kind(StrEnum):
    """What an eviction removes."""

    MODEL = "model"  # a complete model: pointer, marker, files
    PARTIAL = "partial"  # an abandoned download's staging area
    REVISION = "revision"  # files of a commit the marker no longer points at


@dataclass(frozen=True)
class Eviction:
    """One removal GC plans, with its reason."""

    repo: str
    layout: Layout | None
    kind: Kind
    paths: tuple[Path, ...]  # removed in this order
    bytes: int
    reason: str
    commit: str | None = None  # for REVISION: the current commit, which must still be current


@dataclass(frozen=True)
class Plan:
    """What to remove to reach `target` free bytes, and what was spared because it is in use."""

    free: int
    target: int
    evictions: tuple[Eviction, ...]
    in_use: tuple[str, ...] = ()

    @property
    def freed(self) -> int:
        """Bytes the evictions would free."""
        return sum(e.bytes for e in self.evictions)


@dataclass
class Report:
    """What GC did."""

    plan: Plan
    removed: list[Eviction] = field(default_factory=list)
    skipped: list[tuple[Eviction, str]] = field(default_factory=list)
    free_after: int = 0
    interrupted: bool = False  # stopped early on request; the evictions left are not done

    @property
    def short(self) -> bool:
        """True when free space is still below the target."""
        return self.free_after < self.plan.target


@dataclass(frozen=True)
class _Installed:
    spec: ModelSpec
    commit: str
    last_used: float


def disk_usage(root: Path) -> tuple[int, int]:
    """(free, total) bytes on the filesystem of `root`, as an unprivileged writer sees them."""
    st = os.statvfs(root)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def target_for_percent(root: Path, percent: float) -> int:
    """Free bytes that make `percent` of the filesystem free."""
    return int(disk_usage(root)[1] * percent / 100)


def plan(root: Path, target: int, keep: Iterable[str] = (), pinned: Iterable[str] = ()) -> Plan:
    """Choose evictions, in order, until `target` bytes would be free."""
    store = Store(root)
    keep, pinned = set(keep), set(pinned)
    free = disk_usage(root)[0]
    installed = sorted(_installed(root), key=lambda i: i.last_used)
    candidates: list[Eviction] = []
    in_use: set[str] = set()
    for inst in installed:
        if inst.spec.repo in keep or inst.spec.repo in pinned:
            continue
        candidates.append(_model_eviction(store, inst))
    complete = {i.spec.repo for i in installed}
    for repo, path in _staging(root):
        if repo not in complete and repo not in keep and repo not in pinned:
            why = "abandoned partial download of a model that is not configured"
            candidates.append(Eviction(repo, None, Kind.PARTIAL, (path,), _du([path]), why))
    for inst in installed:
        # Unkept models are already candidates as a whole.
        if inst.spec.repo in keep and inst.spec.repo not in pinned:
            candidates.extend(_superseded(store, inst))
    chosen: list[Eviction] = []
    projected = free
    for cand in candidates:
        if projected >= target:
            break
        if store.is_locked(ModelSpec(cand.repo)):
            in_use.add(cand.repo)
            continue
        chosen.append(cand)
        projected += cand.bytes
    return Plan(free, target, tuple(chosen), tuple(sorted(in_use)))


def execute(root: Path, p: Plan, dry_run: bool = False, cancel: threading.Event | None = None) -> Report:
    """Carry out a plan; each eviction under its model's lock, skipped if the lock is taken.

    Once `cancel` is set no further eviction starts (the one under way finishes).
    """
    store = Store(root)
    report = Report(p)
    logger = log.get().bind(dest=str(root))
    for ev in p.evictions:
        if cancel is not None and cancel.is_set():
            report.interrupted = True
            break
        if dry_run:
            report.removed.append(ev)
            continue
        with store.lock(ModelSpec(ev.repo), deadline=0) as got:
            if not got:
                report.skipped.append((ev, "in use: its lock is held"))
                continue
            if ev.kind is Kind.REVISION and ev.layout is not None:
                current = store.read_marker(ModelSpec(ev.repo, layout=ev.layout))
                if current is None or current.commit != ev.commit:
                    report.skipped.append((ev, "a new revision was published meanwhile"))
                    continue
            for path in ev.paths:
                _remove(root, path)
            if ev.kind is Kind.MODEL and ev.layout is not None:
                usage.forget(root, ev.repo, ev.layout)
                _prune_empty_parents(root, ev.paths)
        report.removed.append(ev)
        logger.info(
            "gc_removed",
            repo=ev.repo,
            kind=ev.kind.value,
            layout=ev.layout.value if ev.layout else None,
            bytes=ev.bytes,
            reason=ev.reason,
        )
    report.free_after = disk_usage(root)[0] + (p.freed if dry_run else 0)
    return report


def collect(
    root: Path,
    target: int,
    keep: Iterable[str] = (),
    pinned: Iterable[str] = (),
    dry_run: bool = False,
    cancel: threading.Event | None = None,
) -> Report:
    """Plan and execute in one go."""
    if not (root / STATE).is_dir():
        raise UsageError(f"{root} holds no preloaded models (no {STATE} directory)")
    return execute(root, plan(root, target, keep, pinned), dry_run, cancel)


def describe(report: Report, dry_run: bool) -> list[str]:
    """Human-readable report lines: what was (or would be) removed and why."""
    verb = "would remove" if dry_run else "removed"
    lines = [
        f"{verb} {ev.kind.value} {ev.repo}"
        + (f" ({ev.layout.value})" if ev.layout else "")
        + f": {fmt_bytes(ev.bytes)}; {ev.reason}"
        for ev in report.removed
    ]
    lines += [f"skipped {ev.kind.value} {ev.repo}: {why}" for ev, why in report.skipped]
    lines += [f"kept {repo}: in use (its lock is held)" for repo in report.plan.in_use]
    lines.append(
        f"free {fmt_bytes(report.free_after)}, target {fmt_bytes(report.plan.target)}"
        + (" (still short)" if report.short else "")
    )
    return lines


# -- scanning -------------------------------------------------------------------------


def _installed(root: Path) -> Iterable[_Installed]:
    store = Store(root)
    markers = root / STATE / "markers"
    for layout in Layout:
        base = markers / layout.value
        for marker in sorted(base.glob("*/*.json")):
            repo = f"{marker.parent.name}/{marker.name[: -len('.json')]}"
            spec = _spec(repo, layout)
            if spec is None:
                continue
            m = store.read_marker(spec)
            if m is None:
                continue
            used = usage.last_used(root, repo, layout)
            if used is None:
                used = _mtime(marker)
            yield _Installed(spec, m.commit, used)


def _spec(repo: str, layout: Layout) -> ModelSpec | None:
    """A spec for a repo id found on disk; None for names we would never have written."""
    try:
        return ModelSpec(validate_repo_id(repo), layout=layout)
    except UsageError:
        return None


def _staging(root: Path) -> Iterable[tuple[str, Path]]:
    base = root / STATE / "staging"
    if not base.is_dir():
        return
    for d in sorted(base.iterdir()):
        org, sep, name = d.name.partition("--")
        if sep and d.is_dir() and not d.is_symlink() and _spec(f"{org}/{name}", Layout.DIR):
            yield f"{org}/{name}", d


def _model_eviction(store: Store, inst: _Installed) -> Eviction:
    spec = inst.spec
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(inst.last_used))
    reason = f"not configured or kept; last used {stamp}"
    paths: tuple[Path, ...]
    others = store.other_marker_path(spec, inst.commit).parent
    if spec.layout is Layout.DIR:
        # Readers stop seeing the model before its files go: pointer, then markers, then files.
        versions = store.state / "versions" / spec.org / spec.name
        paths = (store.model_path(spec), store.marker_path(spec), others, versions, store.staging_dir(spec))
        size = _du([versions])
    else:
        paths = (store.marker_path(spec), others, store.hf_repo_dir(spec), store.staging_dir(spec))
        size = _du([store.hf_repo_dir(spec)])
    return Eviction(spec.repo, spec.layout, Kind.MODEL, paths, size, reason, inst.commit)


def _superseded(store: Store, inst: _Installed) -> list[Eviction]:
    spec, current = inst.spec, inst.commit
    why = f"superseded by the published commit {current[:12]}"
    if spec.layout is Layout.DIR:
        versions = store.state / "versions" / spec.org / spec.name
        old = [d for d in _children(versions) if d.name != current]
    else:
        repo = store.hf_repo_dir(spec)
        m = store.read_marker(spec)
        wanted = {f.digest.hex for f in m.files} if m else set()
        old = [d for d in _children(repo / "snapshots") if d.name != current]
        old += [t for t in _children(repo / "trees") if t.name != f"{current}.json"]
        old += [r for r in _children(repo / "refs") if _read(r) != current]
        old += [b for b in _children(repo / "blobs") if b.name not in wanted]
    if not old:
        return []
    # Their markers go first: a revision stops being ready before its files go.
    markers = _children(store.other_marker_path(spec, current).parent)
    return [Eviction(spec.repo, spec.layout, Kind.REVISION, (*markers, *old), _du(old), why, current)]


def _children(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError:
        return []


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _du(paths: Iterable[Path]) -> int:
    """Allocated bytes under `paths`, each inode once, symlinks not followed."""
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


# -- removal --------------------------------------------------------------------------


def _remove(root: Path, path: Path) -> None:
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


def _prune_empty_parents(root: Path, paths: Iterable[Path]) -> None:
    """Drop the ORG directories an eviction left empty (never `root` or the state dirs)."""
    stop = {root, root / STATE, *(root / STATE).glob("*"), *(root / STATE / "markers").glob("*")}
    for path in paths:
        parent = path.parent
        if parent not in stop and parent.is_relative_to(root) and not parent.is_symlink():
            with contextlib.suppress(OSError):
                parent.rmdir()
