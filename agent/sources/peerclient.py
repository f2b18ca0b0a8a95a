"""Talking to peers: ranged GETs of content by hash, and "do you have all of it?"."""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from agent.errors import TransientError
from agent.manifest import RemoteFile
from agent.sources.ranged import RangedReader

CONTENT_RANGE = re.compile(r"\Abytes (\d+)-(\d+)/(\d+)\Z")
# Asked of a peer that is not the piece's owner: answer with what you have now, do not fetch.
NO_FETCH = "X-Peer-No-Fetch"
CONNECT_TIMEOUT = 2.0
STALL_TIMEOUT = 10.0  # no byte from a peer for this long: it is slow or dead, go elsewhere


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
    """What a peer is asked for: content by its expected hash."""
    return f"/peer/v1/blobs/{file.digest.algo}/{file.digest.hex}"


def have_path(file: RemoteFile) -> str:
    """Whether a peer holds all of a file (verified), by its expected hash."""
    return f"/peer/v1/have/{file.digest.algo}/{file.digest.hex}"


def _range_end(header: str, start: int, size: int) -> int | None:
    """The last byte of `bytes START-LAST/SIZE`, if it starts at `start` and `size` matches."""
    m = CONTENT_RANGE.match(header)
    if m is None or int(m.group(1)) != start or int(m.group(3)) != size or int(m.group(2)) < start:
        return None
    return int(m.group(2))


class PeerClient:
    """Ranged GETs of blobs from peers over keep-alive connections."""

    def __init__(self, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._reader = RangedReader(ssl.create_default_context(), CONNECT_TIMEOUT, STALL_TIMEOUT, headers)

    @contextmanager
    def open(
        self, peer: str, file: RemoteFile, start: int, end: int, fetch: bool = True
    ) -> Iterator[Iterator[memoryview]]:
        """Bytes from `start` of `file` from `peer`, up to `end`: all of them, or (without
        `fetch`) only what the peer has already, which may be fewer. PeerMiss when it has none;
        a TransientError when it cannot be reached or breaks off."""
        what = f"peer {peer}"
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if not fetch:
            headers[NO_FETCH] = "1"
        with self._reader.get(f"http://{peer}{blob_path(file)}", headers, what) as (reply, body):
            if reply.status == 404:
                raise PeerMiss(peer)
            last = _range_end(reply.headers.get("Content-Range", ""), start, file.size)
            if reply.status != 206 or last is None or last >= end or (fetch and last != end - 1):
                raise TransientError(f"{what}: HTTP {reply.status} for a range request")
            yield body.blocks(0, last + 1 - start)

    def has(self, peer: str, file: RemoteFile) -> bool:
        """Whether `peer` holds all of `file`; TransientError when it cannot be reached."""
        with self._reader.get(f"http://{peer}{have_path(file)}", {}, f"peer {peer}") as (reply, body):
            if reply.headers.get("Content-Length", "") != "0":
                return False  # the answer has no body: one that sends some is not read (nor trusted)
            for _ in body.blocks(0, 0):
                pass  # marks the empty body read, so the connection is reused
            return reply.status == 200

    def close(self) -> None:
        self._reader.close()
