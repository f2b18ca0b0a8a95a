"""How files are cut into chunks, and how many connections a transfer keeps: the splitter adds
ranged connections while the aggregate rate rises, then holds the count it settled on."""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Callable

from agent.engine.job import Job
from agent.engine.progress import Progress

MIN_CHUNK = 32 << 20  # below this a range costs more in requests than it gains in parallelism
SPLIT_TICK = 0.2  # seconds between looks at whether more connections would help
SPLIT_GAIN = 1.5  # doubling the connections must raise the rate this much to double again
SPLIT_PROPORTIONAL = 1.8  # ... and this much to quadruple them instead
# A step that raised the rate less than SPLIT_GAIN but this much is kept. Helpers cost CPU that
# streams do not (their chunks go through the page cache and are read back for the hash), so a
# step has to pay clearly: uncapped on 2 cores, 3 -> 6 connections measured 1.1-1.2x over a
# tick (noise and the page cache absorbing writes) while the whole download took longer
# (3.4 s against 3.1 s) and cost 1.5 core-s/GiB against 1.3.
SETTLE_GAIN = 1.3
JUMP = 4  # growth factor after a proportional rise (a per-connection cap: more will help too)
REPROBE = 5.0  # seconds after settling before one more doubling is tried, where asked for (see __init__)
REPROBE_AFTER_BACKOFF = 10.0  # ... and after a back-off: the server asked us to slow down
LATENCY_RISE = 4.0  # requests answering this many times slower than at the start: congestion
LATENCY_MARGIN = 0.25  # ... and at least this many seconds slower (loopback latencies are noise)
# Bytes arrive in whole body buffers (1 MiB), so a tick that saw only a few of them per
# connection measures the buffer size, not the rate: behind a slow per-connection cap a 0.2 s
# tick sees 0 or 1 buffer and growth stopped at 2 connections. A measurement waits for this
# many bytes per connection (quantisation 1/8), or for SAMPLE_MAX_WAIT on a stalled link.
SAMPLE_BYTES = 8 << 20
SAMPLE_MAX_WAIT = 3.0
# Threads of this process waiting for a CPU, on average over a measurement: from this many the
# CPU, not the link, limits the rate (uncapped on a small node, or a busy one), and more
# connections would only add helpers' page-cache work. A throttled pod's waits count too.
CPU_STARVED = 0.5


