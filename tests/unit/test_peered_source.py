"""The peer source's choice of whom to ask, against a real refused connection on loopback (a
peer port nothing listens on yet) and an in-memory origin."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator

import pytest

from agent.integrity import SHA256, Digest
from agent.manifest import RemoteFile
from agent.sources import peers
from agent.sources.base import Block, Snapshot
from agent.sources.peerclient import PeerClient, PeerStats
from agent.sources.peers import PIECE, PeeredSource
from agent.sources.peerset import SELF, PeerSet, parse_peers, peer_id
from agent.spec import ModelSpec
from tests.conftest import free_port

DATA = os.urandom(2 * PIECE)
FILE = RemoteFile("w.bin", len(DATA), Digest(SHA256, hashlib.sha256(DATA).hexdigest()))
SPEC = ModelSpec("org/name")


class Origin:
    name = "origin"

    def __init__(self) -> None:
        self.asked: list[int] = []

    def snapshot(self, spec: ModelSpec) -> Snapshot:
        return Snapshot("c" * 40, (FILE,), "origin")

    @contextlib.contextmanager
    def open_range(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Iterator[Iterator[Block]]:
        self.asked.append(start)
        yield iter([memoryview(DATA[start:end])])

    def close(self) -> None:
        pass


def test_a_peer_still_starting_is_not_marked_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents of a rollout start seconds apart: a peer that refuses in the first START_GRACE
    seconds after listing is one not listening yet. Marked down, its pieces would be dealt to
    the others in this node's view and fetched from the origin twice."""
    mine, theirs = free_port(), free_port()  # nothing listens on either
    peer = peer_id("127.0.0.2", theirs)
    peerset = PeerSet(parse_peers(f"http://127.0.0.1:{mine},http://127.0.0.2:{theirs}"), port=mine)
    stats = PeerStats()
    origin = Origin()
    source = PeeredSource(origin, peerset, PeerClient(None), stats)
    snap = source.snapshot(SPEC)
    assert snap.chunk_size == PIECE
    # A piece this node owns: it asks the peer ranked after it for what that one has already.
    index = next(i for i in range(2) if peerset.ranked(FILE.digest.hex, i)[0] == SELF)
    start = index * PIECE

    def fetch() -> bytes:
        with source.open_range(SPEC, snap, FILE, start, start + PIECE) as blocks:
            return b"".join(bytes(b) for b in blocks)

    assert fetch() == DATA[start : start + PIECE]
    assert peer in peerset.live() and stats.peer_errors == 0  # refused while starting: not down
    # Long after the listing, a refusal is a dead peer: set aside for a while (peerset.DOWN_FOR).
    monkeypatch.setattr(peers, "START_GRACE", -1.0)
    assert fetch() == DATA[start : start + PIECE]
    assert peer not in peerset.live() and stats.peer_errors == 1
    assert set(origin.asked) == {start}  # the piece (and the spot checks of peer bytes) from the origin
