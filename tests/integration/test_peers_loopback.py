"""Peer fan-out between real agents on loopback: one hub, several `preload agent` processes.

Every agent listens on 127.0.0.1 with its own ports, so the peers are told apart by port
(tests/integration/test_peers_netns.py runs the same on separate network namespaces with
rate-limited links). Checked here: the hub sends each byte about once for all agents, every
copy is byte-identical, a lying peer is excluded and never makes a model ready with its bytes,
a dead peer costs nothing but a refused connection, a plain `preload --peers` (an init
container) takes the model from the agents, and the peer port serves nothing but content
by hash.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.devhub import HubFile, HubRepo, HubServer
from tests.conftest import RunPreload, free_port
from tests.hubfixtures import HubFactory
from tests.integration.agentproc import AgentProc

REPO = "peer-org/model"
FILES = 4
FILE_SIZE = 40 << 20  # several 16 MiB pieces per file, so pieces have different owners
MODEL_BYTES = FILES * FILE_SIZE
RATE = 40_000_000  # per hub connection: long enough a transfer for peers to overlap


def peer_repo() -> HubRepo:
    files = [HubFile("config.json", b'{"model_type": "peer"}\n')]
    for i in range(FILES):
        files.append(HubFile(f"model-{i:05d}-of-{FILES:05d}.safetensors", os.urandom(FILE_SIZE)))
    return HubRepo(REPO, files)


def lfs_bytes(hub: HubServer) -> int:
    """Bytes of weights the hub (its CDN) sent."""
    return sum(r.bytes_sent for r in hub.requests("cdn"))


def agent_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"models:\n  - id: {REPO}\n")
    return path


class Cluster:
    """Agents that all list each other as peers."""

    def __init__(self, tmp_path: Path, hub: HubServer, count: int, extra_peers: tuple[str, ...] = ()) -> None:
        self.peer_ports = [free_port() for _ in range(count)]
        peers = ",".join([*(f"http://127.0.0.1:{p}" for p in self.peer_ports), *extra_peers])
        config = agent_config(tmp_path)
        self.agents = [
            AgentProc(
                tmp_path,
                hub.url,
                config,
                tmp_path / f"cache{i}",
                env={"PRELOAD_PEERS": peers, "PRELOAD_PEER_LISTEN": f"127.0.0.1:{port}"},
            )
            for i, port in enumerate(self.peer_ports)
        ]
        for i in range(count):
            (tmp_path / f"cache{i}").mkdir()

    def start(self) -> Cluster:
        """Start every agent at once, as a DaemonSet rollout does."""
        with ThreadPoolExecutor(len(self.agents)) as pool:
            list(pool.map(AgentProc.start, self.agents))
        return self

    def stop(self) -> None:
        for a in self.agents:
            a.stop()


@pytest.fixture
def repo() -> HubRepo:
    return peer_repo()


@pytest.fixture
def started(tmp_path: Path, hub_factory: HubFactory, repo: HubRepo) -> Iterator[tuple[HubServer, Cluster]]:
    hub = hub_factory([repo], cdn_rate_limit_bps=RATE)
    cluster = Cluster(tmp_path, hub, 3)
    try:
        yield hub, cluster.start()
    finally:
        cluster.stop()


def model_digests(root: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / REPO).iterdir() if p.is_file()
    }


def expected_digests(repo: HubRepo) -> dict[str, str]:
    return {f.path: hashlib.sha256(f.data).hexdigest() for f in repo.files().values()}


def complete_line(agent: AgentProc) -> dict[str, Any]:
    return agent.event("preload_complete", timeout=60)


@pytest.mark.slow
def test_agents_share_one_origin_fetch(
    started: tuple[HubServer, Cluster], repo: HubRepo, tmp_path: Path
) -> None:
    hub, cluster = started
    for a in cluster.agents:
        a.wait_state(REPO, "ready", timeout=120)
    want = expected_digests(repo)
    for i in range(len(cluster.agents)):
        assert model_digests(tmp_path / f"cache{i}") == want
    lines = [complete_line(a) for a in cluster.agents]
    sent = lfs_bytes(hub)
    # Without peers the hub would send 3x the model; pieces are fetched once per cluster.
    assert sent <= 1.05 * MODEL_BYTES, (sent, lines)
    assert sum(line["peer_bytes"] for line in lines) >= 1.9 * MODEL_BYTES - 1.05 * MODEL_BYTES
    assert all(line["origin_bytes"] + line["peer_bytes"] >= MODEL_BYTES for line in lines)
    served = sum(a.metric("model_cache_peer_served_bytes_total") for a in cluster.agents)
    from_peers = sum(a.metric('model_cache_source_bytes_total{source="peer"}') for a in cluster.agents)
    assert served == from_peers > 0
    # No node uploads everything: the pieces are spread over the owners.
    assert max(a.metric("model_cache_peer_served_bytes_total") for a in cluster.agents) < 2 * MODEL_BYTES


@pytest.mark.slow
def test_init_container_takes_the_model_from_the_agents(
    started: tuple[HubServer, Cluster], repo: HubRepo, tmp_path: Path, run_preload: RunPreload
) -> None:
    hub, cluster = started
    for a in cluster.agents:
        a.wait_state(REPO, "ready", timeout=120)
    before = lfs_bytes(hub)
    dest = tmp_path / "pod-cache"
    dest.mkdir()
    peers = ",".join(f"http://127.0.0.1:{p}" for p in cluster.peer_ports)
    run = run_preload("--model", REPO, "--dest", str(dest), "--endpoint", hub.url, "--peers", peers)
    assert run.code == 0, run.stderr
    assert model_digests(dest) == expected_digests(repo)
    line = run.event("preload_complete")
    # The hub sends only the spot checks' samples (a few KiB per piece checked against it).
    assert line["peer_bytes"] >= MODEL_BYTES and lfs_bytes(hub) - before <= 0.001 * MODEL_BYTES


class _Liar(BaseHTTPRequestHandler):
    """A peer that claims to hold everything and answers every range with wrong bytes."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if "/have/" in self.path:  # it claims to hold every file whole: asked first for every piece
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.asked += 1  # type: ignore[attr-defined]
        first, _, last = self.headers["Range"].removeprefix("bytes=").partition("-")
        start, end = int(first), int(last) + 1
        self.send_response(206)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{FILE_SIZE}")
        self.end_headers()
        left = end - start
        while left:
            n = min(left, 1 << 20)
            self.wfile.write(b"\xa5" * n)
            left -= n

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def liar() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Liar)
    server.daemon_threads = True
    server.asked = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_a_lying_peer_is_excluded_and_never_makes_a_model_ready(
    tmp_path: Path, hub_factory: HubFactory, repo: HubRepo, liar: ThreadingHTTPServer
) -> None:
    hub = hub_factory([repo], cdn_rate_limit_bps=RATE)
    liar_peer = f"127.0.0.1:{liar.server_address[1]}"
    cluster = Cluster(tmp_path, hub, 2, extra_peers=(f"http://{liar_peer}",))
    try:
        cluster.start()
        for a in cluster.agents:
            a.wait_state(REPO, "ready", timeout=180)
        assert liar.asked > 0  # type: ignore[attr-defined]  # it was asked, and lied
        want = expected_digests(repo)
        for i in range(len(cluster.agents)):
            assert model_digests(tmp_path / f"cache{i}") == want
        excluded = [e for a in cluster.agents for e in a.events() if e.get("event") == "peer_excluded"]
        assert excluded and {e["peer"] for e in excluded} == {liar_peer}
        # Caught by a spot check on its first pieces, not after whole files: the hub sent the
        # model about once more than without the liar, not once per file per node.
        assert any("first bytes" in e["reason"] for e in excluded), excluded
        assert lfs_bytes(hub) <= 1.6 * MODEL_BYTES
        assert max(a.metric("model_cache_peers_excluded") for a in cluster.agents) == 1
    finally:
        cluster.stop()


