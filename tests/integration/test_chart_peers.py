"""The chart with peer fan-out on (peers.enabled): the headless Service, the agent's env, port and
token file, the NetworkPolicy rule, the schema, checkov, and the rendered agent run as a local
process serving its peer port. Off (the default) nothing of it renders.

The agents' side of peering (who fetches what, lying and dead peers) is tested on loopback
(test_peers_loopback.py) and on the multi-node lab (test_peers_netns.py).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.devhub import HubFile, HubRepo, HubServer
from tests.conftest import free_port, http_status
from tests.hubfixtures import HubFactory
from tests.integration import podrun
from tests.integration.test_chart import (
    ALLOWED_SKIPS,
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    agent_container,
    env_of,
    find,
    pod_spec,
    run_helm,
    template,
)

pytestmark = pytest.mark.helm

ON = ["--set", "peers.enabled=true"]
TOKEN = ["--set", "peers.tokenSecret.name=model-cache-peer-token", "--set", "peers.tokenSecret.key=tok"]
SERVICE = f"{RELEASE}-model-cache-peers"
TOKEN_DIR = "/var/run/secrets/model-cache/peer"


@pytest.fixture(scope="module")
def on(helm: str) -> list[dict[str, Any]]:
    """Peers on with a token Secret."""
    return template(helm, *ON, *TOKEN)


def peer_rule(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The agents' NetworkPolicy rule for the peer port."""
    policy = find(docs, "NetworkPolicy", "model-cache")
    (rule,) = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "peer"]
    return rule


# --- off --------------------------------------------------------------------------------


def test_peers_off_renders_nothing_new(helm: str) -> None:
    """Off, every peers.* setting is inert: no Service, port, env, volume, fsGroup or policy rule."""
    default = template(helm)
    off = template(
        helm,
        "--set",
        "peers.port=9000",
        *TOKEN,
        "--set-json",
        'peers.from=[{"podSelector":{"matchLabels":{"app":"vllm"}}}]',
        "--set",
        "peers.service.annotations.a=b",
        "--set",
        "clusterDomain=k8s.example",
    )
    assert off == default
    assert not [d for d in default if d["metadata"]["name"].endswith("-peers")]
    agent = agent_container(default)
    assert [p["name"] for p in agent["ports"]] == ["http"]
    assert not [name for name in env_of(agent) if "PEER" in name]
    assert "peer-token" not in {v["name"] for v in pod_spec(default)["volumes"]}
    assert "fsGroup" not in pod_spec(default)["securityContext"]
    policy = find(default, "NetworkPolicy", "model-cache")
    assert [r["ports"] for r in policy["spec"]["ingress"]] == [[{"port": "http", "protocol": "TCP"}]]


