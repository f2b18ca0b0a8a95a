"""Ranged GETs of large bodies, read straight into a reused buffer.

httpx hands a body over in 64 KiB pieces through several layers of Python (h11 parsing,
generators, a new bytes object per piece); on a multi-gigabyte download that overhead,
not the network, is what a small node's CPU spends its time on. Here the body of a ranged
CDN request is read with the standard library's http.client straight into a reused,
page-aligned buffer (`readinto`: one kernel copy, no Python per 64 KiB), like curl does; a
full buffer is then written to disk with O_DIRECT as it is, without another copy.

Only direct requests use this path. When a proxy applies to the URL (HTTP(S)_PROXY,
ALL_PROXY, minus NO_PROXY) the caller keeps using httpx, which implements proxies.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import struct
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.buffers import BufferPool
from agent.errors import TransientError, transport_error

# Every block but a body's last fills its buffer: a multiple of the page size that the transfer
# writes with O_DIRECT as it is. A larger buffer halves the system calls, GIL hand-offs and
# Python per byte (uncapped, 1 MiB against 512 KiB: ~0.1 core-s/GiB less), but memory is a
# buffer per connection: the first LARGE_BODIES bodies read at once (the files' own streams)
# get 1 MiB, any more (helpers behind a capped CDN, up to 128) 512 KiB, as before (peak RSS
# with 70-90 capped connections: 96 MB; 122 MB with 1 MiB each). Bytes held in a buffer when
# the process is killed are fetched again.
BODY_BUFFER = 1 << 20
SMALL_BODY_BUFFER = 512 << 10
LARGE_BODIES = 8
_BODIES = BufferPool(BODY_BUFFER)
_SMALL_BODIES = BufferPool(SMALL_BODY_BUFFER)
_reading = 0  # bodies being read now, all readers together
_reading_lock = threading.Lock()
MAX_IDLE_PER_ORIGIN = 32

Origin = tuple[str, str, int]


def proxied(url: str) -> bool:
    """Whether the environment routes this URL through a proxy."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


@dataclass(frozen=True)
class Reply:
    """A response's status line and headers; its body is read with `Body`."""

    status: int
    headers: Mapping[str, str]


class Body:
    """Iterates over the body, each block a view of one lent buffer (valid until the next)."""

    def __init__(
        self, response: http.client.HTTPResponse, sock: socket.socket, buf: memoryview, what: str
    ) -> None:
        self._response = response
        self._sock = sock
        self._buf = buf
        self._what = what
        self.complete = False

    def blocks(self, skip: int, want: int) -> Iterator[memoryview]:
        """Drop `skip` leading bytes, then yield exactly `want` bytes or raise TransientError.

        Every block but the last fills the buffer. A body of known length (what a CDN sends for
        a range) is read from the socket itself, one full buffer per call, after the few bytes
        http.client's reader already holds; a chunked one goes through http.client.
        """
        response = self._response
        length = None if response.chunked else response.length
        got = 0
        try:
            if length is None:
                yield from self._via_client(skip, want)
                return
            fill = _Filler(response, self._sock, length)
            buf = self._buf
            while skip:
                n = fill(buf[: min(len(buf), skip)])
                if not n:
                    break
                skip -= n
            while got < want and not skip:
                n = fill(buf[: min(len(buf), want - got)])
                if not n:
                    break
                got += n
                yield buf[:n]
            # Reusable only when the server sent no more than we asked for.
            self.complete = fill.left == 0
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"{self._what}: {_describe(exc)}") from exc
        if got < want:
            raise TransientError(f"{self._what}: body ended after {got} of {want} bytes")

    def _via_client(self, skip: int, want: int) -> Iterator[memoryview]:
        got = 0
        buf = self._buf
        while skip:
            n = self._response.readinto(buf[: min(len(buf), skip)])
            if not n:
                break
            skip -= n
        while got < want:
            n = _readinto_full(self._response, buf[: min(len(buf), want - got)])
            if not n:
                break
            got += n
            yield buf[:n]
        if got < want:
            raise TransientError(f"{self._what}: body ended after {got} of {want} bytes")
        if self._response.chunked and not self._response.isclosed():
            # A chunked body's terminator is read only by a read that finds no more bytes.
            self._response.readinto(memoryview(bytearray(1)))
        self.complete = self._response.length == 0 or self._response.isclosed()


def _readinto_full(response: http.client.HTTPResponse, view: memoryview) -> int:
    """readinto until `view` is full or the body ends (a chunked body returns chunk by chunk)."""
    got = 0
    while got < len(view):
        n = response.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BlockingIOError):  # SO_RCVTIMEO expired on the blocking socket
        return "TimeoutError: timed out"
    return f"{type(exc).__name__}: {exc}"


