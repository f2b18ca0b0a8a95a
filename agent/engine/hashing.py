"""The hash frontier: a file is hashed in order, as its bytes arrive where possible.

The chunk holding the frontier is hashed in memory by its writer (`fold`). A chunk completed
ahead of the frontier (a helper's, or one an earlier run wrote) is read back from the part
file when the frontier reaches it (`advance`): from the page cache for a helper's chunk this
run wrote through it, else with O_DIRECT so a read-back does not fill the page cache.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from agent.buffers import DIRECT_ALIGN, READS
from agent.engine.job import Job
from agent.errors import IntegrityError, PreloadError
from agent.sources.base import Block


def fold(job: Job, idx: int, block: Block, pos: int, check: Callable[[], None]) -> None:
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
                read_back(job, job.hash_pos, pos, check)
            job.hasher.update(block)
            job.hash_pos = pos + len(block)
    finally:
        job.hash_lock.release()


def advance(job: Job, check: Callable[[], None]) -> bool:
    """Read back completed chunks at the hash frontier, in order; whoever holds the hash lock
    does the work. True for the one caller that saw the file all hashed: it commits the file."""
    while True:
        if not job.hash_lock.acquire(blocking=False):
            return False
        try:
            while (span := hashable(job)) is not None:
                read_back(job, job.hash_pos, span, check)
                job.hash_pos = span
            complete = job.hash_pos >= job.file.size
        finally:
            job.hash_lock.release()
        if complete:
            with job.lock:
                if job.finished:
                    return False
                job.finished = True
            return True
        if hashable(job) is None:
            return False  # the worker completing the frontier chunk will come back here


def hashable(job: Job) -> int | None:
    """The end of the completed chunk holding the hash frontier, if it is complete."""
    if job.hash_pos >= job.file.size:
        return None
    idx = next(i for i, (s, e) in enumerate(job.chunks) if s <= job.hash_pos < e)
    s, e = job.chunks[idx]
    return e if job.written[idx] >= e - s else None


def read_back(job: Job, start: int, end: int, check: Callable[[], None]) -> None:
    """Hash a finished range of one chunk from the part file: from the page cache when this
    run wrote the chunk through it (a helper's), else with O_DIRECT (bytes written that way,
    or by an earlier run: not in the page cache, and a buffered read would allocate them)."""
    ingest = job.ingest
    assert ingest.fd is not None
    idx = next(i for i, (s, e) in enumerate(job.chunks) if s <= start < e)
    with READS.lend() as buf:
        direct = (
            ingest.dfd is not None and ingest.direct_ok and not job.cached[idx] and start % DIRECT_ALIGN == 0
        )
        pos = start
        while pos < end:
            check()
            want = min(len(buf), end - pos)
            try:
                if direct:
                    assert ingest.dfd is not None
                    got = os.preadv(ingest.dfd, [buf[: -(-want // DIRECT_ALIGN) * DIRECT_ALIGN]], pos)
                else:
                    got = os.preadv(ingest.fd, [buf[:want]], pos)
            except OSError as exc:
                if direct and exc.errno == errno.EINVAL:
                    direct = False
                    continue
                raise PreloadError(f"cannot read back {ingest.part}: {exc.strerror}") from exc
            n = min(got, want)
            if not n:
                raise IntegrityError(f"{job.file.path}: part file shorter than expected")
            job.hasher.update(buf[:n])
            pos += n