# --- lint, validate, scan ---------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [[], TOKEN, [*TOKEN, "--set", "networkPolicy.enabled=false"], ["--set", "service.enabled=false"]],
    ids=["no-token", "token", "no-network-policy", "no-api-service"],
)
def test_lint_with_peers(helm: str, extra: list[str]) -> None:
    """`helm lint --strict` passes with peers on, with and without the token and the policies."""
    proc = run_helm(helm, "lint", "--strict", str(CHART), *ON, *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rendered_with_peers_validates(on: list[dict[str, Any]]) -> None:
    """Every manifest passes strict Kubernetes schema validation (1.30 and the newest)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    assert "-peers" in " ".join(d["metadata"]["name"] for d in on if d["kind"] == "Service")
    for doc in on:
        assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
        for version in KUBE_VERSIONS:
            wanted = kubernetes_validate.latest_version() if version == "latest" else version
            kubernetes_validate.validate(doc, wanted, strict=True)


def test_checkov_finds_nothing_with_peers(on: list[dict[str, Any]], checkov: str, tmp_path: Path) -> None:
    """checkov reports no failed check with peers and the token on, and needs no new skip."""
    (tmp_path / "chart-peers.yaml").write_text(yaml.safe_dump_all(on))
    proc = subprocess.run(
        [
            checkov,
            "-d",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--compact",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(proc.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert not failed, failed
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100
    resources = {c["resource"] for c in report["results"]["passed_checks"]}
    assert any(f"Service.{NAMESPACE}.{SERVICE}" in r for r in resources), sorted(resources)
    for check in report["results"]["skipped_checks"]:
        assert check["check_id"] in ALLOWED_SKIPS, check["check_id"]
        assert len(check["check_result"].get("suppress_comment", "")) > 20, check
    # The token is a file: the "secrets as env" skip stays reserved for HF_TOKEN and AWS keys.
    annotations = find(on, "DaemonSet")["metadata"]["annotations"]
    assert not [v for v in annotations.values() if v.startswith("CKV_K8S_35")]


# --- what renders -----------------------------------------------------------------------


def test_headless_service_lists_every_agent(on: list[dict[str, Any]]) -> None:
    """`<fullname>-peers`: headless, warming agents included, port `peer`, the agents' selector."""
    service = find(on, "Service", "-peers")
    assert service["metadata"]["name"] == SERVICE
    spec = service["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    assert spec["ports"] == [{"name": "peer", "port": 8472, "targetPort": "peer", "protocol": "TCP"}]
    assert spec["selector"] == find(on, "DaemonSet")["spec"]["selector"]["matchLabels"]
    assert "helm.sh/chart" not in spec["selector"]
    # The API Service is untouched: only `http`, on the caller's own node.
    api = find(on, "Service", "-model-cache")
    assert [p["name"] for p in api["spec"]["ports"]] == ["http"]
    assert api["spec"]["internalTrafficPolicy"] == "Local"


def test_agent_env_and_port_name_the_service(helm: str, on: list[dict[str, Any]]) -> None:
    """PRELOAD_PEERS is the Service's DNS name and port; the agent listens there as `peer`."""
    agent = agent_container(on)
    env = env_of(agent)
    assert env["PRELOAD_PEERS"] == {
        "name": "PRELOAD_PEERS",
        "value": f"dns:{SERVICE}.{NAMESPACE}.svc.cluster.local:8472",
    }
    assert env["PRELOAD_PEER_LISTEN"] == {"name": "PRELOAD_PEER_LISTEN", "value": "0.0.0.0:8472"}
    assert {"name": "peer", "containerPort": 8472, "protocol": "TCP"} in agent["ports"]

    docs = template(helm, *ON, "--set", "peers.port=9500", "--set", "clusterDomain=k8s.example.org")
    env = env_of(agent_container(docs))
    assert env["PRELOAD_PEERS"]["value"] == f"dns:{SERVICE}.{NAMESPACE}.svc.k8s.example.org:9500"
    assert env["PRELOAD_PEER_LISTEN"]["value"] == "0.0.0.0:9500"
    assert {"name": "peer", "containerPort": 9500, "protocol": "TCP"} in agent_container(docs)["ports"]
    assert find(docs, "Service", "-peers")["spec"]["ports"][0]["port"] == 9500
    assert "PRELOAD_PEER_TOKEN_FILE" not in env  # no Secret named: no token, no volume
    assert "peer-token" not in {v["name"] for v in pod_spec(docs)["volumes"]}
    assert "fsGroup" not in pod_spec(docs)["securityContext"]


def test_long_release_names_keep_the_service_name_valid(helm: str) -> None:
    """The longest release name still gives a peers Service name of at most 63 characters."""
    proc = run_helm(helm, "template", "r" * 53, str(CHART), "--namespace", NAMESPACE, *ON)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    service = find(docs, "Service", "-peers")
    name = service["metadata"]["name"]
    assert len(name) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    assert env_of(agent_container(docs))["PRELOAD_PEERS"]["value"].startswith(f"dns:{name}.{NAMESPACE}.svc.")


def test_peer_token_is_a_read_only_file_from_the_secret(on: list[dict[str, Any]]) -> None:
    """The Secret's key is a 0440 file in the agent container alone, readable by its group
    through fsGroup; the manifests hold its name, never a value."""
    pod = pod_spec(on)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "peer-token"]
    assert volume["secret"] == {
        "secretName": "model-cache-peer-token",
        "defaultMode": 0o440,
        "items": [{"key": "tok", "path": "token"}],
    }
    agent = agent_container(on)
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["peer-token"] == {"name": "peer-token", "mountPath": TOKEN_DIR, "readOnly": True}
    for init in pod.get("initContainers", []):
        assert "peer-token" not in {m["name"] for m in init.get("volumeMounts", [])}
    env = env_of(agent)
    assert env["PRELOAD_PEER_TOKEN_FILE"] == {
        "name": "PRELOAD_PEER_TOKEN_FILE",
        "value": f"{TOKEN_DIR}/token",
    }
    for name, var in env.items():
        if "PEER" in name:
            assert set(var) == {"name", "value"} and "secretKeyRef" not in json.dumps(var), var
    assert pod["securityContext"]["fsGroup"] == agent["securityContext"]["runAsGroup"] == 10001
    assert not [d for d in on if d["kind"] == "Secret"]


def test_an_existing_fs_group_is_kept(helm: str) -> None:
    """A podSecurityContext.fsGroup of the user's is left as it is."""
    docs = template(helm, *ON, *TOKEN, "--set", "podSecurityContext.fsGroup=2000")
    assert pod_spec(docs)["securityContext"]["fsGroup"] == 2000


def test_network_policy_admits_only_agents_to_the_peer_port(helm: str, on: list[dict[str, Any]]) -> None:
    """The peer port admits the release's agent pods (plus peers.from); the API rule is unchanged."""
    selector = find(on, "DaemonSet")["spec"]["selector"]["matchLabels"]
    assert peer_rule(on) == {
        "ports": [{"port": "peer", "protocol": "TCP"}],
        "from": [{"podSelector": {"matchLabels": selector}}],
    }
    off_policy = find(template(helm), "NetworkPolicy", "model-cache")
    policy = find(on, "NetworkPolicy", "model-cache")
    assert policy["spec"]["ingress"][0] == off_policy["spec"]["ingress"][0]
    assert policy["spec"]["podSelector"] == off_policy["spec"]["podSelector"]
    assert [p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]] == ["http", "peer"]

    vllm = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vllm"}}}
    docs = template(
        helm,
        *ON,
        "--set-json",
        f"peers.from=[{json.dumps(vllm)}]",
        "--set-json",
        'networkPolicy.from=[{"namespaceSelector":{}}]',
    )
    assert peer_rule(docs)["from"] == [{"podSelector": {"matchLabels": selector}}, vllm]
    http_rule = find(docs, "NetworkPolicy", "model-cache")["spec"]["ingress"][0]
    assert http_rule["from"] == [{"namespaceSelector": {}}]  # networkPolicy.from is the API's only

    docs = template(helm, *ON, "--set", "networkPolicy.enabled=false")
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert find(docs, "Service", "-peers")