class _Filler:
    """Fills buffers with the next bytes of a body of known length, straight from the socket.

    http.client's buffered reader may already hold the first bytes of the body (read along with
    the headers): those are taken first. The rest is read with one recv per buffer on a plain
    socket (MSG_WAITALL: the kernel waits until the buffer is full, so a slow or capped stream
    costs one system call and one trip through Python per buffer, not one per packet), with the
    socket blocking and SO_RCVTIMEO as the read timeout (no poll before every recv). TLS sockets
    return a record at a time and are read in a loop.
    """

    def __init__(self, response: http.client.HTTPResponse, sock: socket.socket, length: int) -> None:
        self._fp = response.fp
        self._sock = sock
        self._tls = isinstance(sock, ssl.SSLSocket)
        self.left = length
        self._buffered = True  # the reader may hold bytes until we have looked

    def __call__(self, view: memoryview) -> int:
        want = min(len(view), self.left)
        if not want:
            return 0
        got = 0
        if self._buffered:
            held = len(self._fp.peek())  # reads the socket (timeout mode) only if it holds nothing
            got = self._fp.readinto(view[: min(held, want)]) or 0
            self._buffered = held > got  # the rest of a short body was already here
            if not self._tls:
                self._sock.settimeout(None)  # blocking: SO_RCVTIMEO times the reads from now on
        sock = self._sock
        while got < want:
            if self._tls:
                n = sock.recv_into(view[got:], want - got)
            else:
                n = sock.recv_into(view[got:], want - got, socket.MSG_WAITALL)
            if not n:
                break
            got += n
        self.left -= got
        return got


class RangedReader:
    """A small keep-alive pool of http.client connections for ranged body reads."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        connect_timeout: float,
        read_timeout: float,
        headers: Mapping[str, str],
    ) -> None:
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._headers = dict(headers)
        self._idle: dict[Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def _checkout(self, origin: Origin) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle.get(origin)
            if idle:
                return idle.pop()
        scheme, host, port = origin
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self._connect_timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The read timeout of a body read on the blocking socket (see _Filler).
        whole = int(self._read_timeout)
        conn.sock.setsockopt(
            socket.SOL_SOCKET,
            socket.SO_RCVTIMEO,
            struct.pack("ll", whole, int((self._read_timeout - whole) * 1e6)),
        )
        return conn

    def _checkin(self, origin: Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < MAX_IDLE_PER_ORIGIN:
                idle.append(conn)
                return
        conn.close()

    @contextmanager
    def get(self, url: str, headers: Mapping[str, str], what: str) -> Iterator[tuple[Reply, Body]]:
        """GET `url`; yields the reply and its body. Transport trouble is a TransientError."""
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https") or not parts.hostname:
            raise TransientError(f"{what}: unsupported URL scheme {scheme!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        origin = (scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn: http.client.HTTPConnection | None = None
        try:
            conn = self._checkout(origin)
            conn.request("GET", target, headers={**self._headers, **headers})
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            if conn is not None:
                conn.close()
            raise transport_error(what, parts.netloc.rpartition("@")[2], exc) from exc
        reply = Reply(response.status, _HeaderView(response.msg))
        body: Body | None = None
        sock = conn.sock
        assert sock is not None
        try:
            with _lend_body() as buf:
                body = Body(response, sock, buf, what)
                yield reply, body
        finally:
            if body is not None and body.complete and not response.will_close:
                response.close()
                sock.settimeout(self._read_timeout)  # the next reply's headers: a poll timeout
                self._checkin(origin, conn)
            else:
                conn.close()

    def close(self) -> None:
        """Close idle connections."""
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()


@contextmanager
def _lend_body() -> Iterator[memoryview]:
    """A body buffer: a large one for the first LARGE_BODIES bodies read at once, else a small one."""
    global _reading
    with _reading_lock:
        _reading += 1
        pool = _BODIES if _reading <= LARGE_BODIES else _SMALL_BODIES
    try:
        with pool.lend() as buf:
            yield buf
    finally:
        with _reading_lock:
            _reading -= 1


class _HeaderView(Mapping[str, str]):
    """Case-insensitive, read-only access to http.client's headers."""

    def __init__(self, msg: http.client.HTTPMessage) -> None:
        self._msg = msg

    def __getitem__(self, key: str) -> str:
        value = self._msg.get(key)
        if value is None:
            raise KeyError(key)
        return str(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._msg.keys())

    def __len__(self) -> int:
        return len(self._msg)


def range_skip(status: int, headers: Mapping[str, str], start: int, size: int, what: str) -> int:
    """How many leading body bytes to drop: a server that ignores Range sends from zero."""
    if status == 206:
        content_range = headers.get("Content-Range", "")
        try:
            unit, _, spec = content_range.partition(" ")
            first = int(spec.split("-", 1)[0])
        except ValueError as exc:
            raise TransientError(f"{what}: bad Content-Range {content_range!r}") from exc
        if unit != "bytes" or first != start:
            raise TransientError(f"{what}: asked for byte {start}, got {content_range!r}")
        return 0
    if status == 200:
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != size:
            raise TransientError(f"{what}: server sent {length} bytes for a {size}-byte file")
        return start
    raise TransientError(f"{what}: unexpected HTTP {status}")
