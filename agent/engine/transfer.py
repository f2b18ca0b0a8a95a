"""Parallel, ranged, resumable fetching with hashing as bytes arrive: the orchestration.

A file is cut into chunks (job.py). Each file starts as one sequential stream, chunk after
chunk, hashed in memory as it arrives (hashing.py). When more connections raise the rate (a
CDN capping single streams), idle workers take chunks from the far end of the files
(splitter.py); those go through the page cache and are hashed from there once the hash
frontier reaches them. Bytes reach the disk in diskio.py. Each chunk's progress is journaled
every JOURNAL_EVERY bytes, so a killed process loses little per connection. Only a file whose
hash matches is committed into place (the store's `Ingest`); a mismatch is refetched a bounded
number of times.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent import crashpoints, log, retry
from agent.buffers import DIRECT_ALIGN
from agent.engine import hashing
from agent.engine.diskio import stream_buffered, stream_direct
from agent.engine.job import JOURNAL_EVERY, Job
from agent.engine.plan import group, present, same_size
from agent.engine.progress import Progress, ProgressReporter
from agent.engine.sharing import Requests, Shelf
from agent.engine.splitter import SPLIT_TICK, Splitter, auto_chunk_size, host_slots
from agent.errors import DeadlineExceeded, IntegrityError, PreloadError, Throttled, TransientError
from agent.sources.base import Block, HashFeedback, Layered, Snapshot, Source
from agent.spec import ModelSpec
from agent.store import Placement
from agent.store.fs import PendingDirs
from agent.store.ingest import link

# Pieces a node keeps in flight when its source has peers in front (a Layered source). Every
# node works on about the same pieces (walk, in _round), so the origin's link is split over
# about this many at once: enough that a node takes a whole link's worth from pieces that each
# trickle in at a share of the origin's rate, few enough that each piece still arrives quickly
# (8 MiB at 50/16 MB/s: under 3 s, far from a peer's stall timeout).
PEER_PIECES_IN_FLIGHT = 16

__all__ = ["Cancelled", "Progress", "Transfer", "TransferOptions"]


def next_piece(jobs: list[Job]) -> tuple[Job, int] | None:
    """The first chunk nobody has taken, in the order of `jobs` (claimed for the caller)."""
    for job in jobs:
        if job.chunks and (idx := job.claim_next()) is not None:
            return job, idx
    return None


class Cancelled(PreloadError):
    """The caller asked us to stop (SIGTERM in the agent)."""


@dataclass(frozen=True)
class TransferOptions:
    """Knobs for one transfer."""

    max_workers: int = 128  # the most connections; the splitter settles on how many help
    max_host_connections: int = 0  # across every transfer in the process to one host; 0: max_workers
    chunk_size: int = 0  # 0: auto_chunk_size
    retry: retry.RetryPolicy = field(default_factory=retry.RetryPolicy)
    verify_attempts: int = 2
    progress_interval: float = 5.0
    deadline: float | None = None
    cancel: threading.Event | None = None
    drop_cache: bool = False
    shelf: Shelf | None = None  # where peers find the files being assembled (the agent's)


class Transfer:
    """Fetch a set of placements from one source."""

    def __init__(
        self,
        source: Source,
        spec: ModelSpec,
        snap: Snapshot,
        opts: TransferOptions,
        progress: Progress,
    ) -> None:
        self.source = source
        # Chunks fetched because a peer asked go to the origin itself: never to another peer.
        self._origin: Source = source.origin if isinstance(source, Layered) else source
        self.spec = spec
        self.snap = snap
        self.opts = opts
        self.progress = progress
        self._stop = threading.Event()
        self._dirs = PendingDirs()
        self._model_bytes = 0
        # Connections to the source's host, counted with the process's other transfers.
        self._slots = host_slots(
            f"{snap.source} {snap.endpoint}", opts.max_host_connections or opts.max_workers
        )
        self._split = Splitter(opts.max_workers, progress, slots=self._slots)  # one per round (see _round)
        self._log = log.get()
        self._requests = Requests()  # chunks peers asked for (with a shelf)

    def run(self, placements: list[Placement], reuse: Mapping[str, Path] | None = None) -> None:
        """Fetch everything not yet in place; hash mismatches are refetched a bounded number of times.

        `reuse` maps content hashes to verified files already published (an older revision):
        those are linked, not fetched. Directories are fsynced once, after the last commit.
        """
        groups = group(placements)
        todo: list[list[Placement]] = []
        for members in groups.values():
            have = next((p.final for p in members if present(p)), None)
            if have is None and reuse:
                have = same_size(reuse.get(members[0].file.digest.hex), members[0].file.size)
            if have is None:
                todo.append(members)
                continue
            for p in members:
                if not present(p):
                    link(have, p.final, self._dirs)
        self._model_bytes = sum(g[0].file.size for g in groups.values())
        self.progress.files_total = len(groups)
        self.progress.files_done = len(groups) - len(todo)
        self.progress.total = sum(g[0].file.size for g in groups.values())
        self.progress.done = self.progress.total - sum(g[0].file.size for g in todo)
        try:
            with ProgressReporter(self.progress, self.opts.progress_interval, self.spec.repo):
                self._rounds(groups, todo)
        finally:
            self._stop.set()

    def _rounds(self, groups: Mapping[Path, list[Placement]], todo: list[list[Placement]]) -> None:
        for attempt in range(1, self.opts.verify_attempts + 1):
            failed = self._round(todo)
            if not failed:
                break
            names = ", ".join(j.file.path for j in failed)
            if attempt == self.opts.verify_attempts:
                raise IntegrityError(
                    f"hash mismatch after {attempt} attempts: {names} "
                    f"(source {self.snap.source} keeps sending bytes that do not match the listing)"
                )
            self._log.warning("hash_mismatch", files=names, action="refetching", attempt=attempt)
            todo = [groups[j.part] for j in failed]
        crashpoints.reached("before_fsync_dirs")
        self._dirs.sync()

    def _chunk_size(self, size: int) -> int:
        if self.opts.chunk_size:
            return self.opts.chunk_size
        return auto_chunk_size(size, self._model_bytes, self.opts.max_workers)

    def _round(self, groups: list[list[Placement]]) -> list[Job]:
        """One pass over `groups`; the jobs whose hash did not match (already discarded)."""
        # Largest first: the longest streams start at once and small files fill in around them.
        # Ties by path: with peers, every node walks the files in the same order.
        ordered = sorted(groups, key=lambda g: (-g[0].file.size, g[0].file.path))
        jobs = [
            Job(g[0].file, g[0].part, [p.final for p in g], self._chunk_size(g[0].file.size)) for g in ordered
        ]
        fixed = PEER_PIECES_IN_FLIGHT if isinstance(self.source, Layered) else None
        self._split = Splitter(self.opts.max_workers, self.progress, slots=self._slots, fixed=fixed)
        return _Round(self, jobs, self._split).run()

    def _pulled(self, job: Job, idx: int) -> None:
        """Fetch a chunk a peer asked for from the origin, briefly: when the origin fails, the
        chunk goes back to a worker of our own, which may find it elsewhere (and retries as
        long as any chunk would) rather than failing the whole transfer for a peer's sake."""
        try:
            self._chunk(job, idx, helper=True, origin=True, attempts=2)
        except TransientError as exc:
            self._log.info("peer_request_failed", file=job.file.path, chunk=idx, error=str(exc))
            self._requests.give_back(job, idx)

    def check(self) -> None:
        """Raise if the transfer must stop: an error elsewhere, a cancel request, the deadline."""
        if self._stop.is_set():
            raise Cancelled("transfer stopped")
        if self.opts.cancel is not None and self.opts.cancel.is_set():
            raise Cancelled("cancelled")
        if self.opts.deadline is not None and time.monotonic() > self.opts.deadline:
            raise DeadlineExceeded("timed out before the transfer finished")

    def _chunk(
        self, job: Job, idx: int, helper: bool = False, origin: bool = False, attempts: int | None = None
    ) -> None:
        """Fetch one chunk. The file's own stream writes with O_DIRECT and hashes in memory; a
        helper's chunk is hashed later, once the hash frontier reaches it, so it goes through
        the page cache and is hashed from there rather than read back from the disk."""
        self.check()
        if idx < 0:  # an empty file
            self._commit(job)
            return
        if not job.open():
            return  # finished meanwhile (this chunk was already complete)
        start, end = job.chunks[idx]
        self.progress.resumed(job.written[idx])

        def attempt() -> None:
            self.check()
            pos = start + job.written[idx]
            if pos >= end:
                return
            asked = time.monotonic()
            try:
                source = self._origin if origin else self.source
                with source.open_range(self.spec, self.snap, job.file, pos, end) as stream:
                    self._split.latency(time.monotonic() - asked)
                    # With peers, what lands is soon read again for them: keep it in the page cache.
                    direct = job.ingest.dfd is not None and self.opts.shelf is None
                    if direct and pos % DIRECT_ALIGN == 0 and not helper:
                        stream_direct(job, idx, stream, pos, self)
                    else:
                        job.cached[idx] = True
                        stream_buffered(job, idx, stream, pos, self, self.opts.drop_cache)
            except Throttled:
                self._split.throttled()
                raise
            job.record(idx)

        policy = self.opts.retry if attempts is None else replace(self.opts.retry, attempts=attempts)
        retry.call(attempt, policy, what=f"{job.file.path}[{idx}]")
        if hashing.advance(job, self.check):
            self._commit(job)

    def landed(self, job: Job, idx: int, block: Block, end: int, since_journal: int) -> int:
        """Account for a block now written, ending at `end`; returns bytes not yet journaled."""
        hashing.fold(job, idx, block, end - len(block), self.check)
        job.written[idx] = end - job.chunks[idx][0]
        self.progress.add(len(block))
        since_journal += len(block)
        if since_journal >= JOURNAL_EVERY:
            job.record(idx)
            return 0
        return since_journal

    def _commit(self, job: Job) -> None:
        if job.commit(self._dirs, self.opts.drop_cache):
            self.progress.file_finished()


