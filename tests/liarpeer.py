#!/usr/bin/env python3
"""A lying peer for the peer fan-out tests (issue 14): wrong bytes of the right length to any request.

It speaks no peer protocol on purpose: whatever an agent asks on the peer port, a Range request
gets a 206 with exactly the bytes asked for (random, so never the content), a whole-content
request for a hash it knows the size of (from `--sizes`, {sha256 or git sha1: size}) gets that many random
bytes, anything else gets 1 MiB of them. An agent that trusts a peer publishes a corrupt file;
one that checks every hash refetches from the origin and excludes this address.

    python tests/liarpeer.py --listen 10.213.7.20:8472 --sizes sizes.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

ALIVE = "/liar/alive"
DEFAULT_LENGTH = 1 << 20
RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
HASH = re.compile(r"[0-9a-f]{64}|[0-9a-f]{40}")
BLOCK = 1 << 20


class Liar(BaseHTTPRequestHandler):
    """Answers every GET/HEAD with garbage of the length the request implies."""

    server: LiarServer
    protocol_version = "HTTP/1.1"

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        if self.path == ALIVE:
            self._send(200, [], b"alive\n", body)
            return
        found = HASH.search(self.path)
        total = self.server.sizes.get(found.group(0)) if found else None
        match = RANGE.match(self.headers.get("Range", "").strip())
        with self.server.lock:
            self.server.requests += 1
        if match:
            start = int(match[1])
            end = int(match[2]) if match[2] else (total or start + DEFAULT_LENGTH) - 1
            if total is not None:
                end = min(end, total - 1)
            length = max(end - start + 1, 0)
            headers = [("Content-Range", f"bytes {start}-{end}/{total if total is not None else '*'}")]
            self._stream(206, headers, length, body)
        else:
            self._stream(200, [], total if total is not None else DEFAULT_LENGTH, body)

    def _send(self, status: int, headers: list[tuple[str, str]], data: bytes, body: bool) -> None:
        self.send_response(status)
        for k, v in [*headers, ("Content-Length", str(len(data)))]:
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _stream(self, status: int, headers: list[tuple[str, str]], length: int, body: bool) -> None:
        self.send_response(status)
        for k, v in [*headers, ("Content-Length", str(length)), ("Content-Type", "application/octet-stream")]:
            self.send_header(k, v)
        self.end_headers()
        if not body:
            return
        left = length
        try:
            while left:
                n = min(left, BLOCK)
                self.wfile.write(os.urandom(n))
                left -= n
        except (BrokenPipeError, ConnectionResetError):
            return
        with self.server.lock:
            self.server.lied_bytes += length

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"liar: {self.client_address[0]} {format % args}\n")


class LiarServer(ThreadingHTTPServer):
    """The server, with what it has answered so far."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], sizes: dict[str, int]) -> None:
        super().__init__(address, Liar)
        self.sizes = sizes
        self.lock = threading.Lock()
        self.requests = 0
        self.lied_bytes = 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the summary line is worth a clean exit


def main(argv: Sequence[str] | None = None) -> int:
    """Serve lies until killed."""
    parser = argparse.ArgumentParser(prog="liarpeer", description=__doc__)
    parser.add_argument("--listen", default="0.0.0.0:8472", help="HOST:PORT to answer on")
    parser.add_argument("--sizes", type=Path, help="JSON {sha256: size} of the model's files")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    sizes = json.loads(args.sizes.read_text()) if args.sizes else {}
    signal.signal(signal.SIGTERM, _interrupt)
    with LiarServer((host, int(port)), sizes) as server:
        print(f"liar: lying on {args.listen}", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            print(f"liar: {server.requests} requests, {server.lied_bytes} wrong bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
