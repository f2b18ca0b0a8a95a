"""The preload use case: spec -> plan -> transfer -> publish, under the model's lock."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from agent import log, retry
from agent.engine import computed
from agent.engine.plan import plan
from agent.engine.progress import Progress
from agent.engine.sharing import Shelf
from agent.engine.transfer import Cancelled, Transfer, TransferOptions
from agent.errors import DeadlineExceeded, PreloadError
from agent.manifest import Manifest, RemoteFile
from agent.sources.base import ByteCounting, Snapshot, Source, SourceFactory
from agent.spec import ModelSpec
from agent.store import Placement, Store
from agent.units import fmt_bytes


@dataclass(frozen=True)
class PreloadOptions:
    """Everything about how (not what) to preload."""

    max_workers: int = 128  # the most connections per download (the splitter settles below it)
    max_host_connections: int = 0  # the most to one host across the process's downloads; 0: max_workers
    chunk_size: int = 0  # 0: chosen per file by the transfer
    timeout: float = 0.0  # whole operation; 0 = no limit
    refresh: bool = False
    progress_interval: float = 5.0
    retry: retry.RetryPolicy = field(default_factory=retry.RetryPolicy)
    cancel: threading.Event | None = field(default=None, compare=False)
    drop_cache: bool = False  # drop written pages from the page cache (pod memory limits)
    # Told the resolved snapshot (commit, source) before its files are fetched; the agent
    # reports the commit while the download runs.
    on_snapshot: Callable[[Snapshot], None] | None = field(default=None, compare=False)
    shelf: Shelf | None = field(default=None, compare=False)  # files in progress, for peers


@dataclass(frozen=True)
class PreloadResult:
    """What a preload produced."""

    manifest: Manifest
    path: Path
    fetched_bytes: int
    seconds: float
    already_complete: bool
    connections: int = 0  # the most connections the transfer ran at once


def preload(
    spec: ModelSpec,
    dest: Path,
    sources: Sequence[SourceFactory],
    opts: PreloadOptions = PreloadOptions(),
    progress: Progress | None = None,
) -> PreloadResult:
    """Make `spec` ready under `dest`; fast and offline when it already is.

    Everything that can fail before a byte is worth writing (resolving, listing, selecting,
    the free-space check) runs before DIR is touched: a bad id, a gated repo, a hostile
    listing or a full disk leaves DIR as it was. Then the model's lock is taken, the files a
    check recorded as bad are deleted (so they are refetched, and only they) and the transfer
    runs; sources are tried in order, the last one's error is the one reported.
    """
    started = time.monotonic()
    store = Store(dest)
    logger = log.get().bind(repo=spec.repo, revision=spec.revision, layout=spec.layout.value)
    if not opts.refresh and (m := store.ready(spec)) is not None:
        return _done(logger, store, spec, m, 0, started, already=True)
    store.check_dest()
    deadline = started + opts.timeout if opts.timeout else None
    policy = replace(opts.retry, deadline=deadline)
    progress = progress or Progress()
    error: PreloadError | None = None
    with contextlib.ExitStack() as held:
        locked = False
        if store.is_locked(spec):
            # Another process is at it (pods starting together): wait for it rather than
            # list the hub too; it has most likely made the model ready by then.
            _take_lock(held, store, spec, deadline, logger)
            locked = True
            if not opts.refresh and (m := store.ready(spec)) is not None:
                return _done(logger, store, spec, m, 0, started, already=True)
        for factory in sources:
            source = factory()
            try:
                listing = retry.call(partial(source.snapshot, spec), policy, what=f"listing {spec.repo}")
                snap, skipped, placements = plan(spec, store, listing)
                if not locked:
                    store.prepare()
                    _take_lock(held, store, spec, deadline, logger)
                    locked = True
                    # Whoever held the lock before us may have finished the job, or published
                    # this commit with other files meanwhile.
                    if not opts.refresh and (m := store.ready(spec)) is not None:
                        return _done(logger, store, spec, m, 0, started, already=True)
                    snap, skipped, placements = plan(spec, store, listing)
                if opts.on_snapshot is not None:
                    opts.on_snapshot(snap)
                m = _transfer(spec, store, source, snap, skipped, placements, opts, policy, progress, logger)
                path = store.publish(spec, m)
                store.remove_staging(spec)
                return _done(
                    logger,
                    store,
                    spec,
                    m,
                    progress.fetched,
                    started,
                    already=False,
                    path=path,
                    connections=progress.peak_connections,
                    by_source=source.bytes_by_source() if isinstance(source, ByteCounting) else {},
                )
            except (DeadlineExceeded, Cancelled):
                raise  # no other source can do better against the same clock or a stop request
            except PreloadError as exc:
                error = exc
                if len(sources) > 1:
                    logger.warning("source_failed", source=getattr(source, "name", "?"), error=str(exc))
            finally:
                source.close()
    assert error is not None
    raise error


def _take_lock(
    held: contextlib.ExitStack, store: Store, spec: ModelSpec, deadline: float | None, logger: log.Logger
) -> None:
    """Hold the model's lock until `held` closes, logging the wait at once, then every 10 s;
    then delete what checks recorded as bad, which is only safe to do under the lock."""
    last = [0.0]

    def on_wait(waited: float) -> None:
        if waited - last[0] >= 10 or not last[0]:
            last[0] = waited or 0.001
            logger.info("waiting_for_lock", waited_s=round(waited, 1), reason="another preload holds it")

    if not held.enter_context(store.lock(spec, deadline, on_wait)):
        raise DeadlineExceeded(f"timed out waiting for another preload of {spec.repo} to finish")
    dropped = store.drop_damaged(spec)
    if dropped:
        logger.info("damaged_files_removed", files=dropped, action="refetch")


def _transfer(
    spec: ModelSpec,
    store: Store,
    source: Source,
    snap: Snapshot,
    skipped: tuple[RemoteFile, ...],
    placements: list[Placement],
    opts: PreloadOptions,
    policy: retry.RetryPolicy,
    progress: Progress,
    logger: log.Logger,
) -> Manifest:
    """Fetch and verify every selected file; the manifest to publish."""
    begun = time.time()
    logger.info(
        "transfer_start",
        source=snap.source,
        commit=snap.commit,
        files=len(snap.files),
        bytes=sum(f.size for f in snap.files),
    )
    topts = TransferOptions(
        max_workers=opts.max_workers,
        max_host_connections=opts.max_host_connections,
        chunk_size=snap.chunk_size or opts.chunk_size,
        retry=policy,
        progress_interval=opts.progress_interval,
        deadline=policy.deadline,
        cancel=opts.cancel,
        drop_cache=opts.drop_cache,
        shelf=opts.shelf,
    )
    if computed.pending(snap):  # hashes known once copied: staged first, placed after
        placements = computed.staged(store, spec, snap)
    Transfer(source, spec, snap, topts, progress).run(placements, store.published_files(spec))
    if computed.pending(snap):
        snap = computed.settle(store, spec, snap)
    return Manifest(
        repo=spec.repo,
        revision=spec.revision,
        commit=snap.commit,
        layout=spec.layout.value,
        source=snap.source,
        files=snap.files,
        skipped=skipped,
        started_at=begun,
        completed_at=time.time(),
        endpoint=snap.endpoint,
        hash_origin=snap.hash_origin,
    )


def _done(
    logger: log.Logger,
    store: Store,
    spec: ModelSpec,
    m: Manifest,
    fetched: int,
    started: float,
    *,
    already: bool,
    path: Path | None = None,
    connections: int = 0,
    by_source: dict[str, int] | None = None,
) -> PreloadResult:
    seconds = time.monotonic() - started
    path = path or store.reader_path(spec, m)
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
        connections=connections,
        **(by_source or {}),
    )
    return PreloadResult(m, path, fetched, seconds, already, connections)