def cpu_wait_s() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU, summed
    (schedstat's run delay); None where the kernel does not report it. Blocked in recv or on
    the GIL is not waiting for a CPU: only contention for the cores shows here."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that has just ended
    return total / 1e9 if tids else None


class HostSlots:
    """The connections every transfer in this process holds to one host, under one ceiling.

    The agent runs several downloads at once, each with its own splitter; on their own they
    would each grow to --max-workers against the same CDN. A file's stream waits for a slot
    (`take_one`), helpers are started only into free ones (`take`), and every connection gives
    its slot back when it ends.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self._cond = threading.Condition()

    def free(self) -> int:
        with self._cond:
            return max(0, self.limit - self.used)

    def take_one(self, check: Callable[[], None], poll: float = SPLIT_TICK) -> None:
        """One slot, waiting for it; `check` raises to stop waiting (a cancelled transfer)."""
        with self._cond:
            while self.used >= self.limit:
                check()
                self._cond.wait(poll)
            self.used += 1

    def give(self, n: int = 1) -> None:
        with self._cond:
            self.used = max(0, self.used - n)
            self._cond.notify(n)


_HOSTS: dict[str, HostSlots] = {}
_HOSTS_LOCK = threading.Lock()


def host_slots(host: str, limit: int) -> HostSlots:
    """The process's slots for `host`; the ceiling is the latest transfer's (one setting per process)."""
    with _HOSTS_LOCK:
        slots = _HOSTS.get(host)
        if slots is None:
            slots = _HOSTS[host] = HostSlots(limit)
        slots.limit = max(1, limit)
        return slots


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
    """Decides how many connections a transfer runs: adds ranged ones while that raises the rate.

    Every file starts as one sequential stream, hashed in memory as it arrives. Where the rate
    is limited per connection (a CDN capping single streams), idle workers take chunks from the
    far end of the files with the most left, doubling the connections each tick while the rate
    keeps rising (quadrupling when it rose in proportion), up to `max_workers`. The first round
    that does not help settles the count at the level before it: where the link, disk or CPU
    is the limit, more connections would only cost read-back hashing. Once settled, helpers
    that finish a chunk take the next one and finished streams are replaced, so the count holds
    for the rest of the download, and every REPROBE seconds one more doubling is tried (a
    measurement over a fraction of a second is noisy, and links change). A server asking to
    slow down (429/503) or answering ever more slowly halves the count and stops the growth
    for REPROBE_AFTER_BACKOFF. `fixed`: start settled at that many (pieces from peers), at most
    `max_workers`.
    """

    def __init__(
        self,
        max_workers: int,
        progress: Progress,
        clock: Callable[[], float] = time.monotonic,
        sample_bytes: int = SAMPLE_BYTES,
        reprobe: float = math.inf,
        slots: HostSlots | None = None,
        cpu_wait: Callable[[], float | None] = cpu_wait_s,
        fixed: int | None = None,
    ) -> None:
        self.max = max_workers
        self.slots = slots if slots is not None else HostSlots(max_workers)
        self.progress = progress
        self._clock = clock  # a test's own clock: the decisions depend only on rates over time
        self._cpu_wait = cpu_wait
        self._sample_bytes = sample_bytes
        # Re-probing a settled count every few seconds raised peak memory with the model's size
        # (each probe doubles the connections for a while: 3 x 4 GiB peaked at 79 MB against
        # 55 MB for 3 x 1 GiB, bench/results/hub.md), so a download settles once by default;
        # only a back-off (429/503, congestion) is probed again, after REPROBE_AFTER_BACKOFF.
        self._reprobe = reprobe
        self.growing = True
        self.target = max_workers  # connections to keep; lowered when growth settles or backs off
        self.backoffs = 0
        self._level = 0  # connections running at the last measurement
        self._settled_at = 0.0
        self._backed_off = False
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._latency_floor: float | None = None
        self._reset()
        self.fixed = fixed is not None
        if fixed is not None:
            # Pieces from peers (peer fan-out): each arrives no faster than its owner gets it from
            # the origin, a share of the origin's link, so what decides a node's rate is how many
            # pieces it has in flight, and a rate measured per tick says nothing about the link
            # (in a benchmark of 8 nodes, nodes that settled at a few connections received 20-30
            # MB/s of their 50 for most of the rollout).
            self._settle(max(1, min(max_workers, fixed)))

    def _reset(self) -> None:
        self.mark = (self._clock(), self.progress.fetched)
        self._wait_mark = self._cpu_wait()
        self.warm = False  # the first tick after a reset covers connection set-up: not a rate
        self.last_rate: float | None = None

    def latency(self, seconds: float) -> None:
        """A request's time to its reply (any thread): the congestion signal."""
        with self._lock:
            if len(self._latencies) < 1024:  # read every tick while growing; bounded when settled
                self._latencies.append(seconds)

    def throttled(self) -> None:
        """The server asked to slow down (any thread): halve the connections, grow no more."""
        with self._lock:
            self._settle(max(1, min(self.target, self.progress.connections) // 2))
            self._backed_off = True
            self.backoffs += 1

    def _settle(self, target: int) -> None:
        self.growing = False
        self.target = target
        self._settled_at = self._clock()
        self._backed_off = False

    def keep(self, running: int) -> bool:
        """Whether a helper that finished its chunk takes another (`running` includes it)."""
        return running <= self.target

    def helpers(self, jobs: list[Job], running: int) -> list[tuple[Job, int]]:
        """The chunks to start now (already claimed for the caller)."""
        if not self.growing:
            wait = REPROBE_AFTER_BACKOFF if self._backed_off else self._reprobe
            if self._clock() - self._settled_at < wait or running < self.target:
                return self._claim(jobs, self.target - running)
            self.growing = True  # probe once more from the count held now
            self._reset()
            self.warm = True  # these connections are established: the next tick is a rate
            return []
        if running >= self.max or not self.slots.free():
            # Every worker is busy, or the host's slots are all held (other downloads too):
            # measure afresh once one frees up.
            self._reset()
            return []
        now, fetched = self._clock(), self.progress.fetched
        elapsed = now - self.mark[0]
        if elapsed < SPLIT_TICK:
            return []
        if fetched - self.mark[1] < self._sample_bytes * max(running, 1) and elapsed < SAMPLE_MAX_WAIT:
            return []
        rate = (fetched - self.mark[1]) / elapsed
        self.mark = (now, fetched)
        starved = self._starved(elapsed)
        if not self.warm:
            self.warm = True
            return []
        if self._congested():
            self.throttled()
            return []
        if self.last_rate is not None and rate < self.last_rate * SPLIT_GAIN:
            # The last step did not pay in full: keep it if it helped somewhat, else go back to
            # the level before it (the extra helpers end with their chunk).
            self._settle(running if rate >= self.last_rate * SETTLE_GAIN else max(1, self._level))
            return []
        if starved and self.last_rate is None:
            # The files' own streams already keep the cores busy (uncapped on a small or busy
            # node): helpers could only add page-cache work. Asked before the first step only:
            # behind a per-connection cap the streams alone leave the CPU idle, and once the
            # count grows in proportion to the rate, the connections are what carry it.
            self._settle(max(1, running))
            return []
        # Doubling the connections doubled the rate: a per-connection cap, so grow faster.
        proportional = self.last_rate is not None and rate >= self.last_rate * SPLIT_PROPORTIONAL
        self.last_rate = rate
        self._level = running
        want = (JUMP - 1) * max(running, 1) if proportional else max(running, 1)
        picks = self._claim(jobs, min(self.max - running, want))
        self.target = running + len(picks)
        return picks

    def next_chunk(self, jobs: list[Job], running: int) -> tuple[Job, int] | None:
        """Another chunk for a helper that finished one, if the count allows it (claimed)."""
        if not self.keep(running):
            return None
        picks = self._pick(jobs, 1)  # it keeps the host slot it holds
        return picks[0] if picks else None

    def _claim(self, jobs: list[Job], count: int) -> list[tuple[Job, int]]:
        """Chunks for up to `count` new helpers, no more than the host has free slots for (each
        task takes its slot when it starts: another download may have taken one since)."""
        return self._pick(jobs, min(count, self.slots.free()))

    def _pick(self, jobs: list[Job], count: int) -> list[tuple[Job, int]]:
        picks: list[tuple[Job, int]] = []
        for _ in range(count):
            candidates = [(left, j) for j in jobs if (left := j.unclaimed_bytes()) > 0]
            if not candidates:
                break
            job = max(candidates, key=lambda c: c[0])[1]
            idx = job.claim_last()
            if idx is None:
                break
            picks.append((job, idx))
        return picks

    def _starved(self, elapsed: float) -> bool:
        """Whether this process's threads waited for a CPU CPU_STARVED of the time since the mark."""
        before, now = self._wait_mark, self._cpu_wait()
        self._wait_mark = now
        if before is None or now is None:
            return False
        return max(0.0, now - before) / max(elapsed, 1e-9) >= CPU_STARVED

    def _congested(self) -> bool:
        """Whether requests now take much longer to answer than they did at the start."""
        with self._lock:
            samples, self._latencies = self._latencies, []
        if not samples:
            return False
        now = statistics.median(samples)
        floor = self._latency_floor
        if floor is None or now < floor:
            self._latency_floor = now
            return False
        return now > floor * LATENCY_RISE and now - floor > LATENCY_MARGIN
