"""`preload verify`: is a published model still what its marker says, and repair it if not.

Fast mode trusts sizes and modification times: a file is re-hashed only when it changed after
the model was published (or last verified sound). Deep mode re-hashes every file, files in
parallel (hashlib releases the GIL). Repair deletes only the bad files and refetches them
through the normal preload path, pinned to the published commit, then republishes.
"""

from __future__ import annotations

import contextlib
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
    to_hash: list[Placement] = []
    for p in _unique(store.placements(spec, m.commit, m.files)):
        if cancel is not None and cancel.is_set():
            raise Interrupted(f"verification of {spec.repo} stopped")
        try:
            st = p.final.stat()
        except OSError:
            report.missing.append(p.file.path)
            continue
        if st.st_size != p.file.size:
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


def record(store: Store, spec: ModelSpec, report: VerifyReport) -> None:
    """Remember when this commit was last verified (a read-only DIR just skips it)."""
    if not report.marker or report.commit is None:
        return
    last = LastVerified(report.commit, time.time(), report.deep, report.sound)
    try:
        verified.record(store.root, spec, last)
    except OSError as exc:
        log.get().warning("verify_not_recorded", repo=spec.repo, error=exc.strerror)


def repair(
    store: Store,
    spec: ModelSpec,
    report: VerifyReport,
    sources: Sequence[SourceFactory],
    opts: PreloadOptions,
) -> VerifyReport:
    """Delete the bad files of `report`, refetch them from `sources`, republish; then re-check."""

    m = store.read_marker(spec)
    if m is None or report.sound or report.commit != m.commit:
        return report
    bad = [*report.missing, *report.corrupt]
    with store.lock(spec):
        _delete(store, spec, m, set(bad), report.extra)
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


def _delete(store: Store, spec: ModelSpec, m: Manifest, bad: set[str], extra: list[str]) -> None:
    layout = store.layout(spec)
    for f in m.files:
        if f.path in bad:
            for path in layout.file_paths(spec, m.commit, f):
                _unlink(path)
    base = layout.files_dir(spec, m.commit)
    for rel in extra:
        _unlink(base / rel)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


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