# --- the schema -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--set", "peers.port=0"], "port"),
        (["--set", "peers.port=65536"], "port"),
        (["--set", "peers.port=peer"], "port"),
        (["--set", "peers.enabled=yes"], "enabled"),
        (["--set", "peers.colour=red"], "colour"),
        (["--set", "peers.token=s3cret"], "token"),
        (["--set", "peers.tokenSecret.value=s3cret"], "value"),
        (["--set", "peers.tokenSecret.name=Peer_Token"], "name"),
        (["--set", "peers.tokenSecret.key=a/b"], "key"),
        (["--set", "peers.service.type=ClusterIP"], "type"),
        (["--set", "clusterDomain=Cluster_Local"], "clusterDomain"),
        (["--set", "peers.port=8080"], "peers.port must differ from agent.port"),
    ],
)
def test_schema_rejects_bad_peer_values(helm: str, args: list[str], complaint: str) -> None:
    """Bad ports, unknown keys, a token value, bad names fail `helm template` (peers on)."""
    proc = run_helm(helm, "template", RELEASE, str(CHART), *ON, *args)
    assert proc.returncode != 0, proc.stdout[:500]
    assert complaint in proc.stderr, proc.stderr


# --- the rendered agent, run ------------------------------------------------------------

REPO_ID = "peer-org/chart-model"
WEIGHTS = os.urandom(3 << 20)
PEER_TOKEN = "chart-peer-token-2f7c"  # the Secret's value: never in the manifests or the logs


@pytest.fixture
def peer_hub(hub_factory: HubFactory) -> HubServer:
    files = [HubFile("config.json", b'{"model_type": "peer"}\n'), HubFile("model.safetensors", WEIGHTS)]
    return hub_factory([HubRepo(REPO_ID, files)])


