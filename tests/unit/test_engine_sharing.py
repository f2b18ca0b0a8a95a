"""A transfer's files on the shelf, in-process: what a peer may read while they are assembled, and a
peer's request for a chunk nobody has taken, fetched from the origin (not the peers) at once."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from agent.engine.progress import Progress
from agent.engine.sharing import Shelf
from agent.engine.transfer import Transfer, TransferOptions
from agent.integrity import SHA256, Digest
from agent.manifest import RemoteFile
from agent.node.peerserve import PeerServer
from agent.sources.base import Block, Snapshot, Source
from agent.spec import ModelSpec
from agent.store import Placement

MIB = 1 << 20
DATA = os.urandom(8 * MIB)
FILE = RemoteFile("w.bin", len(DATA), Digest(SHA256, hashlib.sha256(DATA).hexdigest()))
SNAP = Snapshot("c" * 40, (FILE,), "fake")


class Gated:
    """A source whose ranges wait for `gate` (so a test can look at a transfer mid-way)."""

    name = "fake"

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.requests: list[int] = []

    @contextlib.contextmanager
    def open_range(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Iterator[Iterator[Block]]:
        self.requests.append(start)
        self.gate.wait(10)
        yield iter([DATA[p : min(end, p + (256 << 10))] for p in range(start, end, 256 << 10)])

    def snapshot(self, spec: ModelSpec) -> Snapshot:
        return SNAP

    def close(self) -> None:
        pass


class Front:
    """A source in front of an origin (as the peer source is): the engine must send a peer's
    request to `origin`, never through the front."""

    name = "fake"

    def __init__(self, inner: Source, origin: Source) -> None:
        self.inner = inner  # what the engine's own streams get (peers, then the origin)
        self.origin = origin
        self.requests: list[int] = []

    @contextlib.contextmanager
    def open_range(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Iterator[Iterator[Block]]:
        self.requests.append(start)
        with self.inner.open_range(spec, snap, file, start, end) as blocks:
            yield blocks

    def snapshot(self, spec: ModelSpec) -> Snapshot:
        return SNAP

    def close(self) -> None:
        pass


def test_a_peer_reads_what_is_written_and_pulls_a_chunk_nobody_took(tmp_path: Path) -> None:
    front_gate, origin_gate = threading.Event(), threading.Event()
    origin = Gated(origin_gate)
    front = Front(Gated(front_gate), origin)  # the engine's own stream waits at the front's gate
    shelf = Shelf()
    placement = Placement(FILE, tmp_path / "out" / "w.bin", tmp_path / "staging" / "w.part")
    opts = TransferOptions(max_workers=2, chunk_size=MIB, progress_interval=60, shelf=shelf)
    transfer = Transfer(front, ModelSpec("org/name"), SNAP, opts, Progress())
    runner = threading.Thread(target=transfer.run, args=([placement],))
    origin_gate.set()  # a peer's request goes straight to this origin, which answers at once
    runner.start()
    try:
        shared = None
        for _ in range(500):
            shared = shelf.get(FILE.digest.hex)
            if shared is not None:
                break
            threading.Event().wait(0.01)
        assert shared is not None and shared.active and not shared.complete
        assert shared.available(5 * MIB) == 0
        assert shared.request(5 * MIB)  # nobody took chunk 5: the transfer fetches it now
        for _ in range(500):
            if shared.available(5 * MIB) == MIB:
                break
            threading.Event().wait(0.01)
        assert shared.available(5 * MIB) == MIB and shared.available(5 * MIB + 1000) == MIB - 1000
        assert 5 * MIB in origin.requests and 5 * MIB not in front.requests
        fd = shared.open()
        try:
            assert os.pread(fd, MIB, 5 * MIB) == DATA[5 * MIB : 6 * MIB]
        finally:
            os.close(fd)
    finally:
        front_gate.set()
        runner.join(30)
    assert not runner.is_alive()
    assert placement.final.read_bytes() == DATA
    assert shelf.get(FILE.digest.hex) is None and not shared.active  # off the shelf once the round ends
    assert not shared.request(0)  # nothing more will be fetched for it


def test_a_piece_of_a_file_not_started_yet_is_served_once_its_fetch_opens_it(tmp_path: Path) -> None:
    """Every node reaches a model's next file at about the same time: a peer's request for its
    first piece arrives before this node has created the part file. The peer port pulls the
    piece and waits for the file instead of answering "not here" (which sent the asker, and
    the next owner it tried, to the origin for the same piece)."""
    other = os.urandom(2 * MIB)
    second = RemoteFile("x.bin", len(other), Digest(SHA256, hashlib.sha256(other).hexdigest()))
    both = Snapshot("c" * 40, (FILE, second), "fake")
    gate = threading.Event()

    asked: list[tuple[str, int]] = []

    class Origin(Gated):
        @contextlib.contextmanager
        def open_range(
            self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
        ) -> Iterator[Iterator[Block]]:
            asked.append((file.path, start))
            if file is FILE:
                self.gate.wait(10)  # the node's one worker waits here, on w.bin
            yield iter([(DATA if file is FILE else other)[start:end]])

    origin = Origin(gate)
    front = Front(origin, origin)
    shelf = Shelf()
    placements = [
        Placement(f, tmp_path / "out" / f.path, tmp_path / "staging" / f"{f.path}.part")
        for f in (FILE, second)
    ]
    opts = TransferOptions(max_workers=1, chunk_size=MIB, progress_interval=60, shelf=shelf)
    transfer = Transfer(front, ModelSpec("org/name"), both, opts, Progress())
    server = PeerServer(("127.0.0.1", 0), shelf, lambda key: None, None)
    server.start()
    runner = threading.Thread(target=transfer.run, args=(placements,))
    runner.start()
    try:
        for _ in range(500):
            if shelf.get(second.digest.hex) is not None:
                break
            threading.Event().wait(0.01)
        assert not placements[1].part.exists()  # nobody has touched x.bin yet
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request(
            "GET", f"/peer/v1/blobs/sha256/{second.digest.hex}", headers={"Range": f"bytes=0-{MIB - 1}"}
        )
        reply = conn.getresponse()
        assert (reply.status, reply.read()) == (206, other[:MIB])
        conn.close()
    finally:
        gate.set()
        runner.join(30)
        server.stop()
    assert not runner.is_alive()
    assert [p.final.read_bytes() for p in placements] == [DATA, other]
    assert asked.count(("x.bin", 0)) == 1  # pulled for the peer, and not fetched again
