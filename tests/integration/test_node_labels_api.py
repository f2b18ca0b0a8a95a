"""The agent's Kubernetes client against a loopback HTTP server standing in for the API server.

A stand-in, not an API server: it keeps one Node, applies JSON merge patches, records Events and
the bearer token of each request, and can refuse as RBAC or an admission policy would. What it
checks is the client's side of the wire: the in-cluster config, the token re-read on rotation,
the merge-patch content type, the Status message of a refusal, and a refused connection. The
real API server, RBAC and the admission policy are tested in tests/cluster/test_cluster_node_labels.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent import log
from agent.devhub import HubServer
from agent.node.kube import MERGE_PATCH, ApiError, InCluster, KubeClient
from agent.node.labels import label_key
from agent.node.nodesync import NodeSync, NodeTarget
from tests.integration.agentproc import DEMO, AgentProc, eventually, start_agent

NODE = "node-a"


def merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.node: dict[str, Any] = {"metadata": {"name": NODE, "uid": "u1", "labels": {"zone": "a"}}}
        self.tokens: list[str] = []
        self.content_types: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.refuse_patch = False


class Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _seen(self) -> None:
        self.server.tokens.append(self.headers.get("Authorization", ""))

    def do_GET(self) -> None:
        self._seen()
        if self.path == f"/api/v1/nodes/{NODE}":
            self._reply(200, self.server.node)
        else:
            self._reply(
                404, {"kind": "Status", "message": f'nodes "{self.path.rsplit("/", 1)[1]}" not found'}
            )

    def do_PATCH(self) -> None:
        self._seen()
        self.server.content_types.append(self.headers.get("Content-Type", ""))
        patch = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.refuse_patch:
            msg = "ValidatingAdmissionPolicy 'x' denied request: only labels under model-cache.io/"
            self._reply(403, {"kind": "Status", "message": msg})
            return
        self.server.node = merge(self.server.node, patch)
        self._reply(200, self.server.node)

    def do_POST(self) -> None:
        self._seen()
        self.server.events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self._reply(201, {})


@pytest.fixture
def standin() -> Iterator[StandIn]:
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def config(server: StandIn, tmp_path: Path) -> InCluster:
    token = tmp_path / "token"
    token.write_text("token-one\n")
    # The stand-in speaks plain HTTP; a pod's config (InCluster.from_env) is always https.
    return InCluster(f"http://127.0.0.1:{server.server_address[1]}", token, None)


def test_in_cluster_config_from_the_pod_environment(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert InCluster.from_env(env, tmp_path) is None  # no token mounted: no API access
    (tmp_path / "token").write_text("t")
    assert InCluster.from_env({}, tmp_path) is None  # not in a pod
    got = InCluster.from_env(env, tmp_path)
    assert got == InCluster("https://10.96.0.1:443", tmp_path / "token", None)
    (tmp_path / "ca.crt").write_text("pem")
    v6 = InCluster.from_env({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}, tmp_path)
    assert v6 is not None and v6.server == "https://[fd00::1]:443" and v6.ca_file == tmp_path / "ca.crt"


def test_the_token_is_read_again_on_every_call(standin: StandIn, tmp_path: Path) -> None:
    cfg = config(standin, tmp_path)
    client = KubeClient(cfg)
    try:
        assert client.get_node(NODE)["metadata"]["uid"] == "u1"
        cfg.token_file.write_text("token-two\n")  # the kubelet rotated it in place
        client.patch_node(NODE, {"metadata": {"labels": {"model-cache.io/a--b": "ready"}}})
        assert standin.tokens == ["Bearer token-one", "Bearer token-two"]
        assert standin.content_types == [MERGE_PATCH]
    finally:
        client.close()


def test_refusals_carry_the_api_servers_message(standin: StandIn, tmp_path: Path) -> None:
    client = KubeClient(config(standin, tmp_path))
    try:
        with pytest.raises(ApiError) as missing:
            client.get_node("node-b")
        assert missing.value.status == 404 and missing.value.permanent
        assert 'nodes "node-b" not found' in str(missing.value)
        standin.refuse_patch = True
        with pytest.raises(ApiError) as denied:
            client.patch_node(NODE, {"metadata": {"labels": {"x": "y"}}})
        assert denied.value.status == 403 and "ValidatingAdmissionPolicy" in str(denied.value)
        assert denied.value.operation == "patch_node"
    finally:
        client.close()
    port = standin.server_address[1]
    standin.shutdown()
    standin.server_close()
    gone = KubeClient(InCluster(f"http://127.0.0.1:{port}", tmp_path / "token", None), timeout=2)
    with pytest.raises(ApiError) as refused:
        gone.get_node(NODE)
    assert refused.value.status == 0 and not refused.value.permanent
    gone.close()


def test_node_sync_over_http_keeps_foreign_labels(standin: StandIn, tmp_path: Path) -> None:
    from agent.modelview import ModelState
    from agent.node.config import ModelConfig
    from agent.node.models import Change, StateChange
    from agent.spec import ModelSpec

    client = KubeClient(config(standin, tmp_path))
    sync = NodeSync(client, NodeTarget(NODE, "model-cache.io"), log.get())
    try:
        model = ModelConfig(ModelSpec("org/a"))
        sync.model_changed(StateChange(model, ModelState.READY, Change.FOUND, "c" * 40, 7))
        assert sync.step()
        labels = standin.node["metadata"]["labels"]
        assert labels == {"zone": "a", label_key("org/a"): "ready"}
        (event,) = standin.events
        assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": "u1"}
        assert event["reason"] == "ModelReady"
    finally:
        client.close()


def test_an_agent_with_a_node_name_but_no_credentials_works_as_before(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """The plain CLI outside a pod: --node-name without a token logs that labels are off once,
    makes no API call, and the model becomes ready as it always did."""
    config = tmp_path / "c.yaml"
    config.write_text(f"models:\n  - id: {DEMO}\n")
    env = {"PRELOAD_NODE_NAME": NODE, "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"}
    agent = start_agent(agents, tmp_path, hub, config, tmp_path / "cache", **env)
    off = agent.event("node_labels_off")
    assert off["node"] == NODE and "token" in off["reason"]
    eventually(lambda: agent.get("/readyz")[0] == 200, 30, "/readyz 200")
    assert not [e for e in agent.events() if e.get("event", "").startswith("node_sync")]
