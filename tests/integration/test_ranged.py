"""The lean ranged body reader against a real loopback HTTP/1.1 server."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.buffers import DIRECT_ALIGN
from agent.errors import TransientError
from agent.sources.ranged import BODY_BUFFER, LARGE_BODIES, SMALL_BODY_BUFFER, RangedReader

DATA = os.urandom(3 * BODY_BUFFER + 12345)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = "ok"
        self.release = threading.Event()
        self.connections = 0
        self.requests: list[tuple[str, str | None]] = []

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        self.connections += 1
        super().process_request(request, client_address)

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hanging up mid-body is what several tests do on purpose: no traceback."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if srv.mode == "redirect" and self.path != "/final":
            self.send_response(302)
            self.send_header("Location", "/final")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = 0, len(DATA) - 1
        status = 200
        rng = self.headers.get("Range")
        if rng and srv.mode != "ignore_range":
            a, b = rng.removeprefix("bytes=").split("-")
            first, last, status = int(a), int(b), 206
        body = DATA[first : last + 1]
        if srv.mode == "chunked":
            self._chunked(status, body)
            return
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(DATA)}")
        self.end_headers()
        if srv.mode == "reset":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if srv.mode == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        if srv.mode == "stall_body":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            srv.release.wait(10)
            self.close_connection = True
            return
        if srv.mode == "trickle":
            for i in range(0, len(body), 40_000):
                self.wfile.write(body[i : i + 40_000])
                self.wfile.flush()
                time.sleep(0.001)
            return
        self.wfile.write(body)

    def _chunked(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(body), 100_000):
            piece = body[i : i + 100_000]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def server() -> Iterator[_Server]:
    """A loopback HTTP/1.1 server serving DATA with Range support and switchable misbehaviour."""
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def _url(srv: _Server, path: str = "/blob") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def _reader(read_timeout: float = 5.0) -> RangedReader:
    return RangedReader(ssl.create_default_context(), 5.0, read_timeout, {"User-Agent": "t"})


def _fetch(reader: RangedReader, url: str, start: int, end: int, skip: int = 0) -> tuple[int, bytes]:
    with reader.get(url, {"Range": f"bytes={start}-{end - 1}"}, "test") as (reply, body):
        return reply.status, b"".join(bytes(b) for b in body.blocks(skip, end - start))


def test_ranges_are_exact_and_connections_are_reused(server: _Server) -> None:
    """Two ranges (one larger than the buffer) arrive byte-exact over one kept-alive connection."""
    reader = _reader()
    status, got = _fetch(reader, _url(server), 5, 2 * BODY_BUFFER + 7)
    assert status == 206 and got == DATA[5 : 2 * BODY_BUFFER + 7]
    status, got = _fetch(reader, _url(server), len(DATA) - 100, len(DATA))
    assert status == 206 and got == DATA[-100:]
    assert server.connections == 1
    reader.close()


def test_blocks_are_full_page_aligned_views(server: _Server) -> None:
    """Every block but the last fills the buffer, at a page-aligned address (O_DIRECT as it is)."""
    reader = _reader()
    with reader.get(_url(server), {"Range": f"bytes=0-{len(DATA) - 1}"}, "test") as (_, body):
        blocks = [
            (type(b), len(b), ctypes.addressof(ctypes.c_char.from_buffer(b)))
            for b in body.blocks(0, len(DATA))
        ]
    assert all(t is memoryview and addr % DIRECT_ALIGN == 0 for t, _, addr in blocks)
    assert [n for _, n, _ in blocks] == [BODY_BUFFER] * 3 + [12345]


def test_server_ignoring_range_is_skipped_and_not_reused(server: _Server) -> None:
    """A 200 with the whole file: the leading bytes are dropped and the half-read connection closed."""
    server.mode = "ignore_range"
    reader = _reader()
    status, got = _fetch(reader, _url(server), 1000, 3000, skip=1000)
    assert status == 200 and got == DATA[1000:3000]
    server.mode = "ok"
    assert _fetch(reader, _url(server), 0, 10) == (206, DATA[:10])
    assert server.connections == 2


@pytest.mark.parametrize("mode", ["reset", "truncate"])
def test_broken_body_is_transient_and_the_connection_dropped(server: _Server, mode: str) -> None:
    """A reset or a short body raises TransientError; the next request gets a fresh connection."""
    server.mode = mode
    reader = _reader()
    with pytest.raises(TransientError, match="test"):
        _fetch(reader, _url(server), 0, len(DATA))
    server.mode = "ok"
    assert _fetch(reader, _url(server), 0, 4096) == (206, DATA[:4096])
    assert server.connections == 2


def test_stalled_server_times_out_as_transient() -> None:
    """A server that accepts and never answers hits the read timeout, as a TransientError."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        url = f"http://127.0.0.1:{lsock.getsockname()[1]}/x"
        with pytest.raises(TransientError, match="timed out"):
            _fetch(_reader(read_timeout=0.3), url, 0, 10)


