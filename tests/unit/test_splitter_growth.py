"""The splitter's connection count: growth to a high ceiling, settling, top-ups, re-probes and
back-offs (429/503, rising latency), on a test clock; the fixed count and order of pieces from peers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.engine.job import Job
from agent.engine.progress import Progress
from agent.engine.splitter import (
    REPROBE,
    REPROBE_AFTER_BACKOFF,
    SAMPLE_BYTES,
    SAMPLE_MAX_WAIT,
    Splitter,
    cpu_wait_s,
)
from agent.engine.transfer import next_piece
from agent.integrity import SHA256, Digest
from agent.manifest import RemoteFile

MIB = 1 << 20


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _job(tmp_path: Path, chunks: int) -> Job:
    data = bytes(chunks * MIB)
    f = RemoteFile("w.bin", len(data), Digest(SHA256, hashlib.sha256(data).hexdigest()))
    job = Job(f, tmp_path / "h.part", [tmp_path / "w.bin"], MIB)
    assert job.claim_next() == 0
    return job


def _driver(split: Splitter, progress: Progress, clock: _Clock, job: Job) -> list[int]:
    """Feed the splitter a per-connection-capped rate: `running` connections at 10 bytes/s each."""
    running = [1]

    def tick(rate_per_conn: float = 10.0, seconds: float = 1.0) -> int:
        clock.now += seconds
        progress.fetched += int(rate_per_conn * running[0] * seconds)
        picks = split.helpers([job], running[0])
        running[0] += len(picks)
        return running[0]

    return [tick() for _ in range(8)]


def test_a_per_connection_cap_grows_the_count_far_past_16(tmp_path: Path) -> None:
    """Each step that doubles the rate quadruples the connections, up to the ceiling of 128."""
    clock, progress = _Clock(), Progress()
    split = Splitter(128, progress, clock=clock, sample_bytes=0)
    counts = _driver(split, progress, clock, _job(tmp_path, 400))
    assert counts[:5] == [1, 2, 8, 32, 128], counts
    assert split.target == 128


def test_a_settled_count_is_held_topped_up_and_probed_again(tmp_path: Path) -> None:
    """A step that does not pay settles at the level before it; finished helpers are replaced;
    where re-probing is asked for, after REPROBE seconds one more doubling is tried."""
    clock, progress = _Clock(), Progress()
    job = _job(tmp_path, 400)
    split = Splitter(128, progress, clock=clock, sample_bytes=0, reprobe=REPROBE)

    def tick(fetched: int, running: int, seconds: float = 1.0) -> int:
        clock.now += seconds
        progress.fetched = fetched
        return len(split.helpers([job], running))

    assert [tick(10, 1), tick(20, 1), tick(40, 2), tick(50, 8)] == [0, 1, 6, 0]
    assert not split.growing and split.target == 2, "8 connections gave 0.5x: back to 2"
    assert not split.keep(3) and split.keep(2), "extra helpers end with their chunk"
    assert tick(60, 1, seconds=0.1) == 1, "a finished stream is replaced at once"
    clock.now += REPROBE
    assert tick(80, 2) == 0 and split.growing, "re-probing: this tick starts the measurement"
    assert tick(100, 2) == 2 and split.target == 4


@pytest.mark.parametrize(("gain", "target"), [(1.2, 2), (1.4, 4)])
def test_a_step_that_pays_little_is_undone(tmp_path: Path, gain: float, target: int) -> None:
    """Doubling the connections for a 1.2x rise (uncapped, CPU-bound: helpers only add page-cache
    work) goes back to the level before; a 1.4x rise is kept but growth stops there."""
    clock, progress = _Clock(), Progress()
    job = _job(tmp_path, 400)
    split = Splitter(128, progress, clock=clock, sample_bytes=0)

    def tick(fetched: int, running: int) -> int:
        clock.now += 1.0
        progress.fetched = fetched
        return len(split.helpers([job], running))

    assert [tick(100, 2), tick(200, 2)] == [0, 2], "warm-up, then a first rate: try 4"
    assert tick(200 + int(100 * gain), 4) == 0
    assert not split.growing and split.target == target


def test_threads_waiting_for_a_cpu_stop_the_growth(tmp_path: Path) -> None:
    """Uncapped on a small or busy node the streams keep the cores busy: with the process's threads
    waiting for a CPU half the time, no helper is added. Once the count has grown with the rate
    (a per-connection cap) it goes on growing; without the kernel's figures it grows as well."""
    waited = [0.0]
    for starving_from, expected in ((0, 0), (1, 2 + 12 + 48), (None, 2 + 12 + 48)):
        clock, progress = _Clock(), Progress()
        job = _job(tmp_path, 400)
        waited[0] = 0.0

        def cpu_wait(from_tick: int | None = starving_from) -> float | None:
            return None if from_tick is None else waited[0]

        split = Splitter(128, progress, clock=clock, sample_bytes=0, cpu_wait=cpu_wait)
        added = 0
        for i, fetched in enumerate((100, 200, 400, 800)):
            clock.now += 1.0
            progress.fetched = fetched
            if starving_from is not None and i > starving_from:
                waited[0] += 0.8  # 0.8 threads waiting on average over this second
            added += len(split.helpers([job], 2 + added))
        assert added == expected, (starving_from, added)
    assert cpu_wait_s() is None or cpu_wait_s() >= 0


