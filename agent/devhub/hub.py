"""A loopback Hugging Face hub (API, resolve, and a separate CDN origin) with fault injection.

It is the built-in demo hub and the test hub of the whole suite. It depends on the stdlib only
and on nothing else in `agent`, so a bug in the downloader cannot hide behind the same bug here.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from types import FrameType, TracebackType
from typing import BinaryIO, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

LFS_THRESHOLD = 10 * 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx")
DEFAULT_TOKEN = "hf_test_token"  # noqa: S105 - a test hub's well-known token
CHUNK = 1024 * 1024
SENDFILE_CHUNK = 8 * 1024 * 1024
# Fixed so that listings, and therefore every test that snapshots them, are reproducible.
COMMIT_DATE = "2024-01-01T00:00:00.000Z"
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"

Kind = Literal["revision", "tree", "resolve", "cdn", "other"]
FaultKind = Literal["revision", "tree", "resolve", "cdn", "any"]


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a blob: sha1 over a `blob <size>\\0` header and the content."""
    h = hashlib.sha1(b"blob %d\0" % len(data), usedforsecurity=False)
    h.update(data)
    return h.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class HubFile:
    """One file of a repo, held in memory (`data`) or streamed from disk (`source`)."""

    path: str
    data: bytes | None = None
    source: Path | None = None
    lfs: bool | None = None
    _size: int = field(default=0, init=False, repr=False, compare=False)
    _digests: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    # One lock per file so that parallel first requests hash a big file once, and different
    # files still hash in parallel (hashlib releases the GIL).
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.data is None) == (self.source is None):
            raise ValueError(f"{self.path}: give exactly one of data= or source=")
        size = len(self.data) if self.data is not None else self._source().stat().st_size
        object.__setattr__(self, "_size", size)
        if self.lfs is None:
            lfs = size >= LFS_THRESHOLD or self.path.endswith(LFS_SUFFIXES)
            object.__setattr__(self, "lfs", lfs)

    @property
    def size(self) -> int:
        """Content size in bytes (a disk file is measured once, when declared)."""
        return self._size

    @property
    def is_lfs(self) -> bool:
        """Whether the hub stores this file in LFS (served through the CDN)."""
        return bool(self.lfs)

    @property
    def sha256(self) -> str:
        """sha256 of the content: the LFS oid and the CDN blob name."""
        return self._digest("sha256")

    @property
    def git_sha1(self) -> str:
        """Git blob sha1 of the content: the ETag of a small file."""
        return self._digest("git_sha1")

    @property
    def pointer(self) -> bytes:
        """The LFS pointer git stores for this file."""
        return lfs_pointer(self.sha256, self.size)

    @property
    def oid(self) -> str:
        """The git blob id in the tree: of the pointer for LFS files, else of the content."""
        return git_blob_sha1(self.pointer) if self.is_lfs else self.git_sha1

    @property
    def etag(self) -> str:
        """What the hub's resolve endpoint announces as the file's identity."""
        return self.sha256 if self.is_lfs else self.git_sha1

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset`."""
        if self.data is not None:
            return self.data[offset : offset + length]
        with self.open() as f:
            return os.pread(f.fileno(), length, offset)

    def open(self) -> BinaryIO:
        """The disk file, unbuffered (large reads and sendfile want no Python buffer)."""
        return self._source().open("rb", buffering=0)

    def _source(self) -> Path:
        if self.source is None:
            raise ValueError(f"{self.path} is held in memory")
        return self.source

    def _digest(self, name: str) -> str:
        with self._lock:
            if name not in self._digests:
                h = (
                    hashlib.sha256()
                    if name == "sha256"
                    else hashlib.sha1(b"blob %d\0" % self.size, usedforsecurity=False)
                )
                for block in self._blocks():
                    h.update(block)
                self._digests[name] = h.hexdigest()
            return self._digests[name]

    def _blocks(self) -> Iterator[bytes | memoryview]:
        if self.data is not None:
            yield memoryview(self.data)
            return
        with self.open() as f:
            while block := f.read(SENDFILE_CHUNK):
                yield block


def _derive_commit(repo_id: str, files: Sequence[HubFile], parent: str | None) -> str:
    """A deterministic 40-hex commit id from the repo id, the parent and every file's identity."""
    h = hashlib.sha1(f"commit\0{repo_id}\0{parent or ''}\0".encode(), usedforsecurity=False)
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.oid}\0".encode())
    return h.hexdigest()


def _warm_hashes(files: Sequence[HubFile]) -> None:
    """Hash big disk files in parallel once, instead of one by one on first use."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        list(pool.map(lambda f: f.oid, files))


class HubRepo:
    """A model repo: commits (each a full file set) and refs (branches, tags) pointing at them."""

    def __init__(
        self,
        repo_id: str,
        files: Iterable[HubFile],
        commit: str | None = None,
        refs: Mapping[str, str] | None = None,
        gated: bool = False,
        private: bool = False,
    ) -> None:
        org, _, name = repo_id.partition("/")
        if not org or not name or "/" in name:
            raise ValueError(f"repo id must be org/name, got {repo_id!r}")
        self.repo_id = repo_id
        self.gated = gated
        self.private = private
        self._lock = threading.Lock()
        self._commits: dict[str, dict[str, HubFile]] = {}
        self.commit = self._store_commit(list(files), commit, parent=None)
        self._refs: dict[str, str] = dict(refs) if refs is not None else {"main": self.commit}
        for ref, target in self._refs.items():
            if target not in self._commits:
                raise ValueError(f"ref {ref!r} points at unknown commit {target}")

    def add_commit(self, files: Iterable[HubFile], branch: str = "main", commit: str | None = None) -> str:
        """Publish a new file set as a commit on `branch` (moving it) and return its id."""
        with self._lock:
            parent = self._refs.get(branch)
        sha = self._store_commit(list(files), commit, parent)
        with self._lock:
            self._refs[branch] = sha
        return sha

    def set_ref(self, ref: str, commit: str) -> None:
        """Point a branch or tag at an existing commit."""
        with self._lock:
            if commit not in self._commits:
                raise ValueError(f"unknown commit {commit}")
            self._refs[ref] = commit

    def delete_ref(self, ref: str) -> None:
        """Remove a branch or tag."""
        with self._lock:
            del self._refs[ref]

    @property
    def refs(self) -> dict[str, str]:
        """A copy of the refs."""
        with self._lock:
            return dict(self._refs)

    def head(self, branch: str = "main") -> str:
        """The commit a branch points at."""
        with self._lock:
            return self._refs[branch]

    def resolve(self, revision: str) -> str | None:
        """The commit a revision (commit id, branch or tag) names, if any."""
        with self._lock:
            if revision in self._commits:
                return revision
            return self._refs.get(revision)

    def files(self, commit: str | None = None) -> dict[str, HubFile]:
        """The files of a commit (default: `main`), by path."""
        with self._lock:
            return dict(self._commits[commit or self._refs["main"]])

    def all_files(self) -> Iterator[HubFile]:
        """Every file of every commit."""
        with self._lock:
            commits = list(self._commits.values())
        for files in commits:
            yield from files.values()

    def _store_commit(self, files: list[HubFile], commit: str | None, parent: str | None) -> str:
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise ValueError(f"{self.repo_id}: duplicate paths in one commit")
        _warm_hashes(files)
        sha = commit or _derive_commit(self.repo_id, files, parent)
        with self._lock:
            self._commits[sha] = {f.path: f for f in files}
        return sha


@dataclass(frozen=True)
class Fault:
    """A misbehaviour applied to the next `times` matching requests (None: forever).

    Matching: `kind` ("revision", "tree", "resolve", "cdn" or "any"), `path` a substring of the
    decoded request path, `method` ("GET"/"HEAD"). Without `method`, faults that act on the body
    (reset_after, truncate_after, corrupt, trickle_bps, stall with stall_after > 0) match only
    replies that have a body, so a client's HEAD does not use them up.

    Effects: `status` (+ `headers`, `body`) replaces the reply; `body` alone replaces the reply's
    body with status 200; `redirect_loop` answers 302 to the same URL; `reset_after` sends the
    headers and N body bytes then resets the connection (RST); `truncate_after` sends N body
    bytes under the full Content-Length then closes cleanly; `stall` waits that many seconds
    after `stall_after` body bytes (before the headers if the reply has no body); `trickle_bps`
    paces the body; `corrupt` flips one byte in the middle of the body.
    """

    kind: FaultKind = "any"
    path: str | None = None
    method: str | None = None
    times: int | None = 1
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | str | None = None
    redirect_loop: bool = False
    reset_after: int | None = None
    truncate_after: int | None = None
    stall: float | None = None
    stall_after: int = 0
    trickle_bps: int | None = None
    corrupt: bool = False

    @property
    def replaces_reply(self) -> bool:
        """Whether the fault answers instead of the hub."""
        return self.status is not None or self.body is not None or self.redirect_loop

    @property
    def acts_on_body(self) -> bool:
        """Whether the fault needs a body to act on."""
        return (
            self.reset_after is not None
            or self.truncate_after is not None
            or self.trickle_bps is not None
            or self.corrupt
            or (self.stall is not None and self.stall_after > 0)
        )

    def label(self) -> str:
        """A short description for the request log."""
        names = ("status", "redirect_loop", "reset_after", "truncate_after", "stall")
        parts = [f"{n}={getattr(self, n)}" for n in names if getattr(self, n) not in (None, False)]
        parts += [f"{n}={getattr(self, n)}" for n in ("trickle_bps", "corrupt") if getattr(self, n)]
        return ",".join(parts) or "body"


@dataclass(frozen=True)
class RequestRecord:
    """One answered request, as the test hub saw it (tokens are never recorded)."""

    kind: Kind
    method: str
    path: str
    query: str
    status: int
    range: str | None
    bytes_sent: int
    authorized: bool
    fault: str | None
    started: float
    finished: float


@dataclass(frozen=True)
class _Span:
    """A byte range of a file to send."""

    file: HubFile
    offset: int
    length: int


@dataclass
class _Reply:
    """What the handler sends: status, headers and an optional body."""

    kind: Kind
    status: int
    headers: list[tuple[str, str]]
    body: bytes | _Span = b""

    @property
    def length(self) -> int:
        """Body length in bytes."""
        return self.body.length if isinstance(self.body, _Span) else len(self.body)


def _error(
    kind: Kind, status: int, code: str | None, message: str, extra: Iterable[tuple[str, str]] = ()
) -> _Reply:
    """An error reply shaped like the hub's: JSON body plus X-Error-Code/X-Error-Message."""
    headers = [("Content-Type", "application/json; charset=utf-8"), ("X-Error-Message", message)]
    if code is not None:
        headers.append(("X-Error-Code", code))
    headers.extend(extra)
    return _Reply(kind, status, headers, json.dumps({"error": message}).encode())


def _json(kind: Kind, payload: object, extra: Iterable[tuple[str, str]] = ()) -> _Reply:
    """A 200 JSON reply."""
    headers = [("Content-Type", "application/json; charset=utf-8"), *extra]
    return _Reply(kind, 200, headers, json.dumps(payload).encode())


def parse_range(header: str | None, size: int) -> tuple[int, int] | Literal["invalid"] | None:
    """The (start, end-inclusive) a single-range header asks for, None to send it all."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header[len("bytes=") :].strip().partition("-")
    if not sep or not (first.isdigit() or (not first and last.isdigit())):
        return None
    if last and not last.isdigit():
        return None
    if not first:
        suffix = int(last)
        return "invalid" if suffix == 0 or size == 0 else (max(0, size - suffix), size - 1)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return "invalid"
    return start, end


def _file_reply(
    kind: Kind, file: HubFile, range_header: str | None, headers: list[tuple[str, str]]
) -> _Reply:
    """A 200, 206 or 416 for a file, honouring a single byte range."""
    wanted = parse_range(range_header, file.size)
    headers = [*headers, ("Accept-Ranges", "bytes")]
    if wanted == "invalid":
        headers.append(("Content-Range", f"bytes */{file.size}"))
        return _Reply(kind, 416, headers)
    if wanted is None:
        return _Reply(kind, 200, headers, _Span(file, 0, file.size))
    start, end = wanted
    headers.append(("Content-Range", f"bytes {start}-{end}/{file.size}"))
    return _Reply(kind, 206, headers, _Span(file, start, end - start + 1))


def _disposition(path: str) -> str:
    name = PurePosixPath(path).name
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{quote(name)}\";"


class _ConnectionAborted(Exception):
    """The handler reset the connection on purpose; nothing more may be written."""


class _HTTPServer(ThreadingHTTPServer):
    """A threading server that knows its owner and role, and tracks open connections."""

    daemon_threads = True
    # The default backlog of 5 drops SYNs when a downloader opens dozens of connections at once.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], owner: HubServer, role: Literal["hub", "cdn"]):
        self.owner = owner
        self.role = role
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

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


class _Handler(BaseHTTPRequestHandler):
    """Speaks HTTP/1.1; the hub logic lives in HubServer, this class only does the I/O."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    sent = 0  # body bytes written so far, read live by HubServer.bytes_served
    # Set just before the write that may complete the response for the client, so the log
    # can wait for this request instead of missing it (see HubServer._settle).
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
        owner = self.server.owner
        started = time.monotonic()
        self.sent = 0
        self.last_write = False
        path = unquote(urlsplit(self.path).path)
        owner._begin(self, path)
        reply = _Reply("other", 500, [])
        fault: Fault | None = None
        try:
            reply = owner._reply(self.server.role, self.command, self.path, self.headers)
            fault = owner._take_fault(reply, self.command, path)
            if fault is not None and fault.replaces_reply:
                reply = self._fault_reply(reply.kind, fault)
            self._send(reply, fault)
        except _ConnectionAborted:
            pass
        except OSError:
            self.close_connection = True
        finally:
            owner._finish(
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

    def _fault_reply(self, kind: Kind, fault: Fault) -> _Reply:
        headers = list(fault.headers.items())
        if fault.redirect_loop:
            host = self.headers.get("Host") or self.server.owner.host
            return _Reply(kind, 302, [*headers, ("Location", f"http://{host}{self.path}")])
        status = fault.status or 200
        if fault.body is not None:
            body = fault.body.encode() if isinstance(fault.body, str) else fault.body
            headers.append(("Content-Type", "application/json; charset=utf-8"))
            return _Reply(kind, status, headers, body)
        return _error(kind, status, None, f"injected fault {status}", headers)

    def _send(self, reply: _Reply, fault: Fault | None) -> None:
        has_body = self.command != "HEAD" and reply.length > 0
        if fault is not None and fault.stall is not None and not has_body:
            self.server.owner._pause(fault.stall)
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
        rate = self.server.owner.cdn_rate_limit_bps if reply.kind == "cdn" else None
        if fault is None and rate is None:
            self._send_fast(reply.body)
        else:
            self._send_shaped(reply.body, reply.length, fault, rate)

    def _send_fast(self, body: bytes | _Span) -> None:
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

    def _send_shaped(self, body: bytes | _Span, length: int, fault: Fault | None, rate: int | None) -> None:
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
                self.server.owner._pause(fault.stall or 0.0)
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
                    self.server.owner._pause(ahead)
        if fault is not None and fault.reset_after is not None:
            self._reset()

    @staticmethod
    def _piece(body: bytes | _Span, pos: int, n: int) -> bytes:
        if isinstance(body, bytes):
            return body[pos : pos + n]
        return body.file.read(body.offset + pos, n)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a dying proxy would."""
        self.close_connection = True
        self.last_write = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        raise _ConnectionAborted


class HubServer:
    """A loopback hub plus its CDN origin; a context manager that starts and stops both."""

    def __init__(
        self,
        repos: Iterable[HubRepo] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        cdn_url: str | None = None,
        tokens: Iterable[str] = (DEFAULT_TOKEN,),
        token_access: Mapping[str, Iterable[str]] | None = None,
        tree_page_size: int = 1000,
        cdn_rate_limit_bps: int | None = None,
        cdn_url_ttl: float = 3600.0,
    ) -> None:
        self.host = host
        self.tokens = frozenset(tokens)
        self.token_access = {repo: frozenset(t) for repo, t in (token_access or {}).items()}
        self.tree_page_size = tree_page_size
        self.cdn_rate_limit_bps = cdn_rate_limit_bps
        self.cdn_url_ttl = cdn_url_ttl
        self._repos: dict[str, HubRepo] = {}
        self._lock = threading.Lock()
        self._finished = threading.Condition(self._lock)
        self._faults: list[tuple[Fault, int | None]] = []
        self._log: list[RequestRecord] = []
        self._inflight: dict[_Handler, str] = {}
        self._stopping = threading.Event()
        self._secret = os.urandom(16)
        self._threads: list[threading.Thread] = []
        for repo in repos:
            self.add_repo(repo)
        self._hub = _HTTPServer((host, port), self, "hub")
        self._cdn = _HTTPServer((host, cdn_port), self, "cdn") if cdn_url is None else None
        self._external_cdn = cdn_url.rstrip("/") if cdn_url is not None else None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> HubServer:
        """Serve both origins from background threads."""
        for srv in (self._hub, self._cdn):
            if srv is not None:
                thread = threading.Thread(
                    target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
                )
                thread.start()
                self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled handlers and cut open connections."""
        self._stopping.set()
        for srv in (self._hub, self._cdn):
            if srv is not None:
                if self._threads:
                    srv.shutdown()
                srv.cut_connections()
                srv.server_close()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The hub's base URL (what HF_ENDPOINT / endpoint= take)."""
        return self._origin(self._hub.server_address[1])

    @property
    def cdn_url(self) -> str:
        """The base URL LFS redirects point under (`<cdn_url>/<sha256>`)."""
        if self._external_cdn is not None:
            return self._external_cdn
        assert self._cdn is not None
        return self._origin(self._cdn.server_address[1]) + "/blobs"

    def _origin(self, port: int) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{port}"

    # -- repos, faults, log ----------------------------------------------------------------

    def add_repo(self, repo: HubRepo) -> None:
        """Serve another repo (replacing one with the same id)."""
        with self._lock:
            self._repos[repo.repo_id] = repo

    def repo(self, repo_id: str) -> HubRepo:
        """A served repo by id."""
        with self._lock:
            return self._repos[repo_id]

    def add_fault(self, fault: Fault) -> None:
        """Queue a fault; faults are tried in the order they were added."""
        with self._lock:
            self._faults.append((fault, fault.times))

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> list[Fault]:
        """Faults that still have uses left."""
        with self._lock:
            return [f for f, _ in self._faults]

    def requests(
        self, kind: FaultKind = "any", method: str | None = None, path: str | None = None
    ) -> list[RequestRecord]:
        """Logged requests, optionally filtered by kind, method and path substring."""
        with self._lock:
            self._settle()
            log = list(self._log)
        return [
            r
            for r in log
            if (kind == "any" or r.kind == kind)
            and (method is None or r.method == method)
            and (path is None or path in r.path)
        ]

    def bytes_served(self, path: str | None = None) -> int:
        """Body bytes sent by both origins (requests in flight included) to paths containing `path`."""
        with self._lock:
            self._settle()
            done = sum(r.bytes_sent for r in self._log if path is None or path in r.path)
            live = sum(h.sent for h, p in self._inflight.items() if path is None or path in p)
        return done + live

    def reset_log(self) -> None:
        """Forget logged requests."""
        with self._lock:
            self._log.clear()

    def _begin(self, handler: _Handler, path: str) -> None:
        with self._lock:
            self._inflight[handler] = path

    def _finish(self, handler: _Handler, record: RequestRecord) -> None:
        # One step, so bytes_served never counts a request twice or not at all.
        with self._lock:
            del self._inflight[handler]
            self._log.append(record)
            self._finished.notify_all()

    def _settle(self) -> None:
        """Wait (briefly, holding the lock) for requests whose response may already be complete."""
        self._finished.wait_for(lambda: not any(h.last_write for h in self._inflight), timeout=2)

    def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when the server stops."""
        self._stopping.wait(seconds)

    def _take_fault(self, reply: _Reply, method: str, path: str) -> Fault | None:
        has_body = method != "HEAD" and reply.length > 0 and reply.status < 300
        with self._lock:
            for i, (fault, left) in enumerate(self._faults):
                if fault.kind not in ("any", reply.kind):
                    continue
                if fault.path is not None and fault.path not in path:
                    continue
                if fault.method is not None and fault.method.upper() != method:
                    continue
                if fault.method is None and fault.acts_on_body and not has_body:
                    continue
                if left is None:
                    return fault
                if left <= 1:
                    del self._faults[i]
                else:
                    self._faults[i] = (fault, left - 1)
                return fault
        return None

    # -- the hub ---------------------------------------------------------------------------

    def _reply(
        self, role: Literal["hub", "cdn"], method: str, target: str, headers: Message[str, str]
    ) -> _Reply:
        split = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        parts = [unquote(p) for p in split.path.split("/")[1:]]
        if role == "cdn":
            return self._cdn_reply(parts, query, headers)
        host = headers.get("Host") or self.url.removeprefix("http://")
        if len(parts) >= 3 and parts[:2] == ["api", "models"]:
            return self._api_reply(parts[2:], query, headers, host, split.path)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve_reply(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), headers, host)
        return _error("other", 404, None, "Not Found")

    def _api_reply(
        self,
        parts: list[str],
        query: Mapping[str, str],
        headers: Message[str, str],
        host: str,
        raw_path: str,
    ) -> _Reply:
        repo_id = "/".join(parts[:2])
        if len(parts) == 2 or (len(parts) == 4 and parts[2] == "revision"):
            revision = parts[3] if len(parts) == 4 else "main"
            return self._revision_reply(repo_id, revision, query, headers)
        if len(parts) >= 4 and parts[2] == "tree":
            sub = "/".join(parts[4:]).strip("/")
            return self._tree_reply(repo_id, parts[3], sub, query, headers, host, raw_path)
        return _error("other", 404, None, "Not Found")

    def _access(
        self, kind: Kind, repo_id: str, headers: Message[str, str], check_gate: bool
    ) -> HubRepo | _Reply:
        """The repo if this request may see it, else the error the hub gives."""
        auth = headers.get("Authorization")
        token = auth.removeprefix("Bearer ").strip() if auth else None
        if token is not None and token not in self.tokens:
            return _error(kind, 401, None, INVALID_CREDENTIALS)
        with self._lock:
            repo = self._repos.get(repo_id)
        allowed = token is not None and (
            repo_id not in self.token_access or token in self.token_access[repo_id]
        )
        if repo is None or (repo.private and not allowed):
            return _error(kind, 401 if token is None else 404, "RepoNotFound", "Repository not found")
        if check_gate and repo.gated and not allowed:
            message = "Access to model is restricted and you are not in the authorized list."
            return _error(kind, 401 if token is None else 403, "GatedRepo", message)
        return repo

    def _revision_reply(
        self, repo_id: str, revision: str, query: Mapping[str, str], headers: Message[str, str]
    ) -> _Reply:
        repo = self._access("revision", repo_id, headers, check_gate=False)
        if isinstance(repo, _Reply):
            return repo
        commit = repo.resolve(revision)
        if commit is None:
            return _error("revision", 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = sorted(repo.files(commit).values(), key=lambda f: f.path)
        blobs = query.get("blobs", "").lower() in ("1", "true")
        info = {
            "_id": commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit,
            "lastModified": COMMIT_DATE,
            "createdAt": COMMIT_DATE,
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "library_name": "transformers",
            "siblings": [self._sibling(f) if blobs else {"rfilename": f.path} for f in files],
        }
        return _json("revision", info)

    @staticmethod
    def _sibling(f: HubFile) -> dict[str, object]:
        sibling: dict[str, object] = {"rfilename": f.path, "size": f.size, "blobId": f.oid}
        if f.is_lfs:
            sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
        return sibling

    def _tree_reply(
        self,
        repo_id: str,
        revision: str,
        sub: str,
        query: Mapping[str, str],
        headers: Message[str, str],
        host: str,
        raw_path: str,
    ) -> _Reply:
        repo = self._access("tree", repo_id, headers, check_gate=False)
        if isinstance(repo, _Reply):
            return repo
        commit = repo.resolve(revision)
        if commit is None:
            return _error("tree", 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        recursive = query.get("recursive", "").lower() in ("1", "true")
        expand = query.get("expand", "").lower() in ("1", "true")
        entries = _tree_entries(repo.files(commit), sub, recursive)
        if entries is None:
            message = f"{sub} does not exist on {revision}"
            return _error("tree", 404, "EntryNotFound", message, [("X-Repo-Commit", commit)])
        start = _decode_cursor(query.get("cursor"))
        page = entries[start : start + self.tree_page_size]
        if expand:
            last = {"id": commit, "title": "Upload folder", "date": COMMIT_DATE}
            page = [{**e, "lastCommit": last} for e in page]
        extra: list[tuple[str, str]] = []
        if start + self.tree_page_size < len(entries):
            params = {k: v for k, v in query.items() if k != "cursor"}
            params["cursor"] = _encode_cursor(start + self.tree_page_size)
            extra.append(("Link", f'<http://{host}{raw_path}?{urlencode(params)}>; rel="next"'))
        return _json("tree", page, extra)

    def _resolve_reply(
        self, repo_id: str, revision: str, path: str, headers: Message[str, str], host: str
    ) -> _Reply:
        repo = self._access("resolve", repo_id, headers, check_gate=True)
        if isinstance(repo, _Reply):
            return repo
        commit = repo.resolve(revision)
        if commit is None:
            return _error("resolve", 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        file = repo.files(commit).get(path)
        common = [("X-Repo-Commit", commit)]
        if file is None:
            message = f"Entry not found: {path}"
            return _error("resolve", 404, "EntryNotFound", message, common)
        if file.is_lfs:
            location = self._cdn_location(file, host)
            return _Reply(
                "resolve",
                302,
                [
                    *common,
                    ("Location", location),
                    ("ETag", f'"{file.oid}"'),
                    ("X-Linked-Etag", f'"{file.sha256}"'),
                    ("X-Linked-Size", str(file.size)),
                    ("Content-Type", "text/plain; charset=utf-8"),
                ],
            )
        file_headers = [
            *common,
            ("ETag", f'"{file.git_sha1}"'),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Disposition", _disposition(path)),
        ]
        return _file_reply("resolve", file, headers.get("Range"), file_headers)

    # -- the CDN ---------------------------------------------------------------------------

    def _cdn_location(self, file: HubFile, host: str) -> str:
        """A signed, expiring URL on the CDN origin, like the hub's cross-origin redirects."""
        disposition = {"response-content-disposition": _disposition(file.path)}
        if self._external_cdn is not None:
            return f"{self._external_cdn}/{file.sha256}?{urlencode(disposition)}"
        assert self._cdn is not None
        # Same host name the client used for the hub, so a hub reached by a non-loopback
        # address still redirects somewhere the client can reach.
        hostname = urlsplit(f"http://{host}").hostname or "127.0.0.1"
        base = f"http://{hostname}:{self._cdn.server_address[1]}/blobs"
        expires = str(int(time.time() + self.cdn_url_ttl))
        params = {**disposition, "Expires": expires, "Signature": self._sign(file.sha256, expires)}
        return f"{base}/{file.sha256}?{urlencode(params)}"

    def _sign(self, sha256: str, expires: str) -> str:
        return hmac.new(self._secret, f"{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()

    def _cdn_reply(self, parts: list[str], query: Mapping[str, str], headers: Message[str, str]) -> _Reply:
        if len(parts) != 2 or parts[0] != "blobs":
            return _error("cdn", 404, None, "NoSuchKey")
        sha256 = parts[1]
        expires, signature = query.get("Expires", ""), query.get("Signature", "")
        if not hmac.compare_digest(signature, self._sign(sha256, expires)):
            return _error("cdn", 403, None, "AccessDenied")
        if not expires.isdigit() or int(expires) < time.time():
            return _error("cdn", 403, None, "Request has expired")
        file = self._find_blob(sha256)
        if file is None:
            return _error("cdn", 404, None, "NoSuchKey")
        blob_headers = [
            ("Content-Type", "binary/octet-stream"),
            ("ETag", f'"{sha256}"'),
            ("Content-Disposition", query.get("response-content-disposition", "inline")),
        ]
        return _file_reply("cdn", file, headers.get("Range"), blob_headers)

    def _find_blob(self, sha256: str) -> HubFile | None:
        with self._lock:
            repos = list(self._repos.values())
        for repo in repos:
            for f in repo.all_files():
                if f.is_lfs and f.sha256 == sha256:
                    return f
        return None


def _tree_entries(files: Mapping[str, HubFile], sub: str, recursive: bool) -> list[dict[str, object]] | None:
    """Tree entries under `sub` like the hub lists them; None when `sub` is not a folder."""
    prefix = f"{sub}/" if sub else ""
    under = sorted(p for p in files if p.startswith(prefix))
    if sub and not under:
        return None
    dirs: dict[str, list[str]] = {}
    entries: list[dict[str, object]] = []
    for path in under:
        rest = PurePosixPath(path[len(prefix) :])
        for depth in range(1, len(rest.parts)):
            folder = prefix + "/".join(rest.parts[:depth])
            if folder not in dirs and (recursive or depth == 1):
                dirs[folder] = []
                entries.append({"type": "directory", "path": folder, "size": 0})
        if recursive or len(rest.parts) == 1:
            f = files[path]
            entry: dict[str, object] = {"type": "file", "oid": f.oid, "size": f.size, "path": path}
            if f.is_lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            entries.append(entry)
    for entry in entries:
        if entry["type"] == "directory":
            # Not git's tree hash, but stable and content-derived, which is all clients need.
            folder = f"{entry['path']}/"
            ids = "".join(f"{p}\0{files[p].oid}\0" for p in under if p.startswith(folder))
            entry["oid"] = hashlib.sha1(ids.encode(), usedforsecurity=False).hexdigest()
    return entries


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(cursor.encode()))["offset"]
    except (ValueError, KeyError, TypeError):
        return 0
    return offset if isinstance(offset, int) and offset >= 0 else 0


def directory_repo(repo_id: str, root: Path, gated: bool = False, private: bool = False) -> HubRepo:
    """A repo whose files are a directory's files (streamed from disk), skipping `.git`."""
    files = [
        HubFile(path.relative_to(root).as_posix(), source=path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(root).parts
    ]
    return HubRepo(repo_id, files, gated=gated, private=private)


def export_lfs_blobs(repo: HubRepo, directory: Path) -> list[Path]:
    """Lay out every LFS file of a repo as `<directory>/<sha256>`, for an external CDN (nginx)."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for file in repo.all_files():
        target = directory / file.sha256 if file.is_lfs else None
        if target is None or target.exists():
            continue
        if file.source is not None:
            try:
                os.link(file.source, target)
            except OSError:  # another filesystem: copy instead
                shutil.copyfile(file.source, target)
        else:
            target.write_bytes(file.data or b"")
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a directory (or the demo model) as a hub repo until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m agent.devhub.hub", description=main.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--serve-dir", type=Path, help="directory whose files form the repo")
    source.add_argument("--demo", action="store_true", help="serve the built-in tiny demo model")
    parser.add_argument("--repo", default="local/model", help="repo id (org/name) to serve it as")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=0, help="hub port (0: any free port)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (0: any free port)")
    parser.add_argument("--cdn-url", help="redirect LFS files to this blob server instead")
    parser.add_argument("--token", action="append", help="accepted token (repeatable)")
    parser.add_argument("--gated", action="store_true", help="require a token to download")
    parser.add_argument("--private", action="store_true", help="hide the repo without a token")
    parser.add_argument("--cdn-rate-limit-bps", type=int, help="per-connection CDN rate cap")
    args = parser.parse_args(argv)
    if args.demo:
        from agent.devhub.demo_model import demo_repo  # the demo model imports this module

        repo = demo_repo(gated=args.gated, private=args.private)
    else:
        if not args.serve_dir.is_dir():
            parser.error(f"not a directory: {args.serve_dir}")
        repo = directory_repo(args.repo, args.serve_dir, gated=args.gated, private=args.private)
    server = HubServer(
        [repo],
        host=args.host,
        port=args.port,
        cdn_port=args.cdn_port,
        cdn_url=args.cdn_url,
        tokens=args.token or (DEFAULT_TOKEN,),
        cdn_rate_limit_bps=args.cdn_rate_limit_bps,
    )
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with server:
        print(server.url, flush=True)
        print(f"serving {repo.repo_id} at {repo.commit} (CDN {server.cdn_url})", file=sys.stderr)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
