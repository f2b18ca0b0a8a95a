"""The chart and the examples on a real Kubernetes: API server, scheduler, kubelet, containerd.

One session-wide cluster (scripts/cluster.sh, fixture `cluster`); the tests of this module run
in order and build on each other, as an operator would: a baseline namespace refuses the
agent, the chart is installed against a gated loopback hub (bound to the bridge gateway, so
pods reach it), the DaemonSet stays unready and the vLLM pods wait until the hub opens, then
rollout status, helm test, metrics through the Service; an upgrade adds a model; an in-place
ConfigMap edit reaches the running agent through the kubelet's symlink swap; uninstall keeps
the cache and a reinstall fetches nothing; the one-shot examples run to completion.

The examples are applied as written except: the preloader image is the local build
(`imagePullPolicy: Never`), the vLLM container is a stand-in (tests/cluster/conftest.py
STANDIN: opens the weights with safetensors, then serves /health on 8000) with small CPU and
memory requests, the model id is one the test hub serves, the node cache path is the
cluster's, and the one-shot pods get HF_ENDPOINT pointing at the hub.
"""

from __future__ import annotations

import calendar
import contextlib
import copy
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.devhub import DEFAULT_TOKEN, HubRepo, HubServer
from agent.devhub.demo_model import demo_files
from tests.cluster.conftest import CLUSTER_DIR, GATEWAY, IMAGE, NODE, STANDIN_IMAGE, Cluster
from tests.conftest import http_status
from tests.integration.podrun import _GateHandler

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "model-cache"
EXAMPLES = REPO / "examples"
NS = "model-cache"
RELEASE = "model-cache"
EXAMPLE_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
UPSTREAM_IMAGE = "ghcr.io/model-cache/preloader:0.1.0"
M_DIR = "demo-org/model-dir"  # the chart's first model (dir layout): examples/vllm-deployment.yaml
M_HF = "demo-org/model-hf"  # kept in the hf-cache layout: examples/vllm-deployment-hf-cache.yaml
M_UPGRADE = "demo-org/model-upgrade"  # added by helm upgrade
M_EDIT = "demo-org/model-edit"  # added by editing the ConfigMap in place
M_SELF = "demo-org/model-self"  # examples/init-container-only.yaml
M_JOB = "demo-org/model-job"  # examples/download-job.yaml
MODELS = (M_DIR, M_HF, M_UPGRADE, M_EDIT, M_SELF, M_JOB)
NODE_CACHE = CLUSTER_DIR / "state" / "node" / "data" / "models"  # the chart's cache.hostPath
JOB_SHARE = CLUSTER_DIR / "state" / "node" / "share"  # the download Job's PersistentVolume
ROLLOUT = 300  # seconds


# --- the gated hub, reachable from pods ------------------------------------------------------


class _GateServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, gate: BridgeGate) -> None:
        super().__init__((GATEWAY, 0), _GateHandler)
        self.gate = gate


