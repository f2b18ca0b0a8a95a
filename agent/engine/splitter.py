"""How files are cut into chunks, and when idle workers split them into ranged requests."""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.engine.job import Job
from agent.engine.progress import Progress

MIN_CHUNK = 32 << 20  # below this a range costs more in requests than it gains in parallelism
SPLIT_TICK = 0.3  # seconds between looks at whether more connections would help
SPLIT_GAIN = 1.5  # doubling the connections must raise the rate this much to double again
SPLIT_PROPORTIONAL = 1.8  # ... and this much to go straight to --max-workers


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


class Splitter:
    """Adds ranged connections to files only while that raises the transfer's rate.

    Every file starts as one sequential stream, hashed in memory as it arrives. Where the
    rate is limited per connection (a CDN capping single streams), idle workers take chunks
    from the far end of the files with the most left, doubling the connections each tick
    while the rate keeps rising (all at once when it rose in proportion). Where the link,
    disk or CPU is the limit, more connections would only cost read-back hashing, so the
    first round that does not help ends the splitting for this transfer.
    """

    def __init__(
        self, max_workers: int, progress: Progress, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max = max_workers
        self.progress = progress
        self._clock = clock  # a test's own clock: the decisions depend only on rates over time
        self.growing = True
        self._reset()

    def _reset(self) -> None:
        self.mark = (self._clock(), self.progress.fetched)
        self.warm = False  # the first tick after a reset covers connection set-up: not a rate
        self.last_rate: float | None = None

    def helpers(self, jobs: list[Job], running: int) -> list[tuple[Job, int]]:
        """The chunks to start now (already claimed for the caller)."""
        if not self.growing:
            return []
        if running >= self.max:
            self._reset()  # every worker is busy: measure afresh once one frees up
            return []
        now, fetched = self._clock(), self.progress.fetched
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
        picks: list[tuple[Job, int]] = []
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
