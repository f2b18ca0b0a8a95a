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

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from agent import log
from agent.errors import ConnectionRefused, PreloadError, TransientError
from agent.manifest import RemoteFile
from agent.sources.base import Block, Snapshot, Source, SourceFactory
from agent.sources.peeraudit import Audit, Supplied
from agent.sources.peerclient import PeerClient, PeerMiss, PeerStats
from agent.sources.peerset import SELF, PeerSet, score
from agent.spec import ModelSpec

PIECE = 8 << 20  # the unit peers are ranked for: small enough to spread uploads evenly over the nodes
MAX_ASKED = 2  # peers asked for one piece before the origin (each miss is one round trip)
SEEDERS_TTL = 10.0  # seconds a file's list of peers holding all of it is trusted
NO_SEEDERS_TTL = 3.0  # ... and that no peer holds it (nodes finish files all the time)
SEEDER, OWNER, PREVIOUS = "seeder", "owner", "previous"
# Nodes told to fetch a model at once (a rollout) start within seconds of each other: an owner
# that is not listening yet refuses, one that has not listed the model yet answers "not here".
# For this long after our own listing either is asked again (every MISS_RETRY seconds) instead
# of fetching the piece from the origin twice.
START_GRACE = 5.0
MISS_RETRY = 0.25
COMPUTED = "source-computed"  # no expected hash before the copy: nothing to address peers by


