"""The test hub's HTTP/1.1 side: a threading server per origin and the handler that does the I/O.

The handler knows nothing about repos; it asks its Backend (the HubServer) for the reply and the
fault, then sends the reply with the fault applied: cut, stalled, paced or corrupted.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import threading
import time
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol
from urllib.parse import unquote, urlsplit

from agent.devhub.faults import Fault, Kind
from agent.devhub.replies import Reply, Role, Span, error_reply
from agent.devhub.requestlog import LiveRequest, RequestRecord

CHUNK = 1024 * 1024
SENDFILE_CHUNK = 8 * 1024 * 1024


class Backend(Protocol):
    """What a handler needs from the server that owns it (HubServer)."""

    @property
    def host(self) -> str:
        """The address the server binds."""
        ...

    @property
    def cdn_rate_limit_bps(self) -> int | None:
        """Per-connection rate cap on CDN bodies."""
        ...

    @property
    def max_span(self) -> int | None:
        """Longest file body one GET may ask for (longer: HTTP 400)."""
        ...

    def answer(self, role: Role, target: str, headers: Message[str, str]) -> Reply:
        """The reply to a request, before any fault."""
        ...

    def take_fault(self, reply: Reply, method: str, path: str) -> Fault | None:
        """The queued fault this request triggers, if any."""
        ...

    def begin_request(self, request: LiveRequest, path: str) -> None:
        """A request started."""
        ...

    def finish_request(self, request: LiveRequest, record: RequestRecord) -> None:
        """A request finished."""
        ...

    def pause(self, seconds: float) -> None:
        """Sleep, waking up early when the server stops."""
        ...


class ConnectionAborted(Exception):
    """The handler reset the connection on purpose; nothing more may be written."""


class HubHTTPServer(ThreadingHTTPServer):
    """A threading server that knows its backend and role, and tracks open connections."""

    daemon_threads = True
    # The default backlog of 5 drops SYNs when a downloader opens dozens of connections at once.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], backend: Backend, role: Role) -> None:
        self.backend = backend
        self.role = role
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection and remember it, so that stop() can cut it."""
        sock, addr = super().get_request()
        with self.connections_lock:
            self.connections.add(sock)
        return sock, addr

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        """Forget the connection and close it."""
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: tuple[str, int]
    ) -> None:
        """Stay quiet about clients that vanish (killed downloaders, cut keep-alives)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def cut_connections(self) -> None:
        """Shut down every open connection (idle keep-alives included)."""
        with self.connections_lock:
            socks = list(self.connections)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    """Speaks HTTP/1.1; the hub logic lives in the Backend, this class only does the I/O."""

    server: HubHTTPServer
    protocol_version = "HTTP/1.1"
    sent = 0  # body bytes written so far, read live by RequestLog.bytes_served
    # Set just before the write that may complete the response for the client, so the log
    # can wait for this request instead of missing it (see RequestLog._settle).
    last_write = False
    server_version = "hubserver/1"

    def do_GET(self) -> None:
        """Serve a GET."""
        self._dispatch()

    def do_HEAD(self) -> None:
        """Serve a HEAD."""
        self._dispatch()

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet: the request log is the record."""

    def _dispatch(self) -> None:
        backend = self.server.backend
        started = time.monotonic()
        self.sent = 0
        self.last_write = False
        path = unquote(urlsplit(self.path).path)
        backend.begin_request(self, path)
        reply = Reply("other", 500, [])
        fault: Fault | None = None
        try:
            reply = self._limited(backend.answer(self.server.role, self.path, self.headers))
            fault = backend.take_fault(reply, self.command, path)
            if fault is not None and fault.replaces_reply:
                reply = self._fault_reply(reply.kind, fault)
            self._send(reply, fault)
        except ConnectionAborted:
            pass
        except OSError:
            self.close_connection = True
        finally:
            backend.finish_request(
                self,
                RequestRecord(
                    kind=reply.kind,
                    method=self.command,
                    path=path,
                    query=urlsplit(self.path).query,
                    status=reply.status,
                    range=self.headers.get("Range"),
                    bytes_sent=self.sent,
                    authorized="Authorization" in self.headers,
                    fault=fault.label() if fault is not None else None,
                    started=started,
                    finished=time.monotonic(),
                ),
            )

    def _limited(self, reply: Reply) -> Reply:
        """A GET of a file body longer than the backend's max_span is refused, as the CDN does."""
        limit = self.server.backend.max_span
        if (
            self.command != "GET"
            or limit is None
            or not isinstance(reply.body, Span)
            or reply.length <= limit
        ):
            return reply
        return error_reply(
            reply.kind, 400, None, f"request span {reply.length} exceeds the {limit}-byte limit"
        )

    def _fault_reply(self, kind: Kind, fault: Fault) -> Reply:
        headers = list(fault.headers.items())
        if fault.redirect_loop:
            host = self.headers.get("Host") or self.server.backend.host
            return Reply(kind, 302, [*headers, ("Location", f"http://{host}{self.path}")])
        status = fault.status or 200
        if fault.body is not None:
            body = fault.body.encode() if isinstance(fault.body, str) else fault.body
            headers.append(("Content-Type", "application/json; charset=utf-8"))
            return Reply(kind, status, headers, body)
        return error_reply(kind, status, None, f"injected fault {status}", headers)

    def _send(self, reply: Reply, fault: Fault | None) -> None:
        has_body = self.command != "HEAD" and reply.length > 0
        if fault is not None and fault.stall is not None and not has_body:
            self.server.backend.pause(fault.stall)
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(reply.length))
        if fault is not None and (fault.truncate_after is not None or fault.reset_after is not None):
            self.close_connection = True
        self.last_write = not has_body
        self.end_headers()
        if not has_body:
            if fault is not None and fault.reset_after is not None:
                self._reset()
            return
        rate = self.server.backend.cdn_rate_limit_bps if reply.kind == "cdn" else None
        if fault is None and rate is None:
            self._send_fast(reply.body)
        else:
            self._send_shaped(reply.body, reply.length, fault, rate)

    def _send_fast(self, body: bytes | Span) -> None:
        self.last_write = isinstance(body, bytes) or body.file.data is not None
        if isinstance(body, bytes):
            self.wfile.write(body)
            self.sent = len(body)
            return
        if body.file.data is not None:
            view = memoryview(body.file.data)[body.offset : body.offset + body.length]
            self.connection.sendall(view)
            self.sent = body.length
            return
        with body.file.open() as f:
            while self.sent < body.length:
                count = min(SENDFILE_CHUNK, body.length - self.sent)
                self.last_write = count == body.length - self.sent
                n = os.sendfile(self.connection.fileno(), f.fileno(), body.offset + self.sent, count)
                if n == 0:
                    raise OSError("file shrank while being served")
                self.sent += n

    def _send_shaped(self, body: bytes | Span, length: int, fault: Fault | None, rate: int | None) -> None:
        """Send the body in chunks, applying the fault's cut, stall, pacing and corruption."""
        end = length
        if fault is not None:
            for cut in (fault.reset_after, fault.truncate_after):
                if cut is not None:
                    end = min(end, cut)
        stall_at = min(fault.stall_after, end) if fault is not None and fault.stall else None
        corrupt_at = length // 2 if fault is not None and fault.corrupt else None
        pace = (fault.trickle_bps if fault is not None else None) or rate
        chunk = CHUNK if pace is None else max(1, min(CHUNK, pace // 20))
        began = time.monotonic()
        while True:
            if stall_at is not None and self.sent >= stall_at and fault is not None:
                self.server.backend.pause(fault.stall or 0.0)
                stall_at = None
            if self.sent >= end:
                break
            n = min(chunk, end - self.sent)
            if stall_at is not None:
                n = min(n, stall_at - self.sent)
            piece = bytearray(self._piece(body, self.sent, n))
            self.last_write = self.sent + n >= end
            if corrupt_at is not None and self.sent <= corrupt_at < self.sent + n:
                piece[corrupt_at - self.sent] ^= 0xFF
            self.connection.sendall(piece)
            self.sent += n
            if pace is not None and self.sent < end:
                ahead = self.sent / pace - (time.monotonic() - began)
                if ahead > 0:
                    self.server.backend.pause(ahead)
        if fault is not None and fault.reset_after is not None:
            self._reset()

    @staticmethod
    def _piece(body: bytes | Span, pos: int, n: int) -> bytes:
        if isinstance(body, bytes):
            return body[pos : pos + n]
        return body.file.read(body.offset + pos, n)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a dying proxy would."""
        self.close_connection = True
        self.last_write = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        raise ConnectionAborted