def _mount_dirs(
    pod: dict[str, Any], container: dict[str, Any], tmp_path: Path, configmap: dict[str, str]
) -> dict[str, str]:
    """Each volumeMount's path -> a host directory holding what the kubelet would put there
    (the hostPath, the ConfigMap's files, an emptyDir, the Secret's items with defaultMode)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    mapping = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        host = tmp_path / "pod" / mount["name"]
        host.mkdir(parents=True)
        if "configMap" in volume:
            for key, text in configmap.items():
                (host / key).write_text(text)
        elif "secret" in volume:
            for item in volume["secret"]["items"]:
                assert item["key"] == "token", item  # what the Secret holds, below
                path = host / item["path"]
                path.write_text(PEER_TOKEN + "\n")  # as `kubectl create secret --from-file` keeps a newline
                path.chmod(volume["secret"]["defaultMode"])
        else:
            assert {"hostPath", "emptyDir"} & set(volume), volume
        mapping[mount["mountPath"]] = str(host)
    return mapping


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


@pytest.fixture
def rendered_agent(helm: str, peer_hub: HubServer, tmp_path: Path) -> Iterator[tuple[podrun.Proc, int, int]]:
    """The rendered DaemonSet's agent (peers and token on) as a local process: (proc, API port,
    peer port). The headless Service's name stands for `localhost`: this agent alone."""
    api_port = peer_port = free_port()
    while peer_port == api_port:
        peer_port = free_port()
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "models": [{"id": REPO_ID}],
                "config": {"startupJitter": "0s"},
                "hf": {"endpoint": peer_hub.url},
                "agent": {"port": api_port},
                "peers": {"enabled": True, "port": peer_port, "tokenSecret": {"name": "peer-token"}},
            }
        )
    )
    docs = template(helm, "-f", str(values))
    assert PEER_TOKEN not in yaml.safe_dump_all(docs)
    pod = pod_spec(docs)
    agent = agent_container(docs)
    mapping = _mount_dirs(pod, agent, tmp_path, find(docs, "ConfigMap")["data"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PRELOAD_"))}
    for var in agent["env"]:
        if "value" in var:  # NODE_NAME (a fieldRef) is not the agent's concern here
            env[var["name"]] = podrun.substitute([str(var["value"])], mapping)[0]
    # The headless Service's name resolves to every agent; here that is this one, on loopback.
    env["PRELOAD_PEERS"] = env["PRELOAD_PEERS"].replace(
        f"{SERVICE}.{NAMESPACE}.svc.cluster.local", "localhost"
    )
    env.update(PYTHONPATH=str(podrun.REPO), PYTHONUNBUFFERED="1")
    args = podrun.substitute([str(a) for a in agent["args"]], mapping)
    proc = podrun.Proc("agent", [sys.executable, "-m", "agent", *agent["command"][1:], *args], env, None)
    try:
        yield proc, api_port, peer_port
    finally:
        proc.stop()


def test_rendered_agent_serves_its_peer_port_with_the_token_file(
    rendered_agent: tuple[podrun.Proc, int, int],
) -> None:
    """As rendered: the agent reads the token from the mounted file, serves content by hash on
    the peer port only to a request with that token, counts itself out of the peer list (the
    headless name resolves to its own address) and reports the peer metrics."""
    proc, api_port, peer_port = rendered_agent
    ready = f"http://127.0.0.1:{api_port}/readyz"
    deadline = time.monotonic() + 60
    while http_status(ready) != 200:
        assert proc.running() and time.monotonic() < deadline, proc.output()
        time.sleep(0.1)

    blob = f"/peer/v1/blobs/sha256/{hashlib.sha256(WEIGHTS).hexdigest()}"
    auth = {"Authorization": f"Bearer {PEER_TOKEN}"}
    assert _get(peer_port, blob)[0] == 401
    assert _get(peer_port, blob, {"Authorization": "Bearer wrong"})[0] == 401
    status, body = _get(peer_port, blob, {"Range": "bytes=100-1123", **auth})
    assert status == 206 and body == WEIGHTS[100:1124]
    assert _get(peer_port, "/readyz", auth)[0] == 404  # the API stays on its own port

    # The server counts a sendfile once it returns, which may be after the client has read it all.
    served = re.compile(r"^model_cache_peer_served_bytes_total 1024\.0$", re.M)
    deadline = time.monotonic() + 10
    while not served.search(metrics := _get(api_port, "/metrics")[1].decode()):
        assert time.monotonic() < deadline, metrics
        time.sleep(0.05)
    assert re.search(r"^model_cache_peers_live 0\.0$", metrics, re.M), metrics
    origin = re.search(r'^model_cache_source_bytes_total\{source="origin"\} (\S+)$', metrics, re.M)
    assert origin and float(origin.group(1)) >= len(WEIGHTS), metrics
    assert PEER_TOKEN not in "\n".join(proc.lines)