def test_refused_connection_is_transient() -> None:
    """Nothing listening: a TransientError naming what was being fetched and the host that refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError, match=rf"test: 127\.0\.0\.1:{port}: ConnectionRefusedError"):
        _fetch(_reader(), f"http://127.0.0.1:{port}/x", 0, 10)


def test_redirect_reply_is_handed_to_the_caller(server: _Server) -> None:
    """A 3xx is not followed here: the caller decides (and re-applies auth per origin)."""
    server.mode = "redirect"
    reader = _reader()
    with reader.get(_url(server), {"Range": "bytes=0-9"}, "test") as (reply, _):
        assert reply.status == 302 and reply.headers.get("location") == "/final"


def test_body_stalling_midway_times_out_as_transient(server: _Server) -> None:
    """Headers and half the body, then silence: the body's own read timeout (SO_RCVTIMEO on the
    blocking socket) ends it as a TransientError, and the half-read connection is not reused."""
    server.mode = "stall_body"
    reader = _reader(read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TransientError, match="test: TimeoutError: timed out"):
        _fetch(reader, _url(server), 0, len(DATA))
    assert time.monotonic() - started < 3
    server.release.set()
    server.mode = "ok"
    assert _fetch(reader, _url(server), 0, 4096) == (206, DATA[:4096])
    assert server.connections == 2


@pytest.mark.parametrize("mode", ["trickle", "chunked"])
def test_slow_or_chunked_bodies_still_fill_whole_buffers(server: _Server, mode: str) -> None:
    """A body arriving in small pieces (a capped CDN) or in chunks still comes out in whole buffers,
    byte-exact, and the connection is kept for the next request."""
    server.mode = mode
    reader = _reader()
    with reader.get(_url(server), {"Range": f"bytes=3-{len(DATA) - 1}"}, "test") as (_, body):
        blocks = [bytes(b) for b in body.blocks(0, len(DATA) - 3)]
    assert b"".join(blocks) == DATA[3:]
    assert [len(b) for b in blocks] == [BODY_BUFFER] * 3 + [12342]
    assert _fetch(reader, _url(server), 0, 10) == (206, DATA[:10])
    assert server.connections == 1


def test_bodies_past_the_first_few_get_smaller_buffers(server: _Server) -> None:
    """Memory follows the connections: the first LARGE_BODIES bodies read at once get 1 MiB
    buffers, any more (helpers behind a capped CDN) 512 KiB ones; once they end, 1 MiB again."""
    reader = _reader()
    url = _url(server)
    with contextlib.ExitStack() as held:
        for _ in range(LARGE_BODIES):
            _, body = held.enter_context(reader.get(url, {"Range": "bytes=0-9"}, "test"))
            assert [bytes(b) for b in body.blocks(0, 10)] == [DATA[:10]]
        with reader.get(url, {"Range": f"bytes=0-{len(DATA) - 1}"}, "test") as (_, body):
            sizes = [len(b) for b in body.blocks(0, len(DATA))]
    assert sizes[0] == SMALL_BODY_BUFFER and sum(sizes) == len(DATA)
    with reader.get(url, {"Range": f"bytes=0-{len(DATA) - 1}"}, "test") as (_, body):
        sizes = [len(b) for b in body.blocks(0, len(DATA))]
    assert sizes == [BODY_BUFFER] * 3 + [12345]
    reader.close()
