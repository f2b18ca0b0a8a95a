"""Parallel, ranged, resumable fetching with hashing as bytes arrive.

A file is cut into chunks. Each file starts as one sequential stream, chunk after chunk,
hashed in memory as it arrives. When more connections raise the rate (a CDN capping
single streams), idle workers take chunks from the far end of the files (`_Splitter`);
those go through the page cache and are hashed from there once the hash frontier reaches
them. Each chunk's progress is journaled every JOURNAL_EVERY bytes, so a killed process
loses little per connection. A large file's own stream is written with O_DIRECT: the page
cache is not filled (on a busy node, allocating it costs more than the disk I/O).
Only a file whose hash matches is renamed into place.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from agent import crashpoints, log, retry
from agent.buffers import DIRECT_ALIGN, READS, BufferPool
from agent.errors import DeadlineExceeded, DiskSpaceError, IntegrityError, PreloadError
from agent.integrity import Hasher
from agent.manifest import RemoteFile
from agent.sources.base import Block, Snapshot, Source
from agent.spec import ModelSpec
from agent.store import Placement
from agent.store.fs import fsync_dir, is_no_space, make_dirs, tmp_sibling

JOURNAL_EVERY = 256 << 10  # an append without fsync: cheap, and a kill -9 loses less per connection
JOURNAL_SUFFIX = ".journal"
MIN_CHUNK = 32 << 20  # below this a range costs more in requests than it gains in parallelism
DROP_LAG = 64 << 20  # pages this far behind the writer have likely been written back
DIRECT_MIN = 4 << 20  # files from this size are written with O_DIRECT
DIRECT_FLUSH = 512 << 10  # per write: large enough for the disk, small enough that a kill loses little
# Shared by every transfer in the process: the staging buffers of connections whose blocks
# cannot go to disk as they are, and the buffers of hash read-backs (one per file at most).
_STAGES = BufferPool(DIRECT_FLUSH)
_O_DIRECT = getattr(os, "O_DIRECT", 0)


SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


def start_writeback(fd: int | None, offset: int, length: int) -> None:
    """Start writing these dirty pages to disk now, without waiting: the disk stays busy during the
    transfer instead of absorbing gigabytes at the final fdatasync (the kernel would otherwise wait
    for 10% of RAM to be dirty)."""
    fn = _sync_file_range()
    if fn is not None and fd is not None:
        fn(fd, offset, length, SYNC_FILE_RANGE_WRITE)


class _Misaligned(Exception):
    """An O_DIRECT write refused for the buffer's address (nothing was written)."""


class Cancelled(PreloadError):
    """The caller asked us to stop (SIGTERM in the agent)."""


@dataclass(frozen=True)
class TransferOptions:
    """Knobs for one transfer."""

    max_workers: int = 16
    chunk_size: int = 0  # 0: auto_chunk_size
    retry: retry.RetryPolicy = field(default_factory=retry.RetryPolicy)
    verify_attempts: int = 2
    progress_interval: float = 5.0
    deadline: float | None = None
    cancel: threading.Event | None = None
    drop_cache: bool = False


@dataclass
class Progress:
    """Thread-safe counters, readable while a transfer runs."""

    total: int = 0
    done: int = 0
    fetched: int = 0
    files_total: int = 0
    files_done: int = 0
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int) -> None:
        """Count `n` bytes received."""
        with self._lock:
            self.done += n
            self.fetched += n

    def resumed(self, n: int) -> None:
        """Count `n` bytes found on disk from an earlier run."""
        with self._lock:
            self.done += n

    def file_finished(self) -> None:
        """Count one file published into place."""
        with self._lock:
            self.files_done += 1

    def rate(self) -> float:
        """Bytes per second received in this run."""
        elapsed = time.monotonic() - self.started
        return self.fetched / elapsed if elapsed > 0 else 0.0