class BridgeGate:
    """podrun.GatedHub on the bridge gateway: holds every request until open()."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.opened = threading.Event()
        self.lock = threading.Lock()
        self.held = 0
        self._server = _GateServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{GATEWAY}:{self._server.server_address[1]}"

    def close(self) -> None:
        self.opened.set()
        self._server.shutdown()
        self._server.server_close()


@dataclass
class World:
    """What the tests of this module share: the cluster, the hub and the gate in front of it."""

    cluster: Cluster
    hub: HubServer
    gate: BridgeGate
    values: Path
    notes: dict[str, str] = field(default_factory=dict)
    agent_uid: str = ""


@pytest.fixture(scope="module")
def world(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    repos = [HubRepo(m, demo_files()) for m in MODELS]
    hub = HubServer(repos, host=GATEWAY).start()
    gate = BridgeGate(hub.url)
    values = tmp_path_factory.mktemp("values") / "values.yaml"
    try:
        yield World(cluster, hub, gate, values)
    finally:
        gate.close()
        hub.stop()


# --- helpers ------------------------------------------------------------------------------------


def poll(
    what: str, check: Callable[[], bool], timeout: float, explain: Callable[[], str] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{explain()}")
        time.sleep(0.5)


def chart_values(gate_url: str, models: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": {"registry": "localhost", "repository": "model-cache", "tag": "dev", "pullPolicy": "Never"},
        "models": models,
        "config": {"startupJitter": "0s"},
        "hf": {"endpoint": gate_url},
        "cache": {"hostPath": str(NODE_CACHE)},
    }


def agent_pods(c: Cluster) -> list[dict[str, Any]]:
    pods = c.get(
        "pods", "-n", NS, "-l", f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=model-cache"
    )
    return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]


def the_agent_pod(c: Cluster) -> dict[str, Any]:
    pods = agent_pods(c)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def pod_url(pod: dict[str, Any], path: str) -> str:
    return f"http://{pod['status']['podIP']}:8080{path}"


def model_states(pod: dict[str, Any]) -> dict[str, str]:
    """/v1/models of the agent pod, straight to its pod IP: model id -> state."""
    import urllib.request

    with urllib.request.urlopen(pod_url(pod, "/v1/models"), timeout=5) as reply:
        doc = json.load(reply)
    items = doc.get("data", doc.get("models", doc)) if isinstance(doc, dict) else doc
    return {str(m.get("id")): str(m.get("state", m.get("status", ""))) for m in items}


def ready_condition(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def swap(doc: Any, mapping: dict[str, str]) -> Any:
    """Replace strings (whole or inside) everywhere in a parsed manifest."""
    if isinstance(doc, dict):
        return {k: swap(v, mapping) for k, v in doc.items()}
    if isinstance(doc, list):
        return [swap(v, mapping) for v in doc]
    if isinstance(doc, str):
        for old, new in mapping.items():
            doc = doc.replace(old, new)
    return doc


def example(name: str, model: str, hf_endpoint: str | None = None) -> list[dict[str, Any]]:
    """An example's documents, made runnable here (see the module docstring)."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    docs = swap(docs, {EXAMPLE_MODEL: model, "/data/models": str(NODE_CACHE)})
    for doc in docs:
        if doc["kind"] not in {"Deployment", "Job"}:
            continue
        spec = doc["spec"]["template"]["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            if c["image"] == UPSTREAM_IMAGE:
                c["image"], c["imagePullPolicy"] = IMAGE, "Never"
                if hf_endpoint and c.get("command") == ["preload"] and c["args"][:1] != ["wait"]:
                    c.setdefault("env", []).append({"name": "HF_ENDPOINT", "value": hf_endpoint})
            elif c["name"] == "vllm":
                standin(c)
    return docs


def standin(c: dict[str, Any]) -> None:
    """The vLLM container -> the stand-in: same mounts, env, probes and security context."""
    args = [str(a) for a in c["args"]]
    assert args[0] == "serve", args
    target = args[1]
    c["image"], c["imagePullPolicy"] = STANDIN_IMAGE, "Never"
    c["command"] = ["python3", "/standin.py"]
    c["args"] = [target] if target.startswith("/") else [target, "--hf-cache"]
    gpus = c["resources"]["limits"].get("nvidia.com/gpu", "1")
    c["resources"] = {
        "requests": {"cpu": "10m", "memory": "64Mi", "nvidia.com/gpu": gpus},
        "limits": {"cpu": "500m", "memory": "512Mi", "nvidia.com/gpu": gpus},
    }
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in c:
            c[probe]["periodSeconds"] = 2


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] in {"Deployment", "Job"}]
    return found


def dry_run_pod(c: Cluster, doc: dict[str, Any], namespace: str) -> subprocess.CompletedProcess[str]:
    """Create the workload's pod template as a Pod in `namespace` with --dry-run=server (admission runs)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"admission-{doc['metadata']['name']}"[:63], "namespace": namespace},
        "spec": copy.deepcopy(doc["spec"]["template"]["spec"]),
    }
    return c.kubectl_run("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod))


def namespace(c: Cluster, name: str, level: str | None) -> None:
    # warn at the same level: the cluster's default for an unlabelled one is baseline
    labels = {f"pod-security.kubernetes.io/{mode}": level for mode in ("enforce", "warn")} if level else {}
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    out = c.apply([doc])
    assert out.returncode == 0, out.stderr
    # Pods are refused until the controller manager has made the namespace's default account.
    poll(
        f"serviceaccount {name}/default",
        lambda: c.kubectl_run("get", "sa", "-n", name, "default").returncode == 0,
        60,
    )


def run_pod(c: Cluster, ns: str, name: str, command: list[str], timeout: float = 120) -> str:
    """Run a one-shot pod of the preloader image on the GPU node; its log (it must succeed)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    c.kubectl_run("delete", "pod", "-n", ns, name, "--ignore-not-found", "--wait=true")
    out = c.apply([pod])
    assert out.returncode == 0, out.stderr

    def finished() -> bool:
        phase = c.get("pod", "-n", ns, name)["status"].get("phase")
        return phase in {"Succeeded", "Failed"}

    poll(f"pod {ns}/{name}", finished, timeout, lambda: c.events(ns))
    log = c.kubectl_ok("logs", "-n", ns, name)
    phase = c.get("pod", "-n", ns, name)["status"]["phase"]
    assert phase == "Succeeded", f"{name}: {phase}\n{log}"
    c.kubectl_run("delete", "pod", "-n", ns, name, "--wait=false")
    return log