def test_429s_halve_the_count_and_hold_it_longer(tmp_path: Path) -> None:
    """A throttle signal halves the connections held and waits REPROBE_AFTER_BACKOFF to grow again."""
    clock, progress = _Clock(), Progress()
    job = _job(tmp_path, 400)
    split = Splitter(128, progress, clock=clock, sample_bytes=0)
    _driver(split, progress, clock, job)
    progress.connections = 128
    split.throttled()
    assert split.target == 64 and not split.growing and split.backoffs == 1
    assert not split.keep(65) and split.keep(64)
    clock.now += REPROBE
    assert split.helpers([job], 64) == [] and not split.growing, "no re-probe yet after a back-off"
    clock.now += REPROBE_AFTER_BACKOFF
    assert split.helpers([job], 64) == [] and split.growing


def test_rising_latency_backs_off(tmp_path: Path) -> None:
    """Requests answering 10x slower than at the start while growing: the count is halved."""
    clock, progress = _Clock(), Progress()
    job = _job(tmp_path, 400)
    split = Splitter(128, progress, clock=clock, sample_bytes=0)

    def tick(fetched: int, running: int, latency: float) -> int:
        clock.now += 1.0
        progress.fetched = fetched
        progress.connections = running
        split.latency(latency)
        return len(split.helpers([job], running))

    assert [tick(10, 1, 0.05), tick(20, 1, 0.05), tick(40, 2, 0.06)] == [0, 1, 6]
    assert tick(80, 8, 0.9) == 0, "latency 18x its floor"
    assert not split.growing and split.target == 4 and split.backoffs == 1


def test_a_measurement_waits_for_enough_bytes_per_connection(tmp_path: Path) -> None:
    """Bytes land a body buffer at a time: a tick that saw too few per connection decides nothing
    (behind a slow cap it measured the buffer size and settled at 2); a stalled link still
    gets a measurement after SAMPLE_MAX_WAIT."""
    clock, progress = _Clock(), Progress()
    job = _job(tmp_path, 400)
    split = Splitter(128, progress, clock=clock)

    def tick(fetched: int, running: int, seconds: float) -> int:
        clock.now += seconds
        progress.fetched = fetched
        return len(split.helpers([job], running))

    assert tick(SAMPLE_BYTES, 1, 0.5) == 0 and split.warm, "the warm-up window"
    assert tick(SAMPLE_BYTES + MIB // 2, 1, 0.5) == 0 and split.last_rate is None, "too few bytes yet"
    assert tick(2 * SAMPLE_BYTES, 1, 0.5) == 1, "a whole sample: one stream's rate, so try two"
    assert tick(2 * SAMPLE_BYTES + MIB, 2, 0.5) == 0 and split.growing, "two need twice the bytes"
    assert tick(2 * SAMPLE_BYTES + MIB, 2, SAMPLE_MAX_WAIT) == 0 and not split.growing, "a stall decides"


def test_by_default_a_settled_count_is_not_probed_again(tmp_path: Path) -> None:
    """Probes double the connections for a while and raised peak memory with the model's size:
    a download settles once unless a back-off asks for another look."""
    clock, progress = _Clock(), Progress()
    job = _job(tmp_path, 400)
    split = Splitter(128, progress, clock=clock, sample_bytes=0)

    def tick(fetched: int, running: int, seconds: float = 1.0) -> int:
        clock.now += seconds
        progress.fetched = fetched
        return len(split.helpers([job], running))

    assert [tick(10, 1), tick(20, 1), tick(40, 2), tick(50, 8)] == [0, 1, 6, 0]
    assert not split.growing and split.target == 2
    clock.now += 10 * REPROBE
    assert tick(80, 2) == 0 and tick(100, 2) == 0 and not split.growing and split.target == 2


def test_pieces_from_peers_keep_a_fixed_count_whatever_the_rate(tmp_path: Path) -> None:
    """With peers in front, a node's rate is set by how many pieces it has in flight, not by
    rates per tick: the count starts settled (at most --max-workers) and only a 429/503 lowers it."""
    clock, progress = _Clock(), Progress()
    split = Splitter(128, progress, clock=clock, sample_bytes=0, fixed=16)
    assert (split.fixed, split.growing, split.target) == (True, False, 16)
    job = _job(tmp_path, 64)
    running = 1
    for rate in (10, 1, 1000, 0):  # rates that would grow, settle or stop a measured count
        clock.now += 1
        progress.fetched += rate
        running += len(split.helpers([job], running))
        assert split.target == 16 and running == 16
    progress.connection(running)
    split.throttled()
    assert split.target == 8 and not split.keep(running)
    assert Splitter(4, Progress(), fixed=16).target == 4  # never past --max-workers


def test_peer_workers_take_pieces_in_one_order_across_files(tmp_path: Path) -> None:
    """Every node walks the same order, so the nodes work on the same few pieces at a time."""
    first, second = _job(tmp_path, 3), _job(tmp_path, 2)  # _job has claimed chunk 0 of each
    picks = []
    while (pick := next_piece([first, second])) is not None:
        picks.append((pick[0] is first, pick[1]))
    assert picks == [(True, 1), (True, 2), (False, 1)]
