"""The peer port: file contents by expected hash, with Range, for the other nodes' agents.

Nothing else is reachable here: no paths, no listings, no manifests, no status. A peer must
already know a file's hash (from the origin's listing) to ask for it, and checks every byte
against that hash itself: this server is trusted by nobody, and trusts nobody either (an
optional shared token guards it; the chart's NetworkPolicy admits only agent pods).

A file still being downloaded is served where it has been written (engine/sharing.py); asking
for a piece nobody is fetching yet makes this node fetch it from the origin now, and the
bytes are streamed as they land. A published file is sent with sendfile(2).
"""

from __future__ import annotations

import hmac
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent import log
from agent.engine.sharing import Shared, Shelf
from agent.node.serverthread import ServerThread
from agent.sources.peerclient import NO_FETCH
from agent.spec import ModelSpec
from agent.store import Store

BLOB = re.compile(r"\A/peer/v1/(blobs|have)/(sha256|git-sha1)/([0-9a-f]{40}|[0-9a-f]{64})\Z")
RANGE = re.compile(r"\Abytes=(\d+)-(\d*)\Z")
WAIT_STEP = 0.01  # seconds between looks at a chunk being written
STALL = 30.0  # nothing new for this long while streaming a file in progress: give up the stream
SEND_MAX = 4 << 20

Published = Callable[[str], Path | None]  # content hash -> a verified, published file


class ServedStats:
    """Bytes and requests served to peers; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes = 0
        self.requests = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n

    def request(self) -> None:
        with self._lock:
            self.requests += 1


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "model-cache-peer"
    sys_version = ""

    def do_GET(self) -> None:
        self.server.stats.request()
        match = BLOB.match(self.path)
        if match is None:
            return self._reply(HTTPStatus.NOT_FOUND)
        if not self._authorized():
            return self._reply(HTTPStatus.UNAUTHORIZED)
        key = match.group(3)
        shared = self.server.shelf.get(key)
        if match.group(1) == "have":  # all of it, verified: a peer may take any piece from here
            whole = (shared is not None and shared.complete) or self.server.published(key) is not None
            return self._reply(HTTPStatus.OK if whole else HTTPStatus.NOT_FOUND)
        if shared is not None and shared.active:
            return self._stream(shared)
        path = self.server.published(key)
        if path is None:
            return self._reply(HTTPStatus.NOT_FOUND)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return self._reply(HTTPStatus.NOT_FOUND)
        try:
            size = os.fstat(fd).st_size
            span = self._range(size)
            if span is not None:
                self._headers(span, size)
                self._send(fd, span[0], span[1] - span[0])
        finally:
            os.close(fd)

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def _range(self, size: int) -> tuple[int, int] | None:
        """[start, end) asked for; None after answering an unsatisfiable one."""
        header = self.headers.get("Range")
        if header is None:
            return 0, size
        m = RANGE.match(header.strip())
        if m is None or int(m.group(1)) >= size:
            self._reply(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"bytes */{size}"})
            return None
        start = int(m.group(1))
        end = min(size, int(m.group(2)) + 1) if m.group(2) else size
        if end <= start:
            self._reply(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"bytes */{size}"})
            return None
        return start, end

    def _stream(self, shared: Shared) -> None:
        span = self._range(shared.size)
        if span is None:
            return None
        start, end = span
        if self.headers.get(NO_FETCH):  # not the owner's business: only what is here now
            have = shared.available(start)
            if not have:
                return self._reply(HTTPStatus.NOT_FOUND)
            span = start, end = start, min(end, start + have)
        elif not shared.available(start) and not shared.request(start):
            return self._reply(HTTPStatus.NOT_FOUND)  # its round is over: ask someone else
        fd = self._open(shared)
        if fd is None:
            return self._reply(HTTPStatus.NOT_FOUND)
        try:
            self._headers(span, shared.size)
            pos, idle_since = start, time.monotonic()
            while pos < end:
                n = min(shared.available(pos), end - pos)
                if n > 0:
                    self._send(fd, pos, n)
                    pos, idle_since = pos + n, time.monotonic()
                    continue
                if not shared.request(pos) and not shared.available(pos):
                    break  # nothing more will be written: the peer continues elsewhere
                if time.monotonic() - idle_since > STALL:
                    log.get().warning("peer_stream_stalled", at=pos, action="closing")
                    break
                time.sleep(WAIT_STEP)
            if pos < end:
                self.close_connection = True
        finally:
            os.close(fd)

    @staticmethod
    def _open(shared: Shared) -> int | None:
        """The file's descriptor, waiting for its part file to appear: a piece just requested of
        a file this node had not started yet (every node reaching the next file at once) is
        there once the fetch opens the file. None: gone, or not there within STALL."""
        deadline = time.monotonic() + STALL
        while True:
            try:
                return shared.open()
            except OSError:
                if not shared.active or time.monotonic() > deadline:
                    return None
            time.sleep(WAIT_STEP)

    def _headers(self, span: tuple[int, int], size: int) -> None:
        start, end = span
        partial = self.headers.get("Range") is not None
        self.send_response(HTTPStatus.PARTIAL_CONTENT if partial else HTTPStatus.OK)
        self.send_header("Content-Length", str(end - start))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.wfile.flush()

    def _send(self, fd: int, offset: int, count: int) -> None:
        sock = self.connection
        while count > 0:
            sent = os.sendfile(sock.fileno(), fd, offset, min(count, SEND_MAX))
            if sent == 0:
                raise ConnectionError("peer went away")
            offset += sent
            count -= sent
            self.server.stats.add(sent)

    def _reply(self, status: HTTPStatus, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"Allow": "GET"})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Per-request lines would drown the log: bytes and errors are metrics."""

    def log_message(self, format: str, *args: Any) -> None:
        """See log_request."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # every node may open several connections at once

    def __init__(
        self, address: tuple[str, int], shelf: Shelf, published: Published, token: str | None
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.shelf = shelf
        self.published = published
        self.token = token
        self.stats = ServedStats()


class PeerServer(ServerThread):
    """The peer port on its own thread."""

    def __init__(
        self, listen: tuple[str, int], shelf: Shelf, published: Published, token: str | None
    ) -> None:
        self._peer_server = _Server(listen, shelf, published, token)
        super().__init__(self._peer_server, "peer-server")

    @property
    def stats(self) -> ServedStats:
        return self._peer_server.stats


class PublishedIndex:
    """Content hash -> path over the ready models' published files, rebuilt at most every few
    seconds (a lookup per peer request must not read every marker), and sooner on a miss: a
    model that has just become ready leaves the transfer's shelf at once, and a peer told "not
    here" in the seconds before the next rebuild would fetch that file from the origin again."""

    TTL = 5.0
    MISS_TTL = 0.5  # a miss rebuilds the index if it is older than this

    def __init__(self, ready: Callable[[], list[ModelSpec]], store: Store) -> None:
        self._ready = ready
        self._store = store
        self._lock = threading.Lock()
        self._index: dict[str, Path] = {}
        self._built = -self.TTL

    def find(self, key: str) -> Path | None:
        with self._lock:
            age = time.monotonic() - self._built
            if age >= self.TTL or (key not in self._index and age >= self.MISS_TTL):
                index: dict[str, Path] = {}
                for spec in self._ready():
                    index.update(self._store.published_files(spec))
                self._index, self._built = index, time.monotonic()
            return self._index.get(key)