def init_log(c: Cluster, ns: str, selector: str, container: str) -> str:
    pods = c.get("pods", "-n", ns, "-l", selector)["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return c.kubectl_run("logs", "-n", ns, pods[0]["metadata"]["name"], "-c", container).stdout


def rollout_status(c: Cluster, timeout: str) -> subprocess.CompletedProcess[str]:
    return c.kubectl_run(
        "rollout", "status", "-n", NS, f"daemonset/{RELEASE}", f"--timeout={timeout}", timeout=ROLLOUT + 30
    )


# --- the tests, in order -------------------------------------------------------------------------


def test_node_looks_like_a_gpu_node(cluster: Cluster) -> None:
    node = cluster.get("node", NODE)
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]
    assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) >= 2
    assert ready_condition({"status": {"conditions": node["status"]["conditions"]}})


def test_baseline_namespace_refuses_the_agent(world: World) -> None:
    """NOTES.txt: without the `privileged` label the hostPath pod cannot start. The DaemonSet is
    accepted (with a warning) and its controller's pod creations are refused by Pod Security."""
    c = world.cluster
    for ns, level in (("mc-baseline", "baseline"), ("mc-unlabelled", None)):
        namespace(c, ns, level)
        world.values.write_text(yaml.safe_dump(chart_values(world.gate.url, [{"id": M_DIR}])))
        out = c.helm_run("install", "mc", str(CHART), "-n", ns, "-f", str(world.values))
        assert out.returncode == 0, out.stderr
        assert f"WARNING: namespace {ns} enforces" in out.stdout, out.stdout
        assert "would violate PodSecurity" in out.stderr, out.stderr

        def refused(ns: str = ns) -> bool:
            return "violates PodSecurity" in c.events(ns)

        poll(f"a FailedCreate event in {ns}", refused, 60, lambda ns=ns: c.events(ns))
        events = c.events(ns)
        assert "FailedCreate" in events and "hostPath" in events, events
        assert c.get("pods", "-n", ns)["items"] == []
        assert c.helm_run("uninstall", "mc", "-n", ns, "--wait").returncode == 0
        c.kubectl_ok("delete", "namespace", ns, "--wait=false")


def _admission_cases() -> list[tuple[str, str, str | None]]:
    """(example, the level its Namespace enforces, a level that must refuse it): every example
    with a workload; a pod with a hostPath volume must be refused by `baseline`."""
    cases = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if not any(d["kind"] in {"Deployment", "Job"} for d in docs):
            continue
        (ns_doc,) = [d for d in docs if d["kind"] == "Namespace"]
        level = ns_doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        host_path = any(
            "hostPath" in v for v in workload(docs)["spec"]["template"]["spec"].get("volumes", [])
        )
        cases.append((path.name, level, "baseline" if host_path else None))
    return cases