class _Round:
    """One pass of a transfer over its files: the workers, and the loop that starts them (the
    files' streams and the splitter's helpers, or with peers the walkers; chunks peers asked for)."""

    def __init__(self, transfer: Transfer, jobs: list[Job], split: Splitter) -> None:
        self.t = transfer
        self.jobs = jobs
        self.split = split
        self.failed: list[Job] = []  # hash mismatches (discarded)
        self._failed_lock = threading.Lock()
        self.own: set[Future[None]] = set()  # this node's streams and helpers (not peers' pulls)

    def guarded(self, job: Job, idx: int | None, origin: bool = False) -> None:
        t = self.t
        try:
            if idx is not None and origin:
                t._pulled(job, idx)
            elif idx is not None:
                t._chunk(job, idx, helper=True)
            elif not job.chunks:
                t._chunk(job, -1)
            else:  # the file's sequential stream: chunk after chunk until a helper's
                while (nxt := job.claim_next()) is not None:
                    t._chunk(job, nxt)
        except IntegrityError:
            if isinstance(t.source, HashFeedback):
                t.source.hash_failed(job.file, job.part)
            job.discard()
            with self._failed_lock:
                if job not in self.failed:
                    self.failed.append(job)

    def task(self, job: Job, idx: int | None) -> None:
        """A file's stream (`idx` None) or a helper."""
        with self._connection():
            self.guarded(job, idx)
            # A helper keeps its connection (and thread) for the next chunk while the count holds.
            while idx is not None and (nxt := self.split.next_chunk(self.jobs, len(self.own))):
                job, idx = nxt
                self.guarded(job, idx)

    def walk(self) -> None:
        """Pieces from peers: every worker takes the first piece nobody has taken, the files in
        one order that every node shares. The nodes then work on the same few pieces at a time,
        each fetched from the origin by its owner once and streamed to the others as it
        arrives; pieces taken in different places on each node would split the origin's link
        over many more pieces, each arriving too slowly to feed anyone."""
        with self._connection():
            while self.split.keep(len(self.own)) and (pick := next_piece(self.jobs)) is not None:
                self.guarded(*pick)

    def pulled(self, job: Job, idx: int) -> None:
        """A chunk a peer is waiting for: its own thread, and no wait for a host slot. Were it
        queued behind this node's own fetches (which may wait on that peer's chunks in turn),
        both sides would stall until a read timed out."""
        self.t.progress.connection(+1)
        try:
            self.guarded(job, idx, origin=True)
        finally:
            self.t.progress.connection(-1)

    @contextmanager
    def _connection(self) -> Iterator[None]:
        t = self.t
        t._slots.take_one(t.check)
        t.progress.connection(+1)
        try:
            yield
        finally:
            t.progress.connection(-1)
            t._slots.give()

    def run(self) -> list[Job]:
        """Run the round; the jobs whose hash did not match. Raises the first real error."""
        t, jobs, split, own = self.t, self.jobs, self.split, self.own
        futures: list[Future[None]] = []
        shared = t._requests.share(t.opts.shelf, jobs)
        try:
            with (
                ThreadPoolExecutor(t.opts.max_workers, thread_name_prefix="fetch") as pool,
                ThreadPoolExecutor(t.opts.max_workers, thread_name_prefix="pull") as for_peers,
            ):
                if split.fixed:
                    futures += [pool.submit(self.task, job, None) for job in jobs if not job.chunks]
                    futures += [pool.submit(self.walk) for _ in range(split.target)]
                else:
                    futures += [pool.submit(self.task, job, None) for job in jobs]
                own.update(futures)
                pending: set[Future[None]] = set(futures)
                while True:
                    for job, idx, origin in t._requests.drain():
                        if origin:
                            futures.append(for_peers.submit(self.pulled, job, idx))
                        else:
                            futures.append(pool.submit(self.task, job, idx))
                            own.add(futures[-1])
                        pending.add(futures[-1])
                    if not pending:
                        if t._requests.close_if_idle():
                            break
                        continue
                    done, pending = wait(pending, timeout=SPLIT_TICK, return_when=FIRST_EXCEPTION)
                    own -= done
                    if any(f.exception() is not None for f in done):
                        t._stop.set()
                        for f in pending:
                            f.cancel()
                        break
                    for job, idx in split.helpers(jobs, len(own)):
                        futures.append(pool.submit(self.task, job, idx))
                        own.add(futures[-1])
                        pending.add(futures[-1])
        finally:
            t._requests.unshare(t.opts.shelf, shared)
        errors = [e for f in futures if not f.cancelled() and (e := f.exception()) is not None]
        # The first real cause, not the Cancelled it triggered in the other workers.
        error = next((e for e in errors if not isinstance(e, Cancelled)), errors[0] if errors else None)
        for job in jobs:
            job.close()
        if error is not None:
            raise error
        return self.failed
