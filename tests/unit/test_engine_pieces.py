"""The engine's pieces in-process: when the splitter adds connections, the hash frontier, and a
whole transfer against a fake source (duplicates linked, a corrupt body refetched)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.engine import hashing
from agent.engine.job import Job
from agent.engine.progress import Progress
from agent.engine.splitter import Splitter
from agent.engine.transfer import Transfer, TransferOptions
from agent.integrity import SHA256, Digest
from agent.manifest import RemoteFile
from agent.sources.base import Block, Snapshot
from agent.spec import ModelSpec
from agent.store import Placement
from agent.store.fs import PendingDirs

MIB = 1 << 20


def _file(data: bytes, path: str = "w.bin") -> RemoteFile:
    return RemoteFile(path, len(data), Digest(SHA256, hashlib.sha256(data).hexdigest()))


def _no_stop() -> None:
    pass


def test_the_splitter_doubles_connections_while_the_rate_rises_then_stops(tmp_path: Path) -> None:
    now = [0.0]
    progress = Progress()
    job = Job(_file(bytes(8 * MIB)), tmp_path / "h.part", [tmp_path / "w.bin"], MIB)
    split = Splitter(16, progress, clock=lambda: now[0], sample_bytes=0)
    assert split.helpers([job], 1) == [], "no helper before the stream has started"

    def tick(fetched: int, running: int, seconds: float = 1.0) -> list[int]:
        now[0] += seconds
        progress.fetched = fetched
        return [idx for _, idx in split.helpers([job], running)]

    assert job.claim_next() == 0
    assert tick(10, 1) == [], "the first tick covers connection set-up"
    assert tick(20, 1, seconds=0.1) == [], "too soon to measure"
    assert tick(30, 1) == [7], "a first rate: double the connections, from the far end"
    assert tick(60, 2) == [6, 5], "the rate rose 1.65x (20 / 1.1 s, then 30 / s): double again"
    assert tick(92, 4) == [], "the rate rose only 1.07x: splitting stops"
    assert tick(1000, 4) == [] and not split.growing


def test_a_proportional_rise_takes_every_connection_and_a_full_pool_measures_afresh(tmp_path: Path) -> None:
    now = [0.0]
    progress = Progress()
    job = Job(_file(bytes(16 * MIB)), tmp_path / "h.part", [tmp_path / "w.bin"], MIB)
    job.claim_next()
    split = Splitter(8, progress, clock=lambda: now[0], sample_bytes=0)

    def tick(fetched: int, running: int) -> int:
        now[0] += 1.0
        progress.fetched = fetched
        return len(split.helpers([job], running))

    assert [tick(10, 1), tick(20, 1), tick(40, 2)] == [0, 1, 6], "2x the rate: straight to max_workers"
    assert tick(60, 8) == 0 and not split.warm, "every worker busy: the next tick is a warm-up again"
    assert tick(80, 7) == 0 and split.warm and split.growing


def test_the_hash_frontier_hashes_in_order_and_reads_back_only_what_it_must(tmp_path: Path) -> None:
    data = os.urandom(3 * MIB)
    final = tmp_path / "out" / "w.bin"
    job = Job(_file(data), tmp_path / "s" / "h.part", [final], MIB)
    assert job.open() and job.chunks == [(0, MIB), (MIB, 2 * MIB), (2 * MIB, 3 * MIB)]
    fd = job.ingest.fd
    assert fd is not None

    # A helper wrote the last chunk, ahead of the frontier: nothing to hash yet.
    os.pwrite(fd, data[2 * MIB :], 2 * MIB)
    job.written[2], job.cached[2] = MIB, True
    assert not hashing.advance(job, _no_stop) and job.hash_pos == 0

    # The stream's chunk is hashed in memory as it lands (skipped while another thread hashes).
    step = 256 << 10
    for off in range(0, MIB, step):
        os.pwrite(fd, data[off : off + step], off)
        if off == step:
            with job.hash_lock:
                hashing.fold(job, 0, data[off : off + step], off, _no_stop)
            assert job.hash_pos == step, "held elsewhere: left to the read-back"
        else:
            hashing.fold(job, 0, data[off : off + step], off, _no_stop)
        job.written[0] = off + step
    assert job.hash_pos == MIB, "the next block read the skipped one back, then went on in memory"
    assert hashing.hashable(job) is None, "chunk 1 is not complete"

    # Half of chunk 1 came from an earlier run: read back once, then hashed in memory.
    half = MIB + MIB // 2
    os.pwrite(fd, data[MIB:], MIB)
    job.written[1] = MIB // 2
    hashing.fold(job, 1, data[half : 2 * MIB], half, _no_stop)
    assert job.hash_pos == 2 * MIB
    job.written[1] = MIB

    assert hashing.advance(job, _no_stop), "all hashed: this caller commits"
    assert not hashing.advance(job, _no_stop), "and only this one"
    assert job.hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert job.commit(PendingDirs(), drop_cache=False)
    assert final.read_bytes() == data
    assert not job.open(), "a worker arriving late does not recreate the part file"


class _FakeSource:
    """Serves `files` by path in 64 KiB blocks; the first body of `corrupt_once` is corrupt."""

    name = "fake"

    def __init__(self, files: dict[str, bytes], corrupt_once: str) -> None:
        self.files = files
        self.corrupt = {corrupt_once}
        self.requests: list[tuple[str, int, int]] = []

    @contextlib.contextmanager
    def open_range(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Iterator[Iterator[Block]]:
        self.requests.append((file.path, start, end))
        body = self.files[file.path][start:end]
        if file.path in self.corrupt:
            self.corrupt.discard(file.path)
            body = bytes(len(body))
        yield iter([body[i : i + (64 << 10)] for i in range(0, len(body), 64 << 10)])

    def snapshot(self, spec: ModelSpec) -> Snapshot:
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_a_transfer_links_duplicates_refetches_a_corrupt_body_and_publishes_read_only(tmp_path: Path) -> None:
    blobs = {"a.bin": os.urandom(3 * MIB), "copy/a.bin": b"", "b.bin": os.urandom(100_000), "empty": b""}
    blobs["copy/a.bin"] = blobs["a.bin"]
    files = {path: _file(data, path) for path, data in blobs.items()}
    out, staging = tmp_path / "out", tmp_path / "staging"
    placements = [Placement(f, out / f.path, staging / f"{f.digest.hex}.part") for f in files.values()]
    source = _FakeSource(blobs, corrupt_once="b.bin")
    snap = Snapshot("c" * 40, tuple(files.values()), "fake")
    progress = Progress()
    old = os.umask(0o077)
    try:
        opts = TransferOptions(max_workers=4, chunk_size=MIB, progress_interval=60)
        Transfer(source, ModelSpec("org/name"), snap, opts, progress).run(placements)
    finally:
        os.umask(old)
    for path, data in blobs.items():
        assert (out / path).read_bytes() == data
        assert stat.S_IMODE((out / path).stat().st_mode) == 0o444
    assert (out / "a.bin").stat().st_ino == (out / "copy/a.bin").stat().st_ino
    assert stat.S_IMODE((out / "copy").stat().st_mode) == 0o755
    assert [r for r in source.requests if r[0] == "b.bin"] == [("b.bin", 0, 100_000)] * 2
    assert sorted(r for r in source.requests if r[0] == "a.bin") == [
        ("a.bin", i * MIB, (i + 1) * MIB) for i in range(3)
    ]
    assert (progress.files_done, progress.files_total) == (3, 3)
    assert progress.total == 3 * MIB + 100_000
    assert progress.fetched == progress.total + 100_000, "the corrupt body was fetched twice"
    assert not any(staging.iterdir()), "no part file or journal left behind"


@pytest.mark.parametrize("present", [True, False])
def test_a_file_already_in_place_or_reusable_is_linked_not_fetched(tmp_path: Path, present: bool) -> None:
    data = os.urandom(1000)
    f = _file(data)
    older = tmp_path / "older" / "w.bin"
    older.parent.mkdir()
    older.write_bytes(data)
    placements = [
        Placement(f, tmp_path / "new" / name, tmp_path / "s" / "h.part") for name in ("w.bin", "x.bin")
    ]
    if present:
        placements[0].final.parent.mkdir()
        os.link(older, placements[0].final)
    source = _FakeSource({}, corrupt_once="")
    t = Transfer(
        source, ModelSpec("org/name"), Snapshot("c" * 40, (f,), "fake"), TransferOptions(), Progress()
    )
    t.run(placements, reuse={} if present else {f.digest.hex: older})
    assert source.requests == []
    assert all(p.final.read_bytes() == data for p in placements)
