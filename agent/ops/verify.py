"""`preload verify`: is a published model still what its marker says, and repair it if not.

Fast mode trusts sizes and modification times: a file is re-hashed only when it changed after
the model was published (or last verified sound). Deep mode re-hashes every file, files in
parallel (hashlib releases the GIL). Either way a file an earlier check recorded as bad (the
store's damage record) is corrupt until repaired, whatever its size and mtime say.

`record` writes a finding down: the last verification for `status`, and what was bad as the
store's damage record, which every reader honours. Repair is a preload pinned to the published
commit: under the lock it deletes exactly the recorded files, refetches them and republishes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agent import log
from agent.engine.preload import PreloadOptions, preload
from agent.errors import IntegrityError, Interrupted, NotReadyError, PreloadError
from agent.integrity import hash_file
from agent.manifest import Manifest, RemoteFile
from agent.sources.base import SourceFactory
from agent.spec import COMMIT_RE, ModelSpec
from agent.store import Placement, Store, verified
from agent.store.damaged import Damage
from agent.store.verified import LastVerified

# Marker timestamps are kept to the millisecond and file systems round mtimes: allow for both.
MTIME_SLACK = 1.0
HASH_WORKERS = 4


@dataclass
class VerifyReport:
    """What one verification found; `sound` decides the exit code."""

    repo: str
    layout: str
    deep: bool
    marker: bool = False
    problem: str | None = None  # why the model cannot be checked at all (no marker, ...)
    revision: str | None = None
    commit: str | None = None
    hash_origin: str | None = None
    files: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)  # modified after publish, content intact
    repaired: list[str] = field(default_factory=list)
    hashed_bytes: int = 0
    seconds: float = 0.0

    @property
    def sound(self) -> bool:
        """A valid marker and every file present, intact, and nothing else in the model."""
        return self.marker and not (self.missing or self.corrupt or self.extra)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"sound": self.sound, **asdict(self)}

    def summary(self) -> str:
        """One line for humans."""
        if not self.marker:
            return f"{self.repo} ({self.layout}): not ready: {self.problem}"
        state = "sound" if self.sound else "NOT sound"
        mode = "deep" if self.deep else "fast"
        counts = f"{len(self.missing)} missing, {len(self.corrupt)} corrupt, {len(self.extra)} extra"
        fixed = f", repaired {len(self.repaired)}" if self.repaired else ""
        return (
            f"{self.repo}@{(self.commit or '')[:12]} ({self.layout}): {state} ({mode}: {self.files} files, "
            f"{counts}{fixed})"
        )

    def error(self) -> PreloadError:
        """The exit-code-carrying error for an unsound report: damage is INTEGRITY, absence NOT_READY."""
        if self.corrupt or self.extra:
            return IntegrityError(self.summary())
        return NotReadyError(self.summary())


def verify(
    store: Store,
    spec: ModelSpec,
    *,
    deep: bool = False,
    revision: str | None = None,
    workers: int = HASH_WORKERS,
    rehash: bool = True,
    cancel: threading.Event | None = None,
) -> VerifyReport:
    """Check a published model; `revision` (if given) must be the one published.

    `rehash=False` only stats (for `status`): files modified since publish count as corrupt.
    Raises Interrupted soon after `cancel` is set (between files, and between reads of one).
    """
    started = time.monotonic()
    report = VerifyReport(spec.repo, spec.layout.value, deep)
    m = store.read_marker(spec)
    if m is None:
        busy = " (a transfer holds the lock)" if store.busy(spec) else ""
        report.problem = f"no valid completion marker{busy}"
        return report
    report.revision, report.commit, report.hash_origin = m.revision, m.commit, m.hash_origin
    report.files, report.bytes = len(m.files), m.total_bytes
    if revision is not None and revision not in (m.revision, m.commit):
        report.problem = f"published revision is {m.revision} ({m.commit[:12]}), not {revision}"
        return report
    report.marker = True
    trusted_until = max(m.completed_at, _sound_since(store, spec, m))
    recorded = store.damage(spec, m.commit)
    to_hash: list[Placement] = []
    for p in _unique(store.placements(spec, m.commit, m.files)):
        if cancel is not None and cancel.is_set():
            raise Interrupted(f"verification of {spec.repo} stopped")
        try:
            st = p.final.stat()
        except OSError:
            report.missing.append(p.file.path)
            continue
        if st.st_size != p.file.size or (recorded is not None and recorded.condemns(p.file.path)):
            report.corrupt.append(p.file.path)
        elif deep or st.st_mtime > trusted_until + MTIME_SLACK:
            to_hash.append(p)
    layout = store.layout(spec)
    report.missing += layout.broken_pointers(spec, m)
    report.extra = layout.extra_files(spec, m)
    if rehash:
        bad = _hash_check(to_hash, workers, cancel)
        report.corrupt += bad
        if not deep:
            report.touched = [p.file.path for p in to_hash if p.file.path not in bad]
        report.hashed_bytes = sum(p.file.size for p in to_hash)
    else:
        report.corrupt += [p.file.path for p in to_hash]
    for names in (report.missing, report.corrupt, report.extra):
        names[:] = sorted(set(names))
    report.seconds = round(time.monotonic() - started, 3)
    return report


def record(store: Store, spec: ModelSpec, report: VerifyReport, found_by: str = "verify") -> None:
    """Remember when this commit was last verified and, if it is not sound, what was bad, so every
    reader sees the model as damaged until a repair (a read-only DIR skips both, with a warning).

    The damage is written first: it is what readers act on.
    """
    if not report.marker or report.commit is None:
        return
    now = time.time()
    m = store.read_marker(spec)
    try:
        if not report.sound and m is not None and m.commit == report.commit:
            # Only the manifest's files: a broken `dir` link is no file, and publishing fixes it.
            listed = {f.path for f in m.files}
            bad = tuple(sorted(n for n in {*report.missing, *report.corrupt} if n in listed))
            if bad or report.extra:
                how = f"{found_by} ({'deep' if report.deep else 'fast'})"
                store.record_damage(spec, Damage(report.commit, bad, tuple(report.extra), how, now))
        verified.record(store.root, spec, LastVerified(report.commit, now, report.deep, report.sound))
    except OSError as exc:
        log.get().warning("verify_not_recorded", repo=spec.repo, error=exc.strerror)


def repair(
    store: Store,
    spec: ModelSpec,
    report: VerifyReport,
    sources: Sequence[SourceFactory],
    opts: PreloadOptions,
) -> VerifyReport:
    """Refetch the bad files of `report` from `sources` and republish; then re-check.

    The finding is recorded first (if the caller has not): the preload deletes exactly the
    recorded files under the model's lock, so a repair that fails or is killed leaves the model
    not ready rather than trusted again.
    """
    m = store.read_marker(spec)
    if m is None or report.sound or report.commit != m.commit:
        return report
    bad = [*report.missing, *report.corrupt]
    record(store, spec, report)
    # Pinned to the published commit, so a branch that moved on meanwhile does not turn a repair
    # into an upgrade; a source-computed id is no hub revision, so that one goes by its branch.
    fetch_spec = replace(spec, revision=m.commit) if COMMIT_RE.match(m.commit) else spec
    result = preload(fetch_spec, store.root, sources, opts)
    if fetch_spec is not spec:
        with store.lock(spec):
            store.publish(spec, replace(result.manifest, revision=m.revision))
    after = verify(store, spec, deep=False)
    after.deep = report.deep
    after.repaired = sorted({*bad, *report.extra})
    log.get().info(
        "verify_repaired", repo=spec.repo, files=after.repaired, fetched_bytes=result.fetched_bytes
    )
    return after


def _unique(placements: list[Placement]) -> list[Placement]:
    """hf-cache paths with the same content share one blob: check it once."""
    seen: set[Path] = set()
    out = []
    for p in placements:
        if p.final not in seen:
            seen.add(p.final)
            out.append(p)
    return out


def _hash_check(
    placements: list[Placement], workers: int, cancel: threading.Event | None = None
) -> list[str]:
    def bad(p: Placement) -> bool:
        f: RemoteFile = p.file
        try:
            return hash_file(p.final, f.digest.algo, f.size, cancel=cancel).hexdigest() != f.digest.hex
        except OSError:
            return True

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="verify") as pool:
        flags = list(pool.map(bad, placements))
    return [p.file.path for p, is_bad in zip(placements, flags, strict=True) if is_bad]


def _sound_since(store: Store, spec: ModelSpec, m: Manifest) -> float:
    last = verified.last_verified(store.root, spec)
    return last.at if last is not None and last.sound and last.commit == m.commit else 0.0
