"""The preload use case: spec -> plan -> transfer -> publish, under the model's lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from agent import log, retry
from agent.errors import DeadlineExceeded, PreloadError, UsageError
from agent.manifest import Manifest
from agent.sources import Snapshot, SourceFactory
from agent.spec import ModelSpec
from agent.store import Store, fmt_bytes
from agent.transfer import Progress, Transfer, TransferOptions


@dataclass(frozen=True)
class PreloadOptions:
    """Everything about how (not what) to preload."""

    max_workers: int = 16
    chunk_size: int = 0  # 0: chosen per file by the transfer
    timeout: float = 0.0  # whole operation; 0 = no limit
    refresh: bool = False
    progress_interval: float = 5.0
    retry: retry.RetryPolicy = field(default_factory=retry.RetryPolicy)
    cancel: threading.Event | None = field(default=None, compare=False)
    drop_cache: bool = False  # drop written pages from the page cache (pod memory limits)


@dataclass(frozen=True)
class PreloadResult:
    """What a preload produced."""

    manifest: Manifest
    path: Path
    fetched_bytes: int
    seconds: float
    already_complete: bool


def preload(
    spec: ModelSpec,
    dest: Path,
    sources: Sequence[SourceFactory],
    opts: PreloadOptions = PreloadOptions(),
    progress: Progress | None = None,
) -> PreloadResult:
    """Make `spec` ready under `dest`; fast and offline when it already is."""
    started = time.monotonic()
    store = Store(dest)
    logger = log.get().bind(repo=spec.repo, revision=spec.revision, layout=spec.layout.value)
    if not opts.refresh and (m := store.ready(spec)) is not None:
        return _done(logger, store, spec, m, 0, started, already=True)
    store.prepare()
    deadline = started + opts.timeout if opts.timeout else None
    last_note = [0.0]

    def on_wait(waited: float) -> None:
        if waited - last_note[0] >= 10 or not last_note[0]:
            last_note[0] = waited or 0.001
            logger.info("waiting_for_lock", waited_s=round(waited, 1), reason="another preload holds it")

    with store.lock(spec, deadline=deadline, on_wait=on_wait) as got:
        if not got:
            raise DeadlineExceeded(f"timed out waiting for another preload of {spec.repo} to finish")
        # Whoever held the lock before us may have finished the job.
        if not opts.refresh and (m := store.ready(spec)) is not None:
            return _done(logger, store, spec, m, 0, started, already=True)
        progress = progress or Progress()
        m = _fetch(spec, store, sources, opts, deadline, progress, logger)
        path = store.publish(spec, m)
        store.remove_staging(spec)
    return _done(logger, store, spec, m, progress.fetched, started, already=False, path=path)


def _fetch(
    spec: ModelSpec,
    store: Store,
    factories: Sequence[SourceFactory],
    opts: PreloadOptions,
    deadline: float | None,
    progress: Progress,
    logger: Any,
) -> Manifest:
    """Try each source in order; the last one's error is the one reported."""
    policy = replace(opts.retry, deadline=deadline)
    error: PreloadError | None = None
    for factory in factories:
        source = factory()
        try:
            snap = retry.call(partial(source.snapshot, spec), policy, what=f"listing {spec.repo}")
            snap = _select(spec, snap)
            begun = time.time()
            placements = store.placements(spec, snap.commit, snap.files)
            store.check_space(Transfer.pending_bytes(placements))
            logger.info(
                "transfer_start",
                source=snap.source,
                commit=snap.commit,
                files=len(snap.files),
                bytes=sum(f.size for f in snap.files),
            )
            topts = TransferOptions(
                max_workers=opts.max_workers,
                chunk_size=snap.chunk_size or opts.chunk_size,
                retry=policy,
                progress_interval=opts.progress_interval,
                deadline=deadline,
                cancel=opts.cancel,
                drop_cache=opts.drop_cache,
            )
            Transfer(source, spec, snap, topts, progress).run(placements, store.published_files(spec))
            return Manifest(
                repo=spec.repo,
                revision=spec.revision,
                commit=snap.commit,
                layout=spec.layout.value,
                source=snap.source,
                files=snap.files,
                started_at=begun,
                completed_at=time.time(),
                endpoint=snap.endpoint,
                hash_origin=snap.hash_origin,
            )
        except PreloadError as exc:
            error = exc
            if len(factories) > 1:
                logger.warning("source_failed", source=getattr(source, "name", "?"), error=str(exc))
        finally:
            source.close()
    assert error is not None
    raise error


def _select(spec: ModelSpec, snap: Snapshot) -> Snapshot:
    wanted = set(spec.files.select(f.path for f in snap.files))
    if not wanted:
        raise UsageError(f"no files of {spec.repo}@{snap.commit[:12]} match the include/exclude filters")
    return replace(snap, files=tuple(f for f in snap.files if f.path in wanted))


def _done(
    logger: Any,
    store: Store,
    spec: ModelSpec,
    m: Manifest,
    fetched: int,
    started: float,
    *,
    already: bool,
    path: Path | None = None,
) -> PreloadResult:
    seconds = time.monotonic() - started
    path = path or store.model_path(spec, m.commit)
    logger.info(
        "preload_complete",
        commit=m.commit,
        path=str(path),
        files=len(m.files),
        bytes=m.total_bytes,
        fetched_bytes=fetched,
        size=fmt_bytes(m.total_bytes),
        seconds=round(seconds, 3),
        mb_per_s=round(fetched / seconds / 1e6, 1) if seconds > 0 and fetched else 0.0,
        already_complete=already,
    )
    return PreloadResult(m, path, fetched, seconds, already)
