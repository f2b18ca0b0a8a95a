"""Getting received blocks onto the disk: O_DIRECT or through the page cache, and keeping the
page cache in check (writeback started early, pages behind a streamed file dropped).

A large file's own stream is written with O_DIRECT: the page cache is not filled (on a busy
node, allocating it costs more than the disk I/O). Helpers' chunks go through the page cache,
where the hash frontier reads them back cheaply.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
from collections.abc import Callable, Iterable
from typing import Protocol, cast

from agent.buffers import DIRECT_ALIGN, BufferPool
from agent.engine.job import JOURNAL_EVERY, Job
from agent.errors import DiskSpaceError, PreloadError
from agent.sources.base import Block
from agent.store.fs import is_no_space

DROP_LAG = 64 << 20  # pages this far behind the writer have likely been written back
DIRECT_FLUSH = 512 << 10  # per write: large enough for the disk, small enough that a kill loses little
# Shared by every transfer in the process: the staging buffers of connections whose blocks
# cannot go to disk as they are.
_STAGES = BufferPool(DIRECT_FLUSH)
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


def drop_behind(job: Job, pos: int) -> None:
    """Drop the pages of a streamed file well behind the writer.

    DONTNEED writes dirty pages back asynchronously and discards the clean ones, so the
    page cache a one-pass copy holds stays bounded instead of growing to the file's size.
    Only one-chunk files written through the page cache use this: chunked ones may be read back.
    Called each time the writer crosses a DROP_LAG boundary; the window two boundaries back
    (already asked to write back last time) is the one dropped.
    """
    assert job.ingest.fd is not None
    window = (pos // DROP_LAG - 2) * DROP_LAG
    if window >= 0:
        os.posix_fadvise(job.ingest.fd, window, 2 * DROP_LAG, os.POSIX_FADV_DONTNEED)


class Misaligned(Exception):
    """An O_DIRECT write refused for the buffer's address (nothing was written)."""


class Sink(Protocol):
    """What a stream reports to while it writes (the transfer)."""

    def check(self) -> None:
        """Raise if the transfer must stop."""

    def landed(self, job: Job, idx: int, block: Block, end: int, since_journal: int) -> int:
        """Account for `block`, now written and ending at `end`; returns bytes not yet journaled."""


def write(job: Job, block: Block, pos: int, direct: bool = False, strict: bool = False) -> None:
    """pwrite all of `block` at `pos`, with O_DIRECT when asked and still allowed.

    `strict`: an O_DIRECT write refused before any byte raises Misaligned (the caller stages
    the block) instead of falling back to the page cache for good.
    """
    ingest = job.ingest
    fd = ingest.dfd if direct and ingest.direct_ok else ingest.fd
    assert fd is not None
    view = memoryview(block)
    try:
        while view:
            n = os.pwrite(fd, view, pos)
            view, pos = view[n:], pos + n
    except OSError as exc:
        if (
            fd == ingest.dfd
            and exc.errno == errno.EINVAL
            and strict
            and view.nbytes == memoryview(block).nbytes
        ):
            raise Misaligned from exc
        if fd == ingest.dfd and exc.errno == errno.EINVAL:
            # Opened, then refused at write (some FUSE/network filesystems): page cache from now on.
            ingest.direct_ok = False
            write(job, view, pos)
            return
        if is_no_space(exc):
            raise DiskSpaceError(f"disk full while writing {job.file.path} to {ingest.part.parent}") from exc
        raise PreloadError(f"cannot write {ingest.part}: {exc.strerror}") from exc


def stream_buffered(
    job: Job, idx: int, stream: Iterable[Block], pos: int, sink: Sink, drop_cache: bool
) -> None:
    """Write each block as it comes, through the page cache."""
    since_journal = 0
    for block in stream:
        sink.check()
        write(job, block, pos)
        pos += len(block)
        if since_journal + len(block) >= JOURNAL_EVERY:
            start_writeback(job.ingest.fd, pos - since_journal - len(block), since_journal + len(block))
        since_journal = sink.landed(job, idx, block, pos, since_journal)
        crossed = pos // DROP_LAG != (pos - len(block)) // DROP_LAG
        if len(job.chunks) == 1 and drop_cache and crossed:
            drop_behind(job, pos)


def stream_direct(job: Job, idx: int, stream: Iterable[Block], pos: int, sink: Sink) -> None:
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
            sink.check()
            view = memoryview(block)
            if not fill and len(view) >= DIRECT_ALIGN:
                aligned = view[: len(view) - len(view) % DIRECT_ALIGN]
                try:
                    write(job, aligned, pos, direct=True, strict=True)
                except Misaligned:
                    pass  # the block's address is not aligned (bytes from httpx): stage it
                else:
                    pos += len(aligned)
                    since_journal = sink.landed(job, idx, aligned, pos, since_journal)
                    view = view[len(aligned) :]  # a remainder: only at a file's end
            while view:
                if stage is None:
                    stage = stack.enter_context(_STAGES.lend())
                k = min(len(view), len(stage) - fill)
                stage[fill : fill + k] = view[:k]
                fill, view = fill + k, view[k:]
                if fill == len(stage):
                    write(job, stage, pos, direct=True)
                    pos += fill
                    since_journal = sink.landed(job, idx, stage, pos, since_journal)
                    fill = 0
        if stage is not None and fill:
            aligned_fill = fill - fill % DIRECT_ALIGN
            if aligned_fill:
                write(job, stage[:aligned_fill], pos, direct=True)
            if fill > aligned_fill:
                write(job, stage[aligned_fill:fill], pos + aligned_fill)
            sink.landed(job, idx, stage[:fill], pos + fill, since_journal)