@pytest.mark.parametrize(("name", "allowed_in", "refused_in"), _admission_cases())
def test_examples_admitted_where_the_docs_say(
    cluster: Cluster, name: str, allowed_in: str, refused_in: str | None
) -> None:
    """Each example's pod is admitted (server-side dry run: Pod Security, the API's validation) at
    the level its own Namespace enforces, with no warning; a hostPath pod is refused by
    `baseline` (docs/kubernetes.md: such namespaces must be `privileged`)."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    if refused_in:
        assert allowed_in == "privileged", f"{name} mounts a hostPath but its namespace enforces {allowed_in}"
    probe_ns = f"psa-{allowed_in}"
    namespace(cluster, probe_ns, allowed_in)
    out = dry_run_pod(cluster, workload(docs), probe_ns)
    assert out.returncode == 0, out.stderr
    assert "violate" not in out.stderr, out.stderr
    if refused_in:
        namespace(cluster, f"psa-{refused_in}", refused_in)
        out = dry_run_pod(cluster, workload(docs), f"psa-{refused_in}")
        assert out.returncode != 0, out.stdout
        assert "violates PodSecurity" in out.stderr and "hostPath" in out.stderr, out.stderr


def test_install_waits_for_the_hub(world: World) -> None:
    """helm install into the namespace labelled per the docs; while the hub holds every request the
    agent runs but is not ready (/readyz 503), rollout status does not finish, and the vLLM pods
    sit in their wait-for-model init container."""
    c = world.cluster
    namespace(c, NS, "privileged")
    models = [{"id": M_DIR}, {"id": M_HF, "layout": "hf-cache"}]
    world.values.write_text(yaml.safe_dump(chart_values(world.gate.url, models)))
    out = c.helm_run("install", RELEASE, str(CHART), "-n", NS, "-f", str(world.values))
    assert out.returncode == 0, out.stderr
    assert f"Namespace {NS} enforces the `privileged` level" in out.stdout, out.stdout

    poll(
        "the agent pod to run",
        lambda: bool(agent_pods(c)) and the_agent_pod(c)["status"].get("phase") == "Running",
        120,
        lambda: c.events(NS),
    )
    pod = the_agent_pod(c)
    world.agent_uid = pod["metadata"]["uid"]
    chown = c.kubectl_ok("logs", "-n", NS, pod["metadata"]["name"], "-c", "chown-cache")
    assert "cache /data/models owned by 10001:10001" in chown  # the mountPath; NODE_CACHE on the node
    st = NODE_CACHE.stat()
    assert (st.st_uid, st.st_gid) == (
        10001,
        10001,
    )  # DirectoryOrCreate made it root's; chown-cache handed it over
    poll("the agent to ask the hub", lambda: world.gate.held > 0, 60)
    assert http_status(pod_url(pod, "/livez")) == 200
    assert http_status(pod_url(pod, "/readyz")) == 503
    assert not ready_condition(the_agent_pod(c))
    assert rollout_status(c, "5s").returncode != 0

    hf_token = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hf-token", "namespace": "vllm"},
        "stringData": {"token": DEFAULT_TOKEN},
    }
    for name, model in (("vllm-deployment.yaml", M_DIR), ("vllm-deployment-hf-cache.yaml", M_HF)):
        docs = example(name, model)
        ns_docs = [d for d in docs if d["kind"] == "Namespace"]
        assert c.apply(ns_docs).returncode == 0
        out = c.apply([*docs, hf_token])
        assert out.returncode == 0, out.stderr
    for app, model in (("vllm-qwen", M_DIR), ("vllm-qwen-hf", M_HF)):
        sel = f"app.kubernetes.io/name={app}"

        def waiting(sel: str = sel, model: str = model) -> bool:
            pods = c.get("pods", "-n", "vllm", "-l", sel)["items"]
            if len(pods) != 1:
                return False
            statuses = pods[0]["status"].get("initContainerStatuses", [])
            running = any(s["name"] == "wait-for-model" and "running" in s["state"] for s in statuses)
            return running and model in init_log(c, "vllm", sel, "wait-for-model")

        poll(f"{app}'s init container to wait", waiting, 120, lambda: c.events("vllm"))
        pod = c.get("pods", "-n", "vllm", "-l", sel)["items"][0]
        assert pod["status"]["phase"] == "Pending"
        assert not pod["status"].get("containerStatuses", [{}])[0].get("state", {}).get("running")
        world.notes[app] = init_log(c, "vllm", sel, "wait-for-model")
        assert "waiting" in world.notes[app], world.notes[app]
    time.sleep(3)
    assert http_status(pod_url(the_agent_pod(c), "/readyz")) == 503  # still held


def test_rollout_finishes_once_the_models_are_verified(world: World) -> None:
    c = world.cluster
    rollout = subprocess.Popen(
        [c.kubectl, "rollout", "status", "-n", NS, f"daemonset/{RELEASE}", f"--timeout={ROLLOUT}s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=c.env(),
    )
    time.sleep(2)
    assert rollout.poll() is None, "rollout status finished while the hub held the downloads"
    opened_at = time.time()
    world.gate.opened.set()
    out, err = rollout.communicate(timeout=ROLLOUT + 30)
    assert rollout.returncode == 0, out + err
    pod = the_agent_pod(c)
    assert ready_condition(pod)
    assert http_status(pod_url(pod, "/readyz")) == 200
    states = model_states(pod)
    assert set(states) >= {M_DIR, M_HF}, states
    assert (NODE_CACHE / M_DIR / "model.safetensors").is_file()
    assert any(NODE_CACHE.glob("models--demo-org--model-hf/snapshots/*/model.safetensors"))

    for app in ("vllm-qwen", "vllm-qwen-hf"):
        sel = f"app.kubernetes.io/name={app}"
        cmd = ["rollout", "status", "-n", "vllm", f"deployment/{app}", "--timeout=180s"]
        out = c.kubectl_run(*cmd, timeout=200)
        assert out.returncode == 0, out.stdout + out.stderr + c.events("vllm")
        (vpod,) = c.get("pods", "-n", "vllm", "-l", sel)["items"]
        wait_log = init_log(c, "vllm", sel, "wait-for-model")
        assert world.notes[app] in wait_log  # the lines written while held are the first ones
        standin_log = c.kubectl_ok("logs", "-n", "vllm", vpod["metadata"]["name"], "-c", "vllm")
        assert re.search(r"standin: loaded \d+ tensors from 1 file", standin_log), standin_log
        (vllm,) = vpod["status"]["containerStatuses"]
        started = vllm["state"]["running"]["startedAt"]
        assert calendar.timegm(time.strptime(started, "%Y-%m-%dT%H:%M:%SZ")) >= int(opened_at) - 1


def test_helm_test_and_metrics_through_the_service(world: World) -> None:
    c = world.cluster
    out = c.helm_run("test", RELEASE, "-n", NS, "--logs")
    assert out.returncode == 0, out.stdout + out.stderr + c.events(NS)
    assert "/readyz 200" in out.stdout, out.stdout
    svc = c.get("service", "-n", NS, RELEASE)
    assert svc["spec"]["internalTrafficPolicy"] == "Local"
    # kube-proxy honours it: the Service's traffic goes through a node-local chain (KUBE-SVL-*),
    # not the cluster-wide one (KUBE-SVC-*).
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    comment = f'"{NS}/{RELEASE}:http cluster IP"'
    jumps = [line for line in nat.splitlines() if line.startswith("-A KUBE-SERVICES ") and comment in line]
    assert jumps and all("-j KUBE-SVL-" in line for line in jumps), jumps or nat[-3000:]
    url = f"http://{RELEASE}.{NS}.svc:8080/metrics"
    log = run_pod(
        c,
        NS,
        "metrics-probe",
        [
            "python3",
            "-c",
            f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())",
        ],
    )
    assert "preload" in log and M_DIR in log, log[:2000]


def test_upgrade_adds_a_model(world: World) -> None:
    """helm upgrade with one more model: the checksum annotation rolls the agent pod; the new
    pod keeps the verified models (nothing fetched again) and fetches only the new one."""
    c = world.cluster
    world.hub.reset_log()
    models = [{"id": M_DIR}, {"id": M_HF, "layout": "hf-cache"}, {"id": M_UPGRADE}]
    world.values.write_text(yaml.safe_dump(chart_values(world.gate.url, models)))
    out = c.helm_run("upgrade", RELEASE, str(CHART), "-n", NS, "-f", str(world.values))
    assert out.returncode == 0, out.stderr
    out = rollout_status(c, f"{ROLLOUT}s")
    assert out.returncode == 0, out.stdout + out.stderr
    pod = the_agent_pod(c)
    assert pod["metadata"]["uid"] != world.agent_uid, (
        "the chart's checksum/config annotation should roll the pod"
    )
    world.agent_uid = pod["metadata"]["uid"]
    assert http_status(pod_url(pod, "/readyz")) == 200
    assert (NODE_CACHE / M_UPGRADE / "model.safetensors").is_file()
    fetched = {r.path for r in world.hub.requests() if r.path.endswith(".safetensors")}
    assert all(M_UPGRADE in p for p in fetched), fetched


def test_configmap_edit_reaches_the_running_agent(world: World) -> None:
    """The same ConfigMap change without a pod roll (what an edit in place does): the kubelet
    swaps the mounted `..data` symlink and the running agent reloads and fetches the model."""
    c = world.cluster
    cm = c.get("configmap", "-n", NS, RELEASE)
    config = yaml.safe_load(cm["data"]["config.yaml"])
    config["models"].append({**config["models"][0], "id": M_EDIT})
    patch = {"data": {"config.yaml": yaml.safe_dump(config)}}
    c.kubectl_ok("patch", "configmap", "-n", NS, RELEASE, "--type=merge", "-p", json.dumps(patch))

    def ready() -> bool:
        with contextlib.suppress(OSError, ValueError):
            return model_states(the_agent_pod(c)).get(M_EDIT) in {"ready", "verified"}
        return False

    poll(
        f"{M_EDIT} to become ready in the running agent",
        ready,
        180,
        lambda: c.kubectl_run("logs", "-n", NS, f"daemonset/{RELEASE}", "--tail=30").stdout,
    )
    pod = the_agent_pod(c)
    assert pod["metadata"]["uid"] == world.agent_uid
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    assert (NODE_CACHE / M_EDIT / "model.safetensors").is_file()


def test_uninstall_keeps_the_cache_and_a_reinstall_is_warm(world: World) -> None:
    c = world.cluster
    out = c.helm_run("uninstall", RELEASE, "-n", NS, "--wait")
    assert out.returncode == 0, out.stderr
    poll("the agent pod to go", lambda: not agent_pods(c), 120)
    for model in (M_DIR, M_UPGRADE, M_EDIT):
        assert (NODE_CACHE / model / "model.safetensors").is_file(), model
    world.hub.reset_log()
    out = c.helm_run("install", RELEASE, str(CHART), "-n", NS, "-f", str(world.values))
    assert out.returncode == 0, out.stderr
    out = rollout_status(c, f"{ROLLOUT}s")
    assert out.returncode == 0, out.stdout + out.stderr
    assert world.hub.bytes_served() == 0, [r.path for r in world.hub.requests()]
    assert http_status(pod_url(the_agent_pod(c), "/readyz")) == 200


def test_init_container_only_example_runs(world: World) -> None:
    c = world.cluster
    docs = example("init-container-only.yaml", M_SELF, hf_endpoint=world.hub.url)
    hf_token = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hf-token", "namespace": "vllm"},
        "stringData": {"token": DEFAULT_TOKEN},
    }
    out = c.apply([*docs, hf_token])
    assert out.returncode == 0, out.stderr
    out = c.kubectl_run(
        "rollout", "status", "-n", "vllm", "deployment/vllm-qwen-selfload", "--timeout=240s", timeout=260
    )
    assert out.returncode == 0, out.stdout + out.stderr + c.events("vllm")
    sel = "app.kubernetes.io/name=vllm-qwen-selfload"
    assert M_SELF in init_log(c, "vllm", sel, "preload")
    (pod,) = c.get("pods", "-n", "vllm", "-l", sel)["items"]
    log = c.kubectl_ok("logs", "-n", "vllm", pod["metadata"]["name"], "-c", "vllm")
    assert "standin: loaded" in log, log
    assert (NODE_CACHE / M_SELF / "model.safetensors").is_file()


def test_download_job_completes(world: World) -> None:
    """The Job in its `restricted` namespace fills the claim; a hostPath PersistentVolume, made
    ready for UID 10001 as an NFS export would be, stands in for the shared volume. The Job needs
    no GPU node and tolerates none; here the only node is one, so the test adds a toleration."""
    import os

    c = world.cluster
    JOB_SHARE.mkdir(parents=True, exist_ok=True)
    os.chown(JOB_SHARE, 10001, 10001)
    docs = example("download-job.yaml", M_JOB, hf_endpoint=world.hub.url)
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "shared-models-test"},
        "spec": {
            "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
            "accessModes": claim["spec"]["accessModes"],
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"namespace": claim["metadata"]["namespace"], "name": claim["metadata"]["name"]},
            "hostPath": {"path": str(JOB_SHARE), "type": "Directory"},
        },
    }
    # The Job is written for any node; this cluster's only node is a tainted GPU node.
    spec = workload(docs)["spec"]["template"]["spec"]
    assert "nodeSelector" not in spec and "tolerations" not in spec
    spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    out = c.apply([pv, *docs])
    assert out.returncode == 0, out.stderr
    job = workload(docs)["metadata"]["name"]
    out = c.kubectl_run(
        "wait", "-n", "model-store", f"job/{job}", "--for=condition=Complete", "--timeout=240s", timeout=260
    )
    assert out.returncode == 0, out.stdout + out.stderr + c.events("model-store")
    assert (JOB_SHARE / M_JOB / "model.safetensors").is_file()