@pytest.mark.slow
def test_a_dead_peer_costs_a_refused_connection(
    tmp_path: Path, hub_factory: HubFactory, repo: HubRepo, run_preload: RunPreload
) -> None:
    hub = hub_factory([repo])
    dest = tmp_path / "cache"
    dest.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"
    run = run_preload("--model", REPO, "--dest", str(dest), "--endpoint", hub.url, "--peers", dead)
    assert run.code == 0, run.stderr
    assert model_digests(dest) == expected_digests(repo)
    assert run.event("preload_complete")["origin_bytes"] >= MODEL_BYTES
    assert any(e.get("event") == "peer_failed" for e in run.events())


# --- the peer port's surface ----------------------------------------------------------------


@pytest.fixture
def lone_agent(tmp_path: Path, hub_factory: HubFactory) -> Iterator[tuple[AgentProc, int, HubRepo]]:
    repo = HubRepo(REPO, [HubFile("config.json", b"{}\n"), HubFile("model.safetensors", os.urandom(3 << 20))])
    hub = hub_factory([repo])
    port = free_port()
    token = tmp_path / "peer-token"
    token.write_text("s3cret-peer-token\n")
    (tmp_path / "cache").mkdir()
    agent = AgentProc(
        tmp_path,
        hub.url,
        agent_config(tmp_path),
        tmp_path / "cache",
        env={
            "PRELOAD_PEERS": f"http://127.0.0.1:{port}",
            "PRELOAD_PEER_LISTEN": f"127.0.0.1:{port}",
            "PRELOAD_PEER_TOKEN_FILE": str(token),
        },
    ).start()
    try:
        agent.wait_state(REPO, "ready", timeout=60)
        yield agent, port, repo
    finally:
        agent.stop()


def _get(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def test_the_peer_port_serves_content_by_hash_and_nothing_else(
    lone_agent: tuple[AgentProc, int, HubRepo],
) -> None:
    agent, port, repo = lone_agent
    weights = repo.files()["model.safetensors"]
    digest = hashlib.sha256(weights.data).hexdigest()
    blob = f"/peer/v1/blobs/sha256/{digest}"
    auth = {"Authorization": "Bearer s3cret-peer-token"}
    assert _get(port, blob, {"Range": "bytes=0-99"})[0] == 401  # no token
    assert _get(port, blob, {"Range": "bytes=0-99", "Authorization": "Bearer wrong"})[0] == 401
    status, body = _get(port, blob, {"Range": "bytes=1000-1999", **auth})
    assert status == 206 and body == weights.data[1000:2000]
    status, body = _get(port, blob, auth)
    assert status == 200 and body == weights.data
    assert _get(port, blob, {"Range": f"bytes={len(weights.data)}-", **auth})[0] == 416
    assert _get(port, f"/peer/v1/blobs/sha256/{'0' * 64}", auth)[0] == 404
    for path in (
        "/",
        "/v1/models",
        "/metrics",
        f"/peer/v1/blobs/sha256/../{digest}",
        f"/{REPO}/model.safetensors",
    ):
        assert _get(port, path, auth)[0] == 404, path
    assert _get(port, blob, auth, method="HEAD")[0] == 405
    # The token never shows up in what the agent says about itself.
    assert "s3cret-peer-token" not in agent.log_path.read_text()
    assert "s3cret-peer-token" not in json.dumps(agent.get("/v1/models")[1])
