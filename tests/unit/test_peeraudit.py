"""Blame after a hash failure and spot checks, against an in-memory origin (a stand-in Source)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.errors import TransientError
from agent.integrity import SHA256, Digest
from agent.manifest import RemoteFile
from agent.sources.base import Block, Snapshot
from agent.sources.peeraudit import BLAME_SAMPLE, FIRST_CHECKED, Audit, Supplied
from agent.spec import ModelSpec

DATA = os.urandom(1 << 20)
FILE = RemoteFile("w.safetensors", len(DATA), Digest(SHA256, hashlib.sha256(DATA).hexdigest()))
SPEC = ModelSpec(repo="org/m")
SNAP = Snapshot("0" * 40, (FILE,), "hf")


class Origin:
    """The origin's bytes from memory; counts what it sent, or fails when `down`."""

    name = "hf"

    def __init__(self) -> None:
        self.sent = 0
        self.down = False

    def snapshot(self, spec: ModelSpec) -> Snapshot:
        return SNAP

    @contextmanager
    def open_range(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Iterator[Iterator[Block]]:
        if self.down:
            raise TransientError("origin down")

        def blocks() -> Iterator[Block]:
            for pos in range(start, end, 64 << 10):
                piece = DATA[pos : min(end, pos + (64 << 10))]
                self.sent += len(piece)
                yield piece

        yield blocks()

    def close(self) -> None:
        pass


def _part(tmp_path: Path, bad: list[int]) -> Path:
    data = bytearray(DATA)
    for at in bad:
        data[at] ^= 0xFF
    part = tmp_path / "w.part"
    part.write_bytes(bytes(data))
    return part


def test_a_crude_liar_is_found_by_the_leading_samples_alone(tmp_path: Path) -> None:
    origin = Origin()
    part = _part(tmp_path, bad=[530_000])  # within the first BLAME_SAMPLE bytes of its range
    supplied = [Supplied("honest", 0, 512 << 10), Supplied("liar", 512 << 10, 1 << 20)]
    blamed = Audit(origin).blame(SPEC, SNAP, FILE, part, supplied)
    assert list(blamed) == ["liar"]
    assert origin.sent == 2 * BLAME_SAMPLE  # no range fetched whole


def test_a_subtle_liar_is_found_by_comparing_every_byte(tmp_path: Path) -> None:
    origin = Origin()
    part = _part(tmp_path, bad=[(1 << 20) - 1])  # the last byte of the liar's range
    supplied = [Supplied("honest", 0, 512 << 10), Supplied("liar", 512 << 10, 1 << 20)]
    assert list(Audit(origin).blame(SPEC, SNAP, FILE, part, supplied)) == ["liar"]


def test_bad_bytes_from_the_origin_itself_blame_no_peer(tmp_path: Path) -> None:
    part = _part(tmp_path, bad=[10])  # in a range the origin sent, not a peer
    assert Audit(Origin()).blame(SPEC, SNAP, FILE, part, [Supplied("honest", 512 << 10, 1 << 20)]) == {}


def test_a_peer_is_blamed_when_the_origin_cannot_vouch_for_it(tmp_path: Path) -> None:
    origin = Origin()
    origin.down = True
    blamed = Audit(origin).blame(SPEC, SNAP, FILE, _part(tmp_path, bad=[]), [Supplied("p", 0, 100)])
    assert "could not be compared" in blamed["p"]


def test_spot_checks_continue_until_a_peer_passed_enough_of_them() -> None:
    audit = Audit(Origin())
    sample = audit.sample(SPEC, SNAP, FILE, 4096, 8192).result()
    assert sample == DATA[4096:8192]
    for _ in range(3 * FIRST_CHECKED):  # failing checks never earn trust
        assert audit.wants_check("liar")
        assert not audit.matches("liar", sample, b"\x00" * 4096)
    for _ in range(FIRST_CHECKED):
        assert audit.wants_check("good")
        assert audit.matches("good", sample, memoryview(DATA)[4096 : 4096 + 65536])
    assert sum(audit.wants_check("good") for _ in range(2000)) < 400  # then about one in 16
    assert audit.matches("x", None, b"anything")  # no origin to compare with: the hash decides
