"""Peer fan-out: a source that takes each piece from the peer that owns it, else the origin.

`PeeredSource` wraps the origin source (the hub, a bucket, a directory). The listing always
comes from the origin, so every expected hash does too; a peer only ever supplies bytes,
addressed by that hash, and those bytes go through the same hashing as the origin's. A piece
(one chunk of the transfer) belongs to the peer ranked first for it (peerset.py); that peer
fetches it from the origin once, even on behalf of others who ask before it got there, and
streams it to them while it arrives. So the origin sends each byte about once per cluster
and every node uploads about its share.

A peer that does not answer, answers slowly or does not have the file costs one request: the
next candidate is tried, then the origin. A stream that breaks mid-way continues from the
origin at the byte where it stopped. A file whose hash fails is fetched again from the origin
only, and every peer that supplied part of it is excluded for a while (peerset.EXCLUDED_FOR).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from agent import log
from agent.errors import TransientError
from agent.manifest import RemoteFile
from agent.sources.base import Block, Snapshot, Source, SourceFactory
from agent.sources.peerset import SELF, PeerSet
from agent.sources.ranged import RangedReader
from agent.spec import ModelSpec

PIECE = 16 << 20  # the unit peers are ranked for: small enough to spread evenly over 8-32 nodes
MAX_ASKED = 2  # peers asked for one piece before the origin (each miss is one round trip)
CONNECT_TIMEOUT = 2.0
STALL_TIMEOUT = 10.0  # no byte from a peer for this long: it is slow or dead, go elsewhere
# Nodes told to fetch a model at once start within moments of each other: an owner that has
# not listed the model yet answers "not here" at first. For this long after our own listing a
# miss is asked again (every MISS_RETRY seconds) instead of fetching the piece from the origin
# twice.
START_GRACE = 3.0
MISS_RETRY = 0.25
COMPUTED = "source-computed"  # no expected hash before the copy: nothing to address peers by


class PeerMiss(Exception):
    """The peer does not have (and is not fetching) this content."""


class PeerStats:
    """Process-wide counters (the agent's metrics read them); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.origin_bytes = 0
        self.peer_bytes = 0
        self.peer_errors = 0

    def add(self, *, origin: int = 0, peer: int = 0, errors: int = 0) -> None:
        with self._lock:
            self.origin_bytes += origin
            self.peer_bytes += peer
            self.peer_errors += errors


def blob_path(file: RemoteFile) -> str:
    """The one thing a peer is asked for: content by its expected hash."""
    return f"/peer/v1/blobs/{file.digest.algo}/{file.digest.hex}"


class PeerClient:
    """Ranged GETs of blobs from peers over keep-alive connections."""

    def __init__(self, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._reader = RangedReader(ssl.create_default_context(), CONNECT_TIMEOUT, STALL_TIMEOUT, headers)

    @contextmanager
    def open(self, peer: str, file: RemoteFile, start: int, end: int) -> Iterator[Iterator[memoryview]]:
        """Bytes [start, end) of `file` from `peer`; PeerMiss when it has none of it, a
        TransientError when it cannot be reached or breaks off."""
        what = f"peer {peer}"
        headers = {"Range": f"bytes={start}-{end - 1}"}
        with self._reader.get(f"http://{peer}{blob_path(file)}", headers, what) as (reply, body):
            if reply.status == 404:
                raise PeerMiss(peer)
            if (
                reply.status != 206
                or reply.headers.get("Content-Range", "").split("-", 1)[0] != f"bytes {start}"
            ):
                raise TransientError(f"{what}: HTTP {reply.status} for a range request")
            yield body.blocks(0, end - start)

    def close(self) -> None:
        self._reader.close()


class PeeredSource:
    """The origin source, with each piece taken from its owner among the peers when possible."""

    def __init__(self, origin: Source, peers: PeerSet, client: PeerClient, stats: PeerStats) -> None:
        self._inner = origin
        self.origin: Source = _CountedOrigin(origin, self)  # also what pieces peers asked for use
        self.name = origin.name
        self._peers = peers
        self._client = client
        self._stats = stats
        self._lock = threading.Lock()
        self._suppliers: dict[str, set[str]] = {}  # content hash -> peers that sent some of it
        self._origin_only: set[str] = set()  # content whose hash failed with peer bytes in it
        self.origin_bytes = 0
        self.peer_bytes = 0
        self._listed = time.monotonic()
        self._log = log.get()

    def snapshot(self, spec: ModelSpec) -> Snapshot:
        snap = self._inner.snapshot(spec)
        self._listed = time.monotonic()
        if snap.hash_origin == COMPUTED or snap.chunk_size is not None:
            return snap
        # Every node must cut files alike, so that a chunk is one piece with one owner.
        return Snapshot(snap.commit, snap.files, snap.source, snap.endpoint, snap.hash_origin, PIECE)

    def open_range(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> AbstractContextManager[Iterator[Block]]:
        return self._open(spec, snap, file, start, end)

    @contextmanager
    def _open(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Iterator[Iterator[Block]]:
        key = file.digest.hex
        if snap.hash_origin == COMPUTED or key in self._origin_only:
            with self._from_origin(spec, snap, file, start, end) as blocks:
                yield blocks
            return
        for peer in self._peers.ranked(f"{key}/{start // PIECE}")[:MAX_ASKED]:
            if peer == SELF:
                break
            try:
                cm, blocks = self._ask(peer, file, start, end)
            except PeerMiss:
                continue
            except TransientError as exc:
                self._failed(peer, exc)
                continue
            try:
                yield self._peer_then_origin(peer, blocks, spec, snap, file, start, end)
            finally:
                cm.__exit__(None, None, None)
            return
        with self._from_origin(spec, snap, file, start, end) as blocks:
            yield blocks

    def _ask(
        self, peer: str, file: RemoteFile, start: int, end: int
    ) -> tuple[AbstractContextManager[Iterator[memoryview]], Iterator[memoryview]]:
        while True:
            cm = self._client.open(peer, file, start, end)
            try:
                return cm, cm.__enter__()
            except PeerMiss:
                if time.monotonic() - self._listed > START_GRACE:
                    raise
            time.sleep(MISS_RETRY)

    def _peer_then_origin(
        self,
        peer: str,
        blocks: Iterator[memoryview],
        spec: ModelSpec,
        snap: Snapshot,
        file: RemoteFile,
        start: int,
        end: int,
    ) -> Iterator[Block]:
        pos = start
        with self._lock:
            self._suppliers.setdefault(file.digest.hex, set()).add(peer)
        try:
            for block in blocks:
                pos += len(block)
                self._count(peer=len(block))
                yield block
        except TransientError as exc:
            self._failed(peer, exc)
        if pos < end:
            with self._from_origin(spec, snap, file, pos, end) as rest:
                yield from rest

    def _from_origin(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> AbstractContextManager[Iterator[Block]]:
        return self.origin.open_range(spec, snap, file, start, end)

    def counted(self, blocks: Iterator[Block]) -> Iterator[Block]:
        """`blocks` from the origin, counted."""
        for block in blocks:
            self._count(origin=len(block))
            yield block

    def _count(self, *, origin: int = 0, peer: int = 0) -> None:
        with self._lock:
            self.origin_bytes += origin
            self.peer_bytes += peer
        self._stats.add(origin=origin, peer=peer)

    def _failed(self, peer: str, exc: Exception) -> None:
        self._peers.down(peer)
        self._stats.add(errors=1)
        self._log.warning("peer_failed", peer=peer, error=str(exc), action="next peer or origin")

    def hash_failed(self, file: RemoteFile) -> None:
        """The file's bytes did not match: distrust whoever supplied some, refetch from the origin."""
        with self._lock:
            suppliers = self._suppliers.pop(file.digest.hex, set())
            if suppliers:
                self._origin_only.add(file.digest.hex)
        for peer in sorted(suppliers):
            self._peers.exclude(peer)
            self._log.warning("peer_excluded", peer=peer, file=file.path, reason="hash mismatch")

    def bytes_by_source(self) -> dict[str, int]:
        """What this download received from the origin and from peers."""
        with self._lock:
            return {"origin_bytes": self.origin_bytes, "peer_bytes": self.peer_bytes}

    def close(self) -> None:
        self._inner.close()


class _CountedOrigin:
    """The origin source, its bytes counted as the origin's."""

    def __init__(self, origin: Source, owner: PeeredSource) -> None:
        self._origin = origin
        self._owner = owner
        self.name = origin.name

    def snapshot(self, spec: ModelSpec) -> Snapshot:
        return self._origin.snapshot(spec)

    @contextmanager
    def open_range(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Iterator[Iterator[Block]]:
        with self._origin.open_range(spec, snap, file, start, end) as blocks:
            yield self._owner.counted(blocks)

    def close(self) -> None:
        self._origin.close()


SourcesFor = Callable[[Sequence[str]], list[SourceFactory]]


class Peering:
    """Everything one process shares between its peer-aware downloads."""

    def __init__(self, peers: PeerSet, token: str | None) -> None:
        self.peers = peers
        self.token = token
        self.client = PeerClient(token)
        self.stats = PeerStats()

    def wrap(self, factory: SourceFactory) -> SourceFactory:
        """`factory`'s source with peers in front of it."""
        return lambda: PeeredSource(factory(), self.peers, self.client, self.stats)

    def wrapping(
        self, sources: Callable[[Sequence[str]], list[SourceFactory]]
    ) -> Callable[[Sequence[str]], list[SourceFactory]]:
        """A model's-sources-to-factories function with peers in front of every source."""
        return lambda names: [self.wrap(f) for f in sources(names)]