class PeeredSource:
    """The origin source, with each piece taken from its owner among the peers when possible."""

    def __init__(self, origin: Source, peers: PeerSet, client: PeerClient, stats: PeerStats) -> None:
        self._inner = origin
        self.origin: Source = _CountedOrigin(origin, self)  # also what pieces peers asked for use
        self._audit = Audit(self.origin)
        self.name = origin.name
        self._peers = peers
        self._client = client
        self._stats = stats
        self._lock = threading.Lock()
        self._supplied: dict[str, list[Supplied]] = {}  # content hash -> what peers sent of it
        self._context: tuple[ModelSpec, Snapshot] | None = None
        self._origin_only: set[str] = set()  # content whose hash failed with peer bytes in it
        self._seeders: dict[str, tuple[float, list[str]]] = {}  # content hash -> (when, peers)
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
        self._context = (spec, snap)
        if snap.hash_origin == COMPUTED or key in self._origin_only:
            with self._from_origin(spec, snap, file, start, end) as blocks:
                yield blocks
            return
        for peer, role in self._candidates(file, start // PIECE):
            sample = (
                self._audit.sample(spec, snap, file, start, end) if self._audit.wants_check(peer) else None
            )
            try:
                cm, blocks = self._ask(peer, file, start, end, role)
            except PeerMiss:
                continue
            except TransientError as exc:
                self._failed(peer, exc)
                continue
            try:
                checked = self._checked(peer, file, blocks, sample)
                if checked is None:
                    continue
                yield self._peer_then_origin(peer, checked, spec, snap, file, start, end)
            finally:
                cm.__exit__(None, None, None)
            return
        try:
            with self._from_origin(spec, snap, file, start, end) as from_origin:
                yield from_origin
        except PreloadError:
            self._forget_seeders(file)  # the origin failed: the retry looks for copies again
            raise

    def _checked(
        self, peer: str, file: RemoteFile, blocks: Iterator[memoryview], sample: Future[bytes | None] | None
    ) -> Iterator[memoryview] | None:
        """`blocks`, once the first agrees with the origin's sample; None (peer excluded, or it
        failed) when it does not."""
        if sample is None:
            return blocks
        try:
            first = next(blocks, None)
        except TransientError as exc:
            self._failed(peer, exc)
            return None
        if first is None or self._audit.matches(peer, sample.result(), first):
            return itertools.chain([first] if first is not None else [], blocks)
        self._exclude(peer, file, "its first bytes of a piece differ from the origin's")
        return None

    def _exclude(self, peer: str, file: RemoteFile, reason: str) -> None:
        self._peers.exclude(peer)
        self._log.warning("peer_excluded", peer=peer, file=file.path, reason=reason)

    def _candidates(self, file: RemoteFile, index: int) -> Iterator[tuple[str, str]]:
        """Whom to ask for a piece, in order, and in which role:
        - SEEDER: peers that hold the whole file (a node that joins late, or an origin that went
          away, costs the origin nothing);
        - OWNER: the peer ranked first, when it is not this node (it fetches the piece if it
          has not yet); if it does not answer, the next;
        - PREVIOUS: when this node owns the piece, the peer ranked after it, which owned the
          piece while this node was away (starting, restarting): only what it has already.
        """
        piece = f"{file.digest.hex}/{index}"
        for peer in sorted(self._seeders_of(file), key=lambda p: score(p, piece), reverse=True)[:MAX_ASKED]:
            yield peer, SEEDER
        ranked = self._peers.ranked(file.digest.hex, index)
        for i, peer in enumerate(ranked[:MAX_ASKED]):
            if peer == SELF:
                if i + 1 < len(ranked):
                    yield ranked[i + 1], PREVIOUS
                return
            yield peer, OWNER

    def _seeders_of(self, file: RemoteFile) -> list[str]:
        key = file.digest.hex
        now = time.monotonic()
        with self._lock:
            cached = self._seeders.get(key)
        if cached is not None and now - cached[0] < (SEEDERS_TTL if cached[1] else NO_SEEDERS_TTL):
            live = set(self._peers.live())  # one set aside since is not asked
            return [p for p in cached[1] if p in live]
        peers = [p for p in self._peers.live() if p != SELF]

        def ask(peer: str) -> bool:
            try:
                return self._client.has(peer, file)
            except TransientError:
                # Not a seeder; whether it is down is for a piece request to find out (a peer
                # still starting refuses now and owns its pieces a second later).
                return False

        with ThreadPoolExecutor(min(8, len(peers) or 1), thread_name_prefix="peer-have") as pool:
            found = [p for p, yes in zip(peers, pool.map(ask, peers), strict=True) if yes]
        with self._lock:
            self._seeders[key] = (time.monotonic(), found)
        return found

    def _forget_seeders(self, file: RemoteFile) -> None:
        with self._lock:
            self._seeders.pop(file.digest.hex, None)

    def _ask(
        self, peer: str, file: RemoteFile, start: int, end: int, role: str
    ) -> tuple[AbstractContextManager[Iterator[memoryview]], Iterator[memoryview]]:
        while True:
            cm = self._client.open(peer, file, start, end, fetch=role != PREVIOUS)
            try:
                return cm, cm.__enter__()
            except (PeerMiss, ConnectionRefused) as exc:
                starting = time.monotonic() - self._listed <= START_GRACE
                if role == OWNER and starting:
                    time.sleep(MISS_RETRY)
                    continue
                if starting and isinstance(exc, ConnectionRefused):
                    # Not listening yet: a peer still starting, not a dead one. Marked down, its
                    # pieces would be dealt to the others in this node's view for DOWN_FOR, and
                    # fetched from the origin twice (by them, and by the peer once it is up).
                    raise PeerMiss(peer) from exc
                raise

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
        try:
            for block in blocks:
                pos += len(block)
                self._count(peer=len(block))
                yield block
                if self._peers.is_excluded(peer):
                    break  # caught lying elsewhere meanwhile: the rest comes from the origin
        except TransientError as exc:
            self._failed(peer, exc)
        finally:
            if pos > start:
                with self._lock:
                    self._supplied.setdefault(file.digest.hex, []).append(Supplied(peer, start, pos))
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

    def hash_failed(self, file: RemoteFile, part: Path) -> None:
        """The file's bytes did not match: it is fetched again from the origin only, and every
        peer whose bytes in `part` differ from the origin's is excluded (peeraudit.py)."""
        with self._lock:
            supplied = self._supplied.pop(file.digest.hex, [])
            if supplied:
                self._origin_only.add(file.digest.hex)
        if not supplied or self._context is None:
            return
        spec, snap = self._context
        for peer, reason in sorted(self._audit.blame(spec, snap, file, part, supplied).items()):
            self._exclude(peer, file, reason)

    def bytes_by_source(self) -> dict[str, int]:
        """What this download received from the origin and from peers."""
        with self._lock:
            return {"origin_bytes": self.origin_bytes, "peer_bytes": self.peer_bytes}

    def close(self) -> None:
        self._audit.close()
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