def auto_chunk_size(size: int, total: int, workers: int) -> int:
    """Cut a file by its share of the connections: the files together get about `workers` chunks.

    Chunks are the units helpers can take when a file is split (and one request each for the
    sequential stream); a file whose share is under one connection is one chunk. Depends only
    on the model's file sizes, so a rerun cuts files the same way and resumes their journals.
    """
    share = workers * size // max(total, 1)
    count = max(1, min(share, -(-size // MIN_CHUNK)))
    mib = 1 << 20
    return max(mib, -(-size // count // mib) * mib)


def _journal_chunk_size(journal: Path, file: RemoteFile) -> int | None:
    """The range size an earlier run used for this file, so its journal stays valid."""
    try:
        with open(journal, encoding="ascii", errors="replace") as f:
            header = f.readline().split()
    except OSError:
        return None
    if header[:2] != ["v1", str(file.size)] or header[3:] != [file.digest.hex]:
        return None
    with contextlib.suppress(ValueError):
        first = int(header[2])
        return first if first > 0 else None
    return None


class _Job:
    """One file (by content) being assembled in staging."""

    def __init__(self, file: RemoteFile, part: Path, finals: list[Path], chunk_size: int) -> None:
        self.file = file
        self.part = part
        self.journal = part.with_name(part.name + JOURNAL_SUFFIX)
        self.finals = finals
        size = file.size
        chunk_size = _journal_chunk_size(self.journal, file) or chunk_size
        self.chunks = [(s, min(s + chunk_size, size)) for s in range(0, size, chunk_size)]
        self.written = [0] * len(self.chunks)
        self.fd: int | None = None
        self.dfd: int | None = None  # the same part file opened with O_DIRECT, where allowed
        self.direct_ok = True
        self.jfd: int | None = None
        self.hasher: Hasher = file.digest.hasher(size)
        self.hash_pos = 0  # bytes folded into the hasher, in order
        self.claimed = [False] * len(self.chunks)  # chunks a worker has taken
        self.cached = [False] * len(self.chunks)  # written through the page cache by this run
        self.finished = 0
        self.lock = threading.Lock()
        self.hash_lock = threading.Lock()
        self.resumed = 0

    @property
    def journaled(self) -> bool:
        return self.file.size > JOURNAL_EVERY

    def open(self) -> bool:
        """Open (or resume) the part file; idempotent. False once the file is finished (published):
        a worker arriving late must not recreate it."""
        with self.lock:
            if self.finished:
                return False
            if self.fd is not None:
                return True
            self.part.parent.mkdir(parents=True, exist_ok=True)
            header = f"v1 {self.file.size} {self.chunks[0][1] if self.chunks else 0} {self.file.digest.hex}\n"
            resumable = self.journaled and self.part.exists() and self._load_journal(header)
            if not resumable:
                self.written = [0] * len(self.chunks)
                with contextlib.suppress(FileNotFoundError):
                    self.journal.unlink()
            flags = os.O_RDWR | os.O_CREAT | (0 if resumable else os.O_TRUNC)
            self.fd = os.open(self.part, flags, 0o644)
            try:
                if self.file.size:
                    os.posix_fallocate(self.fd, 0, self.file.size)
            except OSError as exc:
                self.close()
                if is_no_space(exc):
                    raise DiskSpaceError(f"no space left for {self.file.path} on {self.part.parent}") from exc
                raise
            if _O_DIRECT and self.file.size >= DIRECT_MIN:
                with contextlib.suppress(OSError):  # EINVAL: the filesystem has no direct I/O
                    self.dfd = os.open(self.part, os.O_RDWR | _O_DIRECT)
            if self.journaled:
                self.jfd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                if not resumable:
                    os.write(self.jfd, header.encode())
            self.resumed = sum(self.written)
            return True

    def _load_journal(self, header: str) -> bool:
        try:
            lines = self.journal.read_text().splitlines()
        except OSError:
            return False
        if not lines or lines[0] + "\n" != header:
            return False
        for line in lines[1:]:
            try:
                idx_s, n_s = line.split()
                idx, n = int(idx_s), int(n_s)
            except ValueError:
                continue  # a torn last line from a kill mid-write
            if 0 <= idx < len(self.chunks):
                start, end = self.chunks[idx]
                self.written[idx] = max(self.written[idx], min(n, end - start))
        return True

    def claim_next(self) -> int | None:
        """The first chunk nobody has taken (the file's sequential stream)."""
        with self.lock:
            idx = next((i for i, taken in enumerate(self.claimed) if not taken), None)
            if idx is not None:
                self.claimed[idx] = True
            return idx

    def _complete(self, idx: int) -> bool:
        start, end = self.chunks[idx]
        return self.written[idx] >= end - start

    def claim_last(self) -> int | None:
        """The last chunk nobody has taken, if the sequential stream has already started
        (a helper works from the far end so the stream keeps hashing in memory)."""
        with self.lock:
            if not self.claimed or not self.claimed[0]:
                return None
            free = [i for i, taken in enumerate(self.claimed) if not taken and not self._complete(i)]
            idx = free[-1] if free else None
            if idx is not None:
                self.claimed[idx] = True
            return idx

    def unclaimed_bytes(self) -> int:
        """Bytes in chunks nobody has taken yet."""
        with self.lock:
            return sum(e - s - self.written[i] for i, (s, e) in enumerate(self.chunks) if not self.claimed[i])

    def record(self, idx: int) -> None:
        """Journal how far chunk `idx` has got."""
        if self.jfd is not None:
            os.write(self.jfd, f"{idx} {self.written[idx]}\n".encode())

    def close(self) -> None:
        """Close descriptors."""
        for fd in (self.fd, self.dfd, self.jfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.dfd = self.jfd = None

    def discard(self) -> None:
        """Delete the part file and journal (after a hash mismatch)."""
        self.close()
        for p in (self.part, self.journal):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _drop_behind(job: _Job, pos: int) -> None:
    """Start writeback of a streamed file and drop the pages well behind the writer.

    DONTNEED writes dirty pages back asynchronously and discards the clean ones, so the
    page cache a one-pass copy holds stays bounded instead of growing to the file's size.
    Only one-chunk files written through the page cache use this: chunked ones may be read back.
    Called each time the writer crosses a DROP_LAG boundary; the window two boundaries back
    (already asked to write back last time) is the one dropped.
    """
    assert job.fd is not None
    window = (pos // DROP_LAG - 2) * DROP_LAG
    if window >= 0:
        os.posix_fadvise(job.fd, window, 2 * DROP_LAG, os.POSIX_FADV_DONTNEED)


SPLIT_TICK = 0.3  # seconds between looks at whether more connections would help
SPLIT_GAIN = 1.5  # doubling the connections must raise the rate this much to double again
SPLIT_PROPORTIONAL = 1.8  # ... and this much to go straight to --max-workers


class _Splitter:
    """Adds ranged connections to files only while that raises the transfer's rate.

    Every file starts as one sequential stream, hashed in memory as it arrives. Where the
    rate is limited per connection (a CDN capping single streams), idle workers take chunks
    from the far end of the files with the most left, doubling the connections each tick
    while the rate keeps rising (all at once when it rose in proportion). Where the link,
    disk or CPU is the limit, more connections would only cost read-back hashing, so the
    first round that does not help ends the splitting for this transfer.
    """

    def __init__(self, max_workers: int, progress: Progress) -> None:
        self.max = max_workers
        self.progress = progress
        self.growing = True
        self._reset()

    def _reset(self) -> None:
        self.mark = (time.monotonic(), self.progress.fetched)
        self.warm = False  # the first tick after a reset covers connection set-up: not a rate
        self.last_rate: float | None = None

    def helpers(self, jobs: list[_Job], running: int) -> list[tuple[_Job, int]]:
        """The chunks to start now (already claimed for the caller)."""
        if not self.growing:
            return []
        if running >= self.max:
            self._reset()  # every worker is busy: measure afresh once one frees up
            return []
        now, fetched = time.monotonic(), self.progress.fetched
        elapsed = now - self.mark[0]
        if elapsed < SPLIT_TICK:
            return []
        rate = (fetched - self.mark[1]) / elapsed
        self.mark = (now, fetched)
        if not self.warm:
            self.warm = True
            return []
        if self.last_rate is not None and rate < self.last_rate * SPLIT_GAIN:
            self.growing = False
            return []
        # Doubling the connections doubled the rate: a per-connection cap, so take them all now.
        proportional = self.last_rate is not None and rate >= self.last_rate * SPLIT_PROPORTIONAL
        self.last_rate = rate
        picks: list[tuple[_Job, int]] = []
        for _ in range(self.max - running if proportional else min(self.max - running, max(running, 1))):
            candidates = [j for j in jobs if j.unclaimed_bytes() > 0]
            if not candidates:
                break
            job = max(candidates, key=lambda j: j.unclaimed_bytes())
            idx = job.claim_last()
            if idx is None:
                break
            picks.append((job, idx))
        return picks


def _same_size(path: Path | None, size: int) -> Path | None:
    try:
        return path if path is not None and path.stat().st_size == size else None
    except OSError:
        return None


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
        self.spec = spec
        self.snap = snap
        self.opts = opts
        self.progress = progress
        self._stop = threading.Event()
        self._dirs: set[Path] = set()
        self._model_bytes = 0
        self._log = log.get()

    # -- planning ------------------------------------------------------------------

    @staticmethod
    def group(placements: Iterable[Placement]) -> dict[Path, list[Placement]]:
        """Placements by staging path: identical content is fetched once."""
        groups: dict[Path, list[Placement]] = defaultdict(list)
        for p in placements:
            groups[p.part].append(p)
        return groups

    @staticmethod
    def _present(p: Placement) -> bool:
        try:
            return p.final.stat().st_size == p.file.size
        except OSError:
            return False

    @classmethod
    def pending_bytes(cls, placements: Iterable[Placement], reuse: Mapping[str, Path] | None = None) -> int:
        """Bytes still to be written to disk, counting space already allocated to partial files;
        files in `reuse` (see `run`) are hard-linked and cost nothing."""
        total = 0
        for part, group in cls.group(placements).items():
            if any(cls._present(p) for p in group):
                continue
            if reuse and _same_size(reuse.get(group[0].file.digest.hex), group[0].file.size):
                continue
            size = group[0].file.size
            try:
                allocated = part.stat().st_blocks * 512
            except OSError:
                allocated = 0
            total += max(0, size - allocated)
        return total

    # -- running -------------------------------------------------------------------

    def run(self, placements: list[Placement], reuse: Mapping[str, Path] | None = None) -> None:
        """Fetch everything not yet in place; hash mismatches are refetched a bounded number of times.

        `reuse` maps content hashes to verified files already published (an older revision):
        those are linked, not fetched.
        """
        groups = self.group(placements)
        todo: list[list[Placement]] = []
        for group in groups.values():
            have = next((p.final for p in group if self._present(p)), None)
            if have is None and reuse:
                have = _same_size(reuse.get(group[0].file.digest.hex), group[0].file.size)
            if have is None:
                todo.append(group)
                continue
            for p in group:
                if not self._present(p):
                    self._link(have, p.final)
        self._model_bytes = sum(g[0].file.size for g in groups.values())
        self.progress.files_total = len(groups)
        self.progress.files_done = len(groups) - len(todo)
        self.progress.total = sum(g[0].file.size for g in groups.values())
        self.progress.done = self.progress.total - sum(g[0].file.size for g in todo)
        reporter = threading.Thread(target=self._report, daemon=True)
        reporter.start()
        try:
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
            for d in sorted(self._dirs):
                fsync_dir(d)
        finally:
            self._stop.set()
            reporter.join(timeout=1)

    def _chunk_size(self, size: int) -> int:
        if self.opts.chunk_size:
            return self.opts.chunk_size
        return auto_chunk_size(size, self._model_bytes, self.opts.max_workers)

    def _round(self, groups: list[list[Placement]]) -> list[_Job]:
        # Largest first: the longest streams start at once and small files fill in around them.
        ordered = sorted(groups, key=lambda g: -g[0].file.size)
        jobs = [
            _Job(g[0].file, g[0].part, [p.final for p in g], self._chunk_size(g[0].file.size))
            for g in ordered
        ]
        failed: list[_Job] = []
        failed_lock = threading.Lock()

        def task(job: _Job, idx: int | None) -> None:
            try:
                if idx is not None:
                    self._chunk(job, idx, helper=True)
                elif not job.chunks:
                    self._chunk(job, -1)
                else:  # the file's sequential stream: chunk after chunk until a helper's
                    while (nxt := job.claim_next()) is not None:
                        self._chunk(job, nxt)
            except IntegrityError:
                job.discard()
                with failed_lock:
                    if job not in failed:
                        failed.append(job)

        futures: list[Future[None]] = []
        with ThreadPoolExecutor(self.opts.max_workers, thread_name_prefix="fetch") as pool:
            futures += [pool.submit(task, job, None) for job in jobs]
            split = _Splitter(self.opts.max_workers, self.progress)
            pending: set[Future[None]] = set(futures)
            while pending:
                done, pending = wait(pending, timeout=SPLIT_TICK, return_when=FIRST_EXCEPTION)
                if any(f.exception() is not None for f in done):
                    self._stop.set()
                    for f in pending:
                        f.cancel()
                    break
                for job, idx in split.helpers(jobs, len(pending)):
                    futures.append(pool.submit(task, job, idx))
                    pending.add(futures[-1])
        errors = [e for f in futures if not f.cancelled() and (e := f.exception()) is not None]
        # The first real cause, not the Cancelled it triggered in the other workers.
        error = next((e for e in errors if not isinstance(e, Cancelled)), errors[0] if errors else None)
        for job in jobs:
            job.close()
        if error is not None:
            raise error
        return failed

    def _check(self) -> None:
        if self._stop.is_set():
            raise Cancelled("transfer stopped")
        if self.opts.cancel is not None and self.opts.cancel.is_set():
            raise Cancelled("cancelled")
        if self.opts.deadline is not None and time.monotonic() > self.opts.deadline:
            raise DeadlineExceeded("timed out before the transfer finished")

    def _chunk(self, job: _Job, idx: int, helper: bool = False) -> None:
        """Fetch one chunk. The file's own stream writes with O_DIRECT and hashes in memory; a
        helper's chunk is hashed later, once the hash frontier reaches it, so it goes through
        the page cache and is hashed from there rather than read back from the disk."""
        self._check()
        if idx < 0:  # an empty file
            self._finish(job)
            return
        if not job.open():
            return  # finished meanwhile (this chunk was already complete)
        start, end = job.chunks[idx]
        self.progress.resumed(job.written[idx])

        def attempt() -> None:
            self._check()
            pos = start + job.written[idx]
            if pos >= end:
                return
            with self.source.open_range(self.spec, self.snap, job.file, pos, end) as stream:
                if job.dfd is not None and pos % DIRECT_ALIGN == 0 and not helper:
                    self._stream_direct(job, idx, stream, pos)
                else:
                    job.cached[idx] = True
                    self._stream_buffered(job, idx, stream, pos)
            job.record(idx)

        retry.call(attempt, self.opts.retry, what=f"{job.file.path}[{idx}]")
        self._advance_hash(job)

    def _hash_in_memory(self, job: _Job, idx: int, block: Block, pos: int) -> None:
        """Fold a just-written block at `pos` into the hash if the hash frontier is in this chunk.

        Bytes of this chunk written before the frontier arrived (an earlier run, or while
        earlier chunks finished) are read back first; from then on the chunk's writer hashes
        what it receives, and nothing is read twice. If another thread holds the hash, the
        block is left to the read-back when its chunk completes.
        """
        start = job.chunks[idx][0]
        if not start <= job.hash_pos <= pos or not job.hash_lock.acquire(blocking=False):
            return
        try:
            if start <= job.hash_pos <= pos:
                if job.hash_pos < pos:
                    self._hash_range(job, job.hash_pos, pos)
                job.hasher.update(block)
                job.hash_pos = pos + len(block)
        finally:
            job.hash_lock.release()

    def _landed(self, job: _Job, idx: int, block: Block, end: int, since_journal: int) -> int:
        """Account for a block now written, ending at `end`; returns bytes not yet journaled."""
        self._hash_in_memory(job, idx, block, end - len(block))
        job.written[idx] = end - job.chunks[idx][0]
        self.progress.add(len(block))
        since_journal += len(block)
        if since_journal >= JOURNAL_EVERY:
            job.record(idx)
            return 0
        return since_journal

    def _stream_buffered(self, job: _Job, idx: int, stream: Iterable[Block], pos: int) -> None:
        """Write each block as it comes, through the page cache."""
        since_journal = 0
        for block in stream:
            self._check()
            self._write(job, block, pos)
            pos += len(block)
            if since_journal + len(block) >= JOURNAL_EVERY:
                start_writeback(job.fd, pos - since_journal - len(block), since_journal + len(block))
            since_journal = self._landed(job, idx, block, pos, since_journal)
            crossed = pos // DROP_LAG != (pos - len(block)) // DROP_LAG
            if len(job.chunks) == 1 and self.opts.drop_cache and crossed:
                _drop_behind(job, pos)

    def _stream_direct(self, job: _Job, idx: int, stream: Iterable[Block], pos: int) -> None:
        """Write blocks with O_DIRECT: as they are when aligned, else gathered in a staging buffer.

        The page cache is never touched: no fresh pages to allocate (most of a buffered
        download's system time) and no dirty gigabytes charged to the pod's memory. The
        sources' own buffers are page-aligned and sized for it, so their blocks normally go
        to disk without a copy. Only what is written counts as done (hash, journal,
        progress), so a retry resumes at an aligned offset. A file's unaligned tail goes
        through the page cache.
        """
        with contextlib.ExitStack() as stack:
            stage: memoryview | None = None
            fill = since_journal = 0
            for block in stream:
                self._check()
                view = memoryview(block)
                if not fill and len(view) >= DIRECT_ALIGN:
                    aligned = view[: len(view) - len(view) % DIRECT_ALIGN]
                    try:
                        self._write(job, aligned, pos, direct=True, strict=True)
                    except _Misaligned:
                        pass  # the block's address is not aligned (bytes from httpx): stage it
                    else:
                        pos += len(aligned)
                        since_journal = self._landed(job, idx, aligned, pos, since_journal)
                        view = view[len(aligned) :]  # a remainder: only at a file's end
                while view:
                    if stage is None:
                        stage = stack.enter_context(_STAGES.lend())
                    k = min(len(view), len(stage) - fill)
                    stage[fill : fill + k] = view[:k]
                    fill, view = fill + k, view[k:]
                    if fill == len(stage):
                        self._write(job, stage, pos, direct=True)
                        pos += fill
                        since_journal = self._landed(job, idx, stage, pos, since_journal)
                        fill = 0
            if stage is not None and fill:
                aligned_fill = fill - fill % DIRECT_ALIGN
                if aligned_fill:
                    self._write(job, stage[:aligned_fill], pos, direct=True)
                if fill > aligned_fill:
                    self._write(job, stage[aligned_fill:fill], pos + aligned_fill)
                self._landed(job, idx, stage[:fill], pos + fill, since_journal)

    def _write(self, job: _Job, block: Block, pos: int, direct: bool = False, strict: bool = False) -> None:
        fd = job.dfd if direct and job.direct_ok else job.fd
        assert fd is not None
        view = memoryview(block)
        try:
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
        except OSError as exc:
            if (
                fd == job.dfd
                and exc.errno == errno.EINVAL
                and strict
                and view.nbytes == memoryview(block).nbytes
            ):
                raise _Misaligned from exc
            if fd == job.dfd and exc.errno == errno.EINVAL:
                # Opened, then refused at write (some FUSE/network filesystems): page cache from now on.
                job.direct_ok = False
                self._write(job, view, pos)
                return
            if is_no_space(exc):
                raise DiskSpaceError(f"disk full while writing {job.file.path} to {job.part.parent}") from exc
            raise PreloadError(f"cannot write {job.part}: {exc.strerror}") from exc

    def _advance_hash(self, job: _Job) -> None:
        """Read back completed chunks at the hash frontier, in order, and publish the file once
        it is all hashed; whoever holds the hash lock does the work."""
        while True:
            if not job.hash_lock.acquire(blocking=False):
                return
            try:
                while (span := self._hashable(job)) is not None:
                    self._hash_range(job, job.hash_pos, span)
                    job.hash_pos = span
                complete = job.hash_pos >= job.file.size
            finally:
                job.hash_lock.release()
            if complete:
                with job.lock:
                    if job.finished:
                        return
                    job.finished = 1
                self._finish(job)
                return
            if self._hashable(job) is None:
                return  # the worker completing the frontier chunk will come back here

    @staticmethod
    def _hashable(job: _Job) -> int | None:
        """The end of the completed chunk holding the hash frontier, if it is complete."""
        if job.hash_pos >= job.file.size:
            return None
        idx = next(i for i, (s, e) in enumerate(job.chunks) if s <= job.hash_pos < e)
        s, e = job.chunks[idx]
        return e if job.written[idx] >= e - s else None

    def _hash_range(self, job: _Job, start: int, end: int) -> None:
        """Hash a finished range of one chunk from the part file: from the page cache when this
        run wrote the chunk through it (a helper's), else with O_DIRECT (bytes written that way,
        or by an earlier run: not in the page cache, and a buffered read would allocate them)."""
        assert job.fd is not None
        idx = next(i for i, (s, e) in enumerate(job.chunks) if s <= start < e)
        with READS.lend() as buf:
            direct = (
                job.dfd is not None and job.direct_ok and not job.cached[idx] and start % DIRECT_ALIGN == 0
            )
            pos = start
            while pos < end:
                self._check()
                want = min(len(buf), end - pos)
                try:
                    if direct:
                        assert job.dfd is not None
                        got = os.preadv(job.dfd, [buf[: -(-want // DIRECT_ALIGN) * DIRECT_ALIGN]], pos)
                    else:
                        got = os.preadv(job.fd, [buf[:want]], pos)
                except OSError as exc:
                    if direct and exc.errno == errno.EINVAL:
                        direct = False
                        continue
                    raise PreloadError(f"cannot read back {job.part}: {exc.strerror}") from exc
                n = min(got, want)
                if not n:
                    raise IntegrityError(f"{job.file.path}: part file shorter than expected")
                job.hasher.update(buf[:n])
                pos += n

    def _finish(self, job: _Job) -> None:
        got = job.hasher.hexdigest()
        want = job.file.digest.hex
        if got != want:
            self._log.warning(
                "hash_mismatch",
                file=job.file.path,
                algo=job.file.digest.algo,
                expected=want,
                got=got,
            )
            raise IntegrityError(f"{job.file.path}: {job.file.digest.algo} mismatch")
        if job.fd is None and not job.open():  # empty files are opened here
            return
        assert job.fd is not None
        os.fdatasync(job.fd)
        if self.opts.drop_cache:
            os.posix_fadvise(job.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        job.close()
        first = job.finals[0]
        self._dirs.update(make_dirs(first.parent))
        os.replace(job.part, first)
        crashpoints.reached("file_renamed")
        with contextlib.suppress(FileNotFoundError):
            job.journal.unlink()
        self._dirs.add(first.parent)
        for other in job.finals[1:]:
            self._link(first, other)
        self.progress.file_finished()

    def _link(self, src: Path, dst: Path) -> None:
        self._dirs.update(make_dirs(dst.parent))
        tmp = tmp_sibling(dst)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:  # a filesystem without hard links: a durable copy
            shutil.copyfile(src, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, dst)
        self._dirs.add(dst.parent)

    def _report(self) -> None:
        interval = self.opts.progress_interval
        while not self._stop.wait(interval):
            p = self.progress
            rate = p.rate()
            left = max(0, p.total - p.done)
            self._log.info(
                "progress",
                repo=self.spec.repo,
                bytes_done=p.done,
                bytes_total=p.total,
                percent=round(100 * p.done / p.total, 1) if p.total else 100.0,
                mb_per_s=round(rate / 1e6, 1),
                eta_s=round(left / rate) if rate > 0 else None,
                files_done=p.files_done,
                files_total=p.files_total,
            )
