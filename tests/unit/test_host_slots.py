"""The per-host connection ceiling that every transfer in a process shares: splitters of several
downloads together stay under it, a stream waits for a free slot, a cancelled wait ends."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from agent.engine.job import Job
from agent.engine.progress import Progress
from agent.engine.splitter import HostSlots, Splitter, host_slots
from agent.engine.transfer import Cancelled
from agent.integrity import SHA256, Digest
from agent.manifest import RemoteFile

MIB = 1 << 20


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _job(tmp_path: Path, name: str, chunks: int) -> Job:
    data = bytes(chunks * MIB)
    f = RemoteFile(f"{name}.bin", len(data), Digest(SHA256, hashlib.sha256(data).hexdigest()))
    job = Job(f, tmp_path / f"{name}.part", [tmp_path / f"{name}.bin"], MIB)
    assert job.claim_next() == 0
    return job


class _Download:
    """One transfer's splitter and its running connections, each holding a slot as a task does."""

    def __init__(self, tmp_path: Path, name: str, slots: HostSlots, clock: _Clock) -> None:
        self.progress = Progress()
        self.split = Splitter(64, self.progress, clock=clock, sample_bytes=0, slots=slots)
        self.job = _job(tmp_path, name, 400)
        self.slots = slots
        slots.take_one(lambda: None)  # the file's stream
        self.running = 1

    def tick(self) -> None:
        """A per-connection-capped second: every connection moved 10 bytes."""
        self.progress.fetched += 10 * self.running
        for _ in self.split.helpers([self.job], self.running):
            self.slots.take_one(lambda: None)  # never waits here: the splitter saw the slot free
            self.running += 1


def test_two_downloads_together_stay_under_the_host_ceiling(tmp_path: Path) -> None:
    """Alone a capped download grows to its --max-workers (64); two at once share a ceiling of 40:
    the first grows into it, the second gets what is left, and a slot given back is taken again."""
    clock = _Clock()
    slots = HostSlots(40)
    a = _Download(tmp_path, "a", slots, clock)
    b = _Download(tmp_path, "b", slots, clock)
    for _ in range(8):
        clock.now += 1.0
        a.tick()
        b.tick()
        assert slots.used == a.running + b.running <= 40
    assert slots.used == 40 and a.running > b.running >= 2, (a.running, b.running)
    # One of a's helpers ends: its slot goes to a splitter still growing (b, once it has measured
    # again: a full house made it start its measurement afresh).
    a.running -= 1
    slots.give()
    assert slots.free() == 1
    for _ in range(2):
        clock.now += 1.0
        b.tick()
    assert slots.used == 40 and a.running + b.running == 40


def test_a_stream_waits_for_a_slot_and_a_cancelled_wait_ends(tmp_path: Path) -> None:
    """With every slot held, a file's stream waits until one is given back; a transfer that is
    cancelled meanwhile stops waiting with its own error and takes nothing."""
    slots = HostSlots(2)
    slots.take_one(lambda: None)
    slots.take_one(lambda: None)
    got = threading.Event()

    def stream() -> None:
        slots.take_one(lambda: None, poll=0.01)
        got.set()

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(0.1)
    assert not got.is_set() and slots.used == 2
    slots.give()
    thread.join(5)
    assert got.is_set() and slots.used == 2

    cancel = threading.Event()

    def check() -> None:
        if cancel.is_set():
            raise Cancelled("cancelled")

    errors: list[BaseException] = []

    def waiting() -> None:
        try:
            slots.take_one(check, poll=0.01)
        except Cancelled as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiting)
    thread.start()
    cancel.set()
    thread.join(5)
    assert len(errors) == 1 and slots.used == 2


def test_the_process_shares_one_ceiling_per_host() -> None:
    """Transfers to the same host get the same slots (the latest setting wins); another host has its own."""
    first = host_slots("hf https://cdn.test.invalid", 16)
    assert host_slots("hf https://cdn.test.invalid", 8) is first and first.limit == 8
    other = host_slots("hf https://mirror.test.invalid", 8)
    assert other is not first and other.used == 0


@pytest.mark.parametrize("limit", [0, -3])
def test_a_ceiling_below_one_still_lets_one_connection_run(limit: int) -> None:
    """A download always makes progress: one connection at least."""
    slots = HostSlots(limit)
    slots.take_one(lambda: None)
    assert slots.used == 1 and slots.free() == 0
