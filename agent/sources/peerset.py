"""Who the peers are: the `--peers` list resolved, this node left out, dead and lying peers set aside.

A peer is an agent on another node that serves, by content hash, the files it holds or is
downloading (agent/node/peerserve.py). Every node computes the same owner for a piece without
talking to the others: a file's pieces are dealt out evenly over the members in rendezvous
(highest-random-weight) order (`PeerSet.ranked`).
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent import log
from agent.errors import UsageError

DEFAULT_PEER_PORT = 8472
RESOLVE_EVERY = 30.0  # seconds between DNS lookups of a `dns:` entry (nodes join and leave)
DOWN_FOR = 5.0  # a peer that did not answer is skipped this long (agents restart in seconds)
EXCLUDED_FOR = 600.0  # a peer that sent bytes failing a hash is skipped this long

SELF = "self"  # this node's place in the ranking: its pieces come from the origin


@dataclass(frozen=True)
class PeerEntry:
    """One element of SPEC: a fixed address, or a DNS name whose every address is a peer."""

    host: str
    port: int
    dns: bool


def parse_peers(spec: str) -> tuple[PeerEntry, ...]:
    """`http://HOST:PORT,dns:NAME:PORT,...` -> entries; a UsageError names the bad element."""
    out: list[PeerEntry] = []
    for raw in (p.strip() for p in spec.split(",")):
        if not raw:
            continue
        if raw.startswith("dns:"):
            name, _, port = raw[4:].rpartition(":")
            if not name:
                name, port = raw[4:], str(DEFAULT_PEER_PORT)
            out.append(PeerEntry(name, _port(port, raw), dns=True))
            continue
        parts = urlsplit(raw)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise UsageError(f"--peers: {raw!r} is neither http://HOST:PORT nor dns:NAME:PORT")
        try:
            number = parts.port or DEFAULT_PEER_PORT
        except ValueError:
            raise UsageError(f"--peers: {raw!r} has a bad port") from None
        out.append(PeerEntry(parts.hostname, number, dns=False))
    if not out:
        raise UsageError("--peers: no peer given")
    return tuple(out)


def _port(text: str, raw: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"--peers: {raw!r} has a bad port")
    return int(text)


def peer_id(address: str, port: int) -> str:
    """How every node names a peer in the ranking (so all nodes rank alike)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def is_local(address: str) -> bool:
    """Whether `address` is one of this host's: the kernel picks a local address itself as
    the source of a route to it (no packet is sent; UDP connect only routes)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((address, 9))
            return bool(s.getsockname()[0] == address)
    except OSError:
        return False


def score(peer: str, key: str) -> int:
    """Rendezvous weight of `peer` for `key`."""
    return int.from_bytes(hashlib.blake2b(f"{peer}|{key}".encode(), digest_size=8).digest(), "big")


Resolver = Callable[[str, int], Sequence[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address of `host` (A and AAAA records), deduplicated, sorted."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class PeerSet:
    """The live peers, re-resolved every RESOLVE_EVERY seconds; thread-safe."""

    def __init__(
        self,
        entries: Sequence[PeerEntry],
        *,
        port: int | None,
        resolver: Resolver = resolve,
        local: Callable[[str], bool] = is_local,
    ) -> None:
        self._entries = tuple(entries)
        self._port = port  # an agent's peer port: it serves its pieces to the others and ranks itself
        self._resolver = resolver
        self._local = local
        self._lock = threading.Lock()
        self._peers: tuple[str, ...] = ()
        self._self: str | None = None
        self._resolved_at = -RESOLVE_EVERY
        self._down: dict[str, float] = {}
        self._excluded: dict[str, float] = {}
        self._log = log.get()

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._resolved_at < RESOLVE_EVERY:
            return
        self._resolved_at = now
        found: set[str] = set()
        me: str | None = None
        for e in self._entries:
            try:
                addresses = self._resolver(e.host, e.port) if e.dns else [e.host]
            except OSError as exc:
                self._log.warning("peers_unresolved", name=e.host, error=str(exc))
                continue
            for a in addresses:
                pid = peer_id(a, e.port)
                if e.port == self._port and self._local(a):
                    me = pid  # never a peer of itself; its own rank stands for "the origin"
                else:
                    found.add(pid)
        if found != set(self._peers):
            self._log.info("peers_changed", peers=len(found))
        self._peers, self._self = tuple(sorted(found)), me

    def live(self) -> list[str]:
        """Peers neither down nor excluded now."""
        with self._lock:
            self._refresh()
            now = time.monotonic()
            return [p for p in self._peers if self._down.get(p, 0) <= now and self._excluded.get(p, 0) <= now]

    def ranked(self, key: str, index: int) -> list[str]:
        """Live peers for piece `index` of the content `key`, best first, with SELF in its place
        when this node serves (everything ranked after SELF is not asked: this node fetches from
        the origin and is the one the others ask).

        Owners are dealt out evenly: the members (every resolved peer and this node, live or not)
        in rendezvous order for the content, piece i to the (i mod N)-th. Owners drawn at random
        per piece left one of 8 nodes with 43 pieces of 256 and another with 26, and the busiest
        uplink set the pace of the whole rollout (bench/results/peers.md). The others follow in
        rendezvous order for the piece, so a dead owner's pieces spread over the rest. A member
        that is down or excluded keeps its place in the deal (its pieces go to their next peer);
        only a change in the resolved list (RESOLVE_EVERY) deals again.
        """
        live = self.live()
        with self._lock:
            me, members = self._self, [*self._peers, *([self._self] if self._self else [])]
        if not members:
            return []
        by_content = sorted(members, key=lambda p: score(p, key), reverse=True)
        owner = by_content[index % len(by_content)]
        piece = f"{key}/{index}"
        rest = sorted((p for p in members if p != owner), key=lambda p: score(p, piece), reverse=True)
        usable = {*live, *([me] if me else [])}
        return [SELF if p == me else p for p in (owner, *rest) if p in usable]

    def down(self, peer: str) -> None:
        """`peer` did not answer: skip it for a while."""
        with self._lock:
            self._down[peer] = time.monotonic() + DOWN_FOR

    def exclude(self, peer: str) -> None:
        """`peer` sent bytes that failed a hash: skip it for much longer."""
        with self._lock:
            self._excluded[peer] = time.monotonic() + EXCLUDED_FOR

    def is_excluded(self, peer: str) -> bool:
        """Whether `peer` is excluded now."""
        with self._lock:
            return self._excluded.get(peer, 0) > time.monotonic()

    def excluded(self) -> int:
        """How many peers are excluded now."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for until in self._excluded.values() if until > now)
