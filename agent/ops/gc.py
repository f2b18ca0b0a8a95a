"""Disk garbage collection: free space under DIR by evicting what nobody is asking for.

Order: first complete models that are neither kept (configured, `--keep`) nor pinned, least
recently used first, with leftovers of abandoned downloads among them; then superseded
revisions of the remaining models. Pinned models are never touched. A model whose lock is
held is in use and skipped; every deletion happens while holding that lock, so no preload
can run into it. Nothing outside DIR is ever removed: symlinks are unlinked, never followed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from agent import log
from agent.errors import UsageError
from agent.spec import Layout, ModelSpec
from agent.store import STATE, Store, evict, inventory, usage
from agent.store.space import allocated, disk_usage
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


def target_for_percent(root: Path, percent: float) -> int:
    """Free bytes that make `percent` of the filesystem free."""
    return int(disk_usage(root)[1] * percent / 100)


def plan(root: Path, target: int, keep: Iterable[str] = (), pinned: Iterable[str] = ()) -> Plan:
    """Choose evictions, in order, until `target` bytes would be free."""
    keep, pinned = set(keep), set(pinned)
    free = disk_usage(root)[0]
    inv = inventory.scan(root)
    complete = [(i, m.commit) for i in inv.models if (m := i.manifest) is not None]
    installed = sorted(complete, key=lambda ic: ic[0].last_used)
    busy = {i.spec.repo: i.busy for i, _ in installed} | {s.repo: s.busy for s in inv.staging}
    candidates: list[Eviction] = []
    for inst, commit in installed:
        if inst.spec.repo not in keep and inst.spec.repo not in pinned:
            candidates.append(_model_eviction(inst, commit))
    repos = {i.spec.repo for i, _ in installed}
    for left in inv.staging:
        if left.repo not in repos and left.repo not in keep and left.repo not in pinned:
            why = "abandoned partial download of a model that is not configured"
            size = allocated([left.path])
            candidates.append(Eviction(left.repo, None, Kind.PARTIAL, (left.path,), size, why))
    for inst, commit in installed:
        # Unkept models are already candidates as a whole.
        if inst.spec.repo in keep and inst.spec.repo not in pinned:
            candidates.extend(_superseded(inst, commit))
    chosen: list[Eviction] = []
    in_use: set[str] = set()
    projected = free
    for cand in candidates:
        if projected >= target:
            break
        if busy[cand.repo]:
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
                evict.remove(root, path)
            if ev.kind is Kind.MODEL and ev.layout is not None:
                usage.forget(root, ev.repo, ev.layout)
                evict.prune_empty_parents(root, ev.paths)
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
    if not Store(root).state.is_dir():
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


# -- candidates -----------------------------------------------------------------------


def _model_eviction(inst: inventory.Installed, commit: str) -> Eviction:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(inst.last_used))
    reason = f"not configured or kept; last used {stamp}"
    spec, size = inst.spec, allocated([inst.data])
    return Eviction(spec.repo, spec.layout, Kind.MODEL, inst.eviction, size, reason, commit)


def _superseded(inst: inventory.Installed, current: str) -> list[Eviction]:
    if not inst.superseded:
        return []
    spec = inst.spec
    why = f"superseded by the published commit {current[:12]}"
    # Their markers go first: a revision stops being ready before its files go.
    paths = (*inst.other_markers, *inst.superseded)
    return [Eviction(spec.repo, spec.layout, Kind.REVISION, paths, allocated(inst.superseded), why, current)]
