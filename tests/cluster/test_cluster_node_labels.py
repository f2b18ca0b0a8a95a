"""Node labels on the real cluster (issue 16): the agent labels its own Node per model, records
Events, and its token can do nothing else; serving pods select warm nodes on the label.

Its own module, so its own cluster (the fixture is module-scoped: about 10 s to start warm).
The tests run in order and build on each other: the chart is installed with
`nodeLabels.enabled=true` against a gated hub; while the hub holds the downloads the labels say
`downloading` and the required-affinity vLLM example stays unscheduled; once the gate opens
they say `ready` and the pod is scheduled and serves; the Events are there for `kubectl get
events` and `kubectl describe node`; the agent's own token is refused by the admission policy
on a second Node object and on a foreign label; a model removed from the ConfigMap loses its
label in the running agent; the preferred-affinity example, with no warm node, is scheduled
anyway and waits in its init container; and with the API server stopped a new model (that
example's) still downloads and the agent stays live and ready, the label catching up once the
API server is back and the waiting pod served.

The examples are made runnable as in test_cluster.py (its `example()`), with the label key of
the example's model swapped for the test model's.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.devhub import HubRepo, HubServer
from agent.devhub.demo_model import demo_files
from agent.node.labels import detail_key, label_key, label_name
from tests.cluster.conftest import CLUSTER_DIR, GATEWAY, NODE, Cluster, _script
from tests.cluster.test_cluster import (
    EXAMPLE_MODEL,
    BridgeGate,
    agent_pods,
    chart_values,
    example,
    model_states,
    namespace,
    pod_url,
    poll,
    ready_condition,
    swap,
)
from tests.conftest import http_status

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "model-cache"
NS = "model-cache"
RELEASE = "model-cache"
M_SERVE = "demo-org/model-labels"  # served by the required-affinity example
M_GONE = "demo-org/model-removed"  # removed from the ConfigMap later
M_OFFLINE = "demo-org/model-offline"  # the preferred-affinity example's; fetched with the API server away
MODELS = (M_SERVE, M_GONE, M_OFFLINE)
OTHER_NODE = "gpu-node-2"  # a Node object with no kubelet: the agent's token must not touch it
API_DOWN = 20.0  # seconds the API server stays stopped


@dataclass
class Lab:
    cluster: Cluster
    hub: HubServer
    gate: BridgeGate
    values: Path


@pytest.fixture(scope="module")
def lab(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    hub = HubServer([HubRepo(m, demo_files()) for m in MODELS], host=GATEWAY).start()
    gate = BridgeGate(hub.url)
    values = tmp_path_factory.mktemp("values") / "values.yaml"
    try:
        yield Lab(cluster, hub, gate, values)
    finally:
        gate.close()
        hub.stop()


def node_labels(c: Cluster, node: str = NODE) -> dict[str, str]:
    labels: dict[str, str] = c.get("node", node)["metadata"].get("labels", {})
    return labels


def label_of(c: Cluster, model: str) -> str | None:
    return node_labels(c).get(label_key(model))


def the_agent(c: Cluster) -> dict[str, Any]:
    pods = agent_pods(c)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def agent_log(c: Cluster) -> str:
    return c.kubectl_run("logs", "-n", NS, f"daemonset/{RELEASE}", "-c", "agent", "--tail=40").stdout


def node_events(c: Cluster) -> list[dict[str, Any]]:
    doc = c.get(
        "events", "-n", "default", "--field-selector", f"involvedObject.kind=Node,involvedObject.name={NODE}"
    )
    items: list[dict[str, Any]] = doc["items"]
    return items


def with_token(
    c: Cluster, token: str, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """kubectl as the agent: its own ServiceAccount token, no admin kubeconfig."""
    env = {k: v for k, v in c.env().items() if k != "KUBECONFIG"}
    return subprocess.run(
        [
            c.kubectl,
            "--kubeconfig=/dev/null",
            f"--server=https://{GATEWAY}:16443",
            f"--certificate-authority={CLUSTER_DIR / 'state' / 'pki' / 'ca.crt'}",
            f"--token={token}",
            *args,
        ],
        input=input,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )


def serving_example(c: Cluster) -> list[dict[str, Any]]:
    docs = example("vllm-deployment-node-affinity.yaml", M_SERVE)
    docs = swap(docs, {label_key(EXAMPLE_MODEL): label_key(M_SERVE)})
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    terms = deploy["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    assert terms["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"
    ] == [{"key": label_key(M_SERVE), "operator": "In", "values": ["ready"]}]
    return docs


def serving_pod(c: Cluster) -> dict[str, Any] | None:
    pods = c.get("pods", "-n", "vllm", "-l", "app.kubernetes.io/name=vllm-qwen-warm")["items"]
    return pods[0] if len(pods) == 1 else None


def condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in pod["status"].get("conditions", []) if c["type"] == kind]
    return found[0] if found else {}


def edit_models(c: Cluster, change: Any) -> None:
    """Change the config in place (the kubelet swaps the mount; the running agent reloads)."""
    cm = c.get("configmap", "-n", NS, RELEASE)
    config = yaml.safe_load(cm["data"]["config.yaml"])
    config["models"] = change(config["models"])
    patch = {"data": {"config.yaml": yaml.safe_dump(config)}}
    c.kubectl_ok("patch", "configmap", "-n", NS, RELEASE, "--type=merge", "-p", json.dumps(patch))


# --- the tests, in order -------------------------------------------------------------------------


def test_labels_say_downloading_and_the_required_affinity_pod_waits_unscheduled(lab: Lab) -> None:
    c = lab.cluster
    namespace(c, NS, "privileged")
    values = chart_values(lab.gate.url, [{"id": M_SERVE}, {"id": M_GONE}])
    values["nodeLabels"] = {"enabled": True}
    lab.values.write_text(yaml.safe_dump(values))
    out = c.helm_run("install", RELEASE, str(CHART), "-n", NS, "-f", str(lab.values))
    assert out.returncode == 0, out.stderr
    poll(
        "the agent pod to run",
        lambda: bool(agent_pods(c)) and the_agent(c)["status"].get("phase") == "Running",
        120,
    )
    poll("the agent to ask the gated hub", lambda: lab.gate.held > 0, 60)
    poll(
        "both labels to say downloading",
        lambda: label_of(c, M_SERVE) == label_of(c, M_GONE) == "downloading",
        60,
        lambda: agent_log(c),
    )
    detail = json.loads(c.get("node", NODE)["metadata"]["annotations"][detail_key()])
    assert detail[label_name(M_SERVE)]["state"] in {"pending", "downloading", "verifying"}

    docs = serving_example(c)
    assert c.apply([d for d in docs if d["kind"] == "Namespace"]).returncode == 0
    out = c.apply(docs)
    assert out.returncode == 0, out.stderr

    def unschedulable() -> bool:
        pod = serving_pod(c)
        return pod is not None and condition(pod, "PodScheduled").get("reason") == "Unschedulable"

    poll("the scheduler to find no warm node", unschedulable, 60, lambda: c.events("vllm"))
    time.sleep(3)  # still unscheduled a while later: nothing but the label holds it
    pod = serving_pod(c)
    assert pod is not None and not pod["spec"].get("nodeName"), pod["spec"].get("nodeName")
    assert "didn't match Pod's node affinity" in c.events("vllm")
    assert http_status(pod_url(the_agent(c), "/readyz")) == 503


def test_labels_say_ready_and_the_pod_is_scheduled_then_serves(lab: Lab) -> None:
    c = lab.cluster
    lab.gate.opened.set()
    poll(
        "both labels to say ready",
        lambda: label_of(c, M_SERVE) == label_of(c, M_GONE) == "ready",
        120,
        lambda: agent_log(c),
    )
    ready_seen = time.time()
    detail = json.loads(c.get("node", NODE)["metadata"]["annotations"][detail_key()])
    assert detail[label_name(M_SERVE)]["state"] == "ready"
    assert len(detail[label_name(M_SERVE)]["commit"]) == 40 and detail[label_name(M_SERVE)]["bytes"] > 0
    out = c.kubectl_run(
        "rollout", "status", "-n", "vllm", "deployment/vllm-qwen-warm", "--timeout=180s", timeout=200
    )
    assert out.returncode == 0, out.stdout + out.stderr + c.events("vllm")
    pod = serving_pod(c)
    assert pod is not None and pod["spec"]["nodeName"] == NODE
    scheduled = condition(pod, "PodScheduled")
    assert scheduled["status"] == "True"
    at = calendar.timegm(time.strptime(scheduled["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ"))
    assert at >= ready_seen - 5, (scheduled, ready_seen)  # scheduled when the label said ready
    log = c.kubectl_ok("logs", "-n", "vllm", pod["metadata"]["name"], "-c", "vllm")
    assert "standin: loaded" in log, log
    assert http_status(pod_url(the_agent(c), "/readyz")) == 200
    poll("the agent pod's Ready condition (probe period 10 s)", lambda: ready_condition(the_agent(c)), 30)


def test_state_changes_are_node_events(lab: Lab) -> None:
    c = lab.cluster
    events = node_events(c)
    seen = {(e["reason"], M_SERVE in e.get("message", "")) for e in events}
    assert {("ModelDownloading", True), ("ModelReady", True)} <= seen, seen
    ready = [e for e in events if e["reason"] == "ModelReady" and M_SERVE in e.get("message", "")]
    assert ready[0]["type"] == "Normal" and ready[0]["source"]["component"] == "model-cache-agent"
    listed = c.kubectl_ok("get", "events", "-n", "default")
    assert "ModelReady" in listed and M_SERVE in listed
    described = c.kubectl_ok("describe", "node", NODE)
    assert "ModelReady" in described and label_key(M_SERVE) in described


def test_the_agents_token_cannot_touch_another_node_or_a_foreign_label(lab: Lab) -> None:
    c = lab.cluster
    other = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": OTHER_NODE, "labels": {"test": "other"}},
    }
    assert c.apply([other]).returncode == 0
    try:
        pod = the_agent(c)["metadata"]["name"]
        read = "print(open('/var/run/secrets/kubernetes.io/serviceaccount/token').read().strip())"
        token = c.kubectl_ok("exec", "-n", NS, pod, "-c", "agent", "--", "python3", "-c", read).strip()
        own = label_key("demo-org/probe")

        # What the agent does: a label of ours on its own node.
        out = with_token(c, token, "label", "node", NODE, f"{own}=ready")
        assert out.returncode == 0, out.stderr
        assert with_token(c, token, "label", "node", NODE, f"{own}-").returncode == 0

        refusals = [
            (("label", "node", OTHER_NODE, f"{own}=ready"), "only the Node its token is bound to"),
            (("label", "node", NODE, "team=ml"), "only labels under model-cache.io/"),
            (("label", "node", NODE, "nvidia.com/gpu.present-"), "only labels under model-cache.io/"),
            (("annotate", "node", NODE, "note=x"), "only annotations under model-cache.io/"),
            (("patch", "node", NODE, "--type=merge", "-p", '{"spec":{"unschedulable":true}}'), "spec"),
        ]
        for args, why in refusals:
            out = with_token(c, token, *args)
            assert out.returncode != 0, (args, out.stdout)
            assert "ValidatingAdmissionPolicy" in out.stderr and why in out.stderr, (args, out.stderr)
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": "probe.", "namespace": "default"},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": OTHER_NODE},
            "reason": "Probe",
            "message": "about another node",
            "type": "Normal",
        }
        out = with_token(c, token, "create", "-f", "-", input=json.dumps(event))
        assert out.returncode != 0 and "ValidatingAdmissionPolicy" in out.stderr, out.stderr
        out = with_token(c, token, "delete", "node", OTHER_NODE, "--wait=false")
        assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr  # RBAC: no delete
        assert node_labels(c, OTHER_NODE) == {"test": "other"}
        assert node_labels(c)["nvidia.com/gpu.present"] == "true"
        assert not c.get("node", NODE)["spec"].get("unschedulable")
    finally:
        c.kubectl_run("delete", "node", OTHER_NODE, "--wait=false")


def test_a_model_removed_from_the_config_loses_its_label(lab: Lab) -> None:
    c = lab.cluster
    uid = the_agent(c)["metadata"]["uid"]
    edit_models(c, lambda models: [m for m in models if m["id"] != M_GONE])
    poll("the removed model's label to go", lambda: label_of(c, M_GONE) is None, 120, lambda: agent_log(c))
    assert label_of(c, M_SERVE) == "ready"
    detail = json.loads(c.get("node", NODE)["metadata"]["annotations"][detail_key()])
    assert set(detail) == {label_name(M_SERVE)}
    assert the_agent(c)["metadata"]["uid"] == uid  # the running agent, not a new pod
    poll(
        "a ModelRemoved event",
        lambda: any(e["reason"] == "ModelRemoved" and M_GONE in e.get("message", "") for e in node_events(c)),
        30,
    )


def test_the_preferred_affinity_pod_falls_back_to_waiting(lab: Lab) -> None:
    """No node is warm for a model not configured yet: the preferred-affinity example is
    scheduled anyway and waits in its init container (served in the next test)."""
    c = lab.cluster
    docs = example("vllm-deployment-prefer-warm.yaml", M_OFFLINE)
    docs = swap(docs, {label_key(EXAMPLE_MODEL): label_key(M_OFFLINE)})
    out = c.apply(docs)
    assert out.returncode == 0, out.stderr
    sel = "app.kubernetes.io/name=vllm-qwen-prefer"

    def waiting() -> bool:
        pods = c.get("pods", "-n", "vllm", "-l", sel)["items"]
        if len(pods) != 1 or pods[0]["spec"].get("nodeName") != NODE:
            return False
        statuses = pods[0]["status"].get("initContainerStatuses", [])
        return any(s["name"] == "wait-for-model" and "running" in s["state"] for s in statuses)

    poll("the preferred-affinity pod to be scheduled and wait", waiting, 120, lambda: c.events("vllm"))
    assert label_of(c, M_OFFLINE) is None


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in {"Z", "X"}


def _stop_apiserver() -> None:
    """Stop the API server `scripts/cluster.sh up` started for this module (by its pid file):
    TERM, and KILL when its graceful shutdown (draining watches) outlasts 10 s; `up` restarts it
    only once the old one is gone."""
    pid = int((CLUSTER_DIR / "run" / "kube-apiserver.pid").read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not _gone(pid):
        os.kill(pid, signal.SIGKILL)
    poll("the API server to exit", lambda: _gone(pid), 30)


def test_the_api_server_away_does_not_disturb_downloads_or_readiness(lab: Lab) -> None:
    c = lab.cluster
    pod = the_agent(c)
    lab.gate.opened.clear()
    held = lab.gate.held
    edit_models(c, lambda models: [*models, {**models[0], "id": M_OFFLINE}])
    poll("the agent to ask for the new model", lambda: lab.gate.held > held, 180, lambda: agent_log(c))
    poll("its label to say downloading", lambda: label_of(c, M_OFFLINE) == "downloading", 60)

    stopped = time.monotonic()
    _stop_apiserver()
    try:
        lab.gate.opened.set()

        def offline_ready() -> bool:
            with contextlib.suppress(OSError, ValueError):
                return model_states(pod).get(M_OFFLINE) == "ready"
            return False

        poll("the new model to be ready with the API server away", offline_ready, 60)
        assert http_status(pod_url(pod, "/readyz")) == 200
        while time.monotonic() - stopped < API_DOWN:
            assert http_status(pod_url(pod, "/livez")) == 200
            assert http_status(pod_url(pod, "/readyz")) == 200
            time.sleep(1)
        import urllib.request

        with urllib.request.urlopen(pod_url(pod, "/metrics"), timeout=5) as reply:
            metrics = reply.read().decode()
        errors = [
            line for line in metrics.splitlines() if line.startswith("model_cache_kube_api_errors_total{")
        ]
        assert errors and sum(float(line.rsplit(" ", 1)[1]) for line in errors) > 0, metrics[-2000:]
        assert "model_cache_node_labels_synced 0.0" in metrics
    finally:
        up = _script("up", timeout=300)  # starts what is not running: the API server
        assert up.returncode == 0, up.stderr[-3000:]
    poll("the label to catch up", lambda: label_of(c, M_OFFLINE) == "ready", 90, lambda: agent_log(c))
    after = the_agent(c)
    assert after["metadata"]["uid"] == pod["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert "node_sync_recovered" in agent_log(c)
    assert http_status(pod_url(after, "/readyz")) == 200
    # The preferred-affinity pod that waited on this cold node is served now.
    out = c.kubectl_run(
        "rollout", "status", "-n", "vllm", "deployment/vllm-qwen-prefer", "--timeout=180s", timeout=200
    )
    assert out.returncode == 0, out.stdout + out.stderr + c.events("vllm")
