"""Run the chart's DaemonSet pod and the examples' init containers as Kubernetes would run them.

The chart is rendered with `helm template` (its NOTES with `helm install --dry-run=client`) and
the example manifests are read as written; nothing is retyped. Two runners share one reading
of a pod (volumes, mounts, env, security context):

- LocalRunner: each `preload` container as a local `python -m agent` process. Mount paths in
  its args and env are rewritten to the host directories standing in for its volumes. No
  users, capabilities or read-only mounts: that is what PodmanRunner is for.
- PodmanRunner: each container under `podman --runtime runc run` in the image built by
  scripts/build-image.sh, with command/args/env as rendered, the securityContext translated
  to podman flags (numeric --user, --read-only without podman's extra tmpfs mounts,
  --cap-drop/--cap-add, no-new-privileges), resources.limits to --memory/--cpus, hostPath to a
  bind mount of a temp dir, a ConfigMap volume to its rendered files mounted read-only where
  the pod mounts them, emptyDir to --tmpfs. It shares the host network: the test hub listens
  on loopback.

Both: `valueFrom` env is resolved (spec.nodeName, the test's Secrets), and an in-cluster
Service URL is replaced by the loopback address of the agent it routes to.

`run_chart_and_waiters` is the whole scenario: the agent starts against a hub that holds every
request (GatedHub), the waiters start and must report that they are waiting while /readyz is
503 and the marker is absent, then the hub opens and every waiter must exit 0.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import pytest
import yaml

from agent.devhub import DEFAULT_TOKEN, HubServer
from agent.spec import Layout, ModelSpec
from agent.store import Store
from tests.conftest import free_port, http_status

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "model-cache"
EXAMPLES = REPO / "examples"
PODMAN = ["podman", "--runtime", "runc"]
# The examples' comments assume release `model-cache` in namespace `model-cache`: render so.
RELEASE = "model-cache"
NAMESPACE = "model-cache"
NODE_NAME = "gpu-node-1"
MODEL = "demo-org/tiny-model"  # what the test hub serves, in place of the placeholders below
EXAMPLE_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
NOTES_MODEL = "ORG/NAME"
AGENT_UID = 10001
# Secrets the pods may reference: the hf-cache scenario's token Secret holds the hub's token.
SECRETS = {"hf-token": {"token": DEFAULT_TOKEN}}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
GATE_LIMIT = 300.0  # a held request goes through after this long even if the test never opens


# --- rendering -------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A chart configuration and the vLLM example written for its layout."""

    name: str
    values: Path | None
    example: Path
    layout: Layout


SCENARIOS = {
    "default": Scenario("default", None, EXAMPLES / "vllm-deployment.yaml", Layout.DIR),
    "hf-cache": Scenario(
        "hf-cache",
        CHART / "ci" / "hf-cache-values.yaml",
        EXAMPLES / "vllm-deployment-hf-cache.yaml",
        Layout.HF_CACHE,
    ),
}


@dataclass
class Render:
    """The chart as `helm template` renders it, and the NOTES `helm install` prints."""

    docs: list[dict[str, Any]]
    notes: str

    def find(self, kind: str) -> dict[str, Any]:
        """The one document of this kind."""
        found = [d for d in self.docs if d["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    def pod(self) -> dict[str, Any]:
        """The DaemonSet's pod spec."""
        spec: dict[str, Any] = self.find("DaemonSet")["spec"]["template"]["spec"]
        return spec


def render(helm: str, values: list[Path]) -> Render:
    """Render the chart as RELEASE in NAMESPACE with these values files."""
    args = [RELEASE, str(CHART), "--namespace", NAMESPACE]
    for path in values:
        args += ["-f", str(path)]
    out = subprocess.run([helm, "template", *args], capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    dry = subprocess.run(
        [helm, "install", *args, "--dry-run=client"], capture_output=True, text=True, check=False, timeout=120
    )
    assert dry.returncode == 0, dry.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return Render(docs, dry.stdout.split("NOTES:", 1)[1])


def workload_pod(path: Path) -> dict[str, Any]:
    """The pod spec of the one Deployment or Job in an example manifest."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (work,) = [d for d in docs if d["kind"] in {"Deployment", "Job"}]
    spec: dict[str, Any] = work["spec"]["template"]["spec"]
    return spec


def notes_wait_args(notes: str) -> list[list[str]]:
    """Every `args: [wait, ...]` line the NOTES print (commented-out alternatives included)."""
    found = re.findall(r"^\s*#?\s*args: (\[wait, .*\])\s*$", notes, flags=re.MULTILINE)
    return [[str(a) for a in yaml.safe_load(line)] for line in found]


def service_url(rendered: Render) -> str:
    """The in-cluster base URL of the chart's Service."""
    svc = rendered.find("Service")
    return f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{svc['spec']['ports'][0]['port']}"


# --- the pieces of a pod ----------------------------------------------------------------


@dataclass
class Cluster:
    """What pods see around them: node directories, ConfigMaps, Secrets, Service addresses."""

    host_paths: dict[str, Path]  # node path -> the host directory standing in for it
    config_maps: dict[str, dict[str, str]]
    secrets: dict[str, dict[str, str]]
    services: dict[str, str]  # in-cluster base URL -> loopback URL of what it routes to


@dataclass(frozen=True)
class Mount:
    """One volumeMount resolved to the host directory behind it (an emptyDir is a tmpfs under podman)."""

    path: str
    host: Path
    read_only: bool
    empty_dir: bool = False
    size: str | None = None


def plan_mounts(
    pod: dict[str, Any], container: dict[str, Any], cluster: Cluster, pod_dir: Path
) -> list[Mount]:
    """Resolve a container's volumeMounts against its pod's volumes, as the kubelet would."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = []
    for m in container.get("volumeMounts", []):
        assert not m.get("subPath"), m
        volume = volumes[m["name"]]
        read_only = bool(m.get("readOnly", False))
        if "hostPath" in volume:
            node_path = volume["hostPath"]["path"]
            assert node_path in cluster.host_paths, f"unknown hostPath {node_path}"
            host = cluster.host_paths[node_path]
            kind = volume["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate" and not host.exists():
                host.mkdir(parents=True, mode=0o755)  # the kubelet makes it root:root 0755
            elif kind == "Directory":
                assert host.is_dir(), f"hostPath {node_path} (type Directory) does not exist yet"
            mounts.append(Mount(m["mountPath"], host, read_only))
        elif "configMap" in volume:
            name = volume["configMap"]["name"]
            data = cluster.config_maps[name]
            host = pod_dir / "configmap" / m["name"]
            host.mkdir(parents=True, exist_ok=True)
            items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (host / item["path"]).write_text(data[item["key"]])
            mounts.append(Mount(m["mountPath"], host, True))  # ConfigMap volumes are read-only
        elif "emptyDir" in volume:
            host = pod_dir / "emptydir" / m["name"]
            host.mkdir(parents=True, exist_ok=True)
            host.chmod(0o1777)
            size = volume["emptyDir"].get("sizeLimit")
            mounts.append(Mount(m["mountPath"], host, read_only, empty_dir=True, size=size))
        else:
            pytest.fail(f"volume kind not supported by the test runner: {volume}")
    return mounts


def plan_env(container: dict[str, Any], cluster: Cluster) -> dict[str, str]:
    """A container's env with valueFrom resolved (nodeName, Secrets, ConfigMaps)."""
    assert not container.get("envFrom"), container["name"]
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            assert ref["fieldRef"]["fieldPath"] == "spec.nodeName", ref
            env[var["name"]] = NODE_NAME
        elif "secretKeyRef" in ref:
            env[var["name"]] = cluster.secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            env[var["name"]] = cluster.config_maps[ref["configMapKeyRef"]["name"]][
                ref["configMapKeyRef"]["key"]
            ]
        else:
            pytest.fail(f"env source not supported by the test runner: {var}")
    return env


def substitute(items: list[str], mapping: dict[str, str]) -> list[str]:
    """Replace whole arguments, and path or URL prefixes, per mapping (longest key first)."""
    out = []
    keys = sorted(mapping, key=len, reverse=True)
    for item in items:
        for old in keys:
            if item == old or item.startswith(old + "/"):
                item = mapping[old] + item[len(old) :]
                break
        out.append(item)
    return out


def quantity(text: str | int | float) -> float:
    """A Kubernetes resource quantity as a number (bytes, or cores)."""
    value = str(text)
    for suffix, factor in (
        ("Ki", 2**10),
        ("Mi", 2**20),
        ("Gi", 2**30),
        ("Ti", 2**40),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
    ):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    if value.endswith("m"):
        return float(value[:-1]) / 1000
    return float(value)


SECURITY_KEYS = {
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "privileged",
    "capabilities",
    "seccompProfile",
}


def podman_security(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """The container's securityContext (over the pod's) as podman run flags."""
    pod_ctx = pod.get("securityContext", {})
    ctx = container.get("securityContext", {})
    assert set(ctx) <= SECURITY_KEYS, f"untranslated securityContext keys: {set(ctx) - SECURITY_KEYS}"
    assert set(pod_ctx) <= {"runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile"}, pod_ctx
    merged = {
        k: ctx.get(k, pod_ctx.get(k)) for k in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")
    }
    uid, gid = merged["runAsUser"], merged["runAsGroup"]
    assert isinstance(uid, int) and isinstance(gid, int), f"{container['name']}: numeric runAsUser/runAsGroup"
    if merged["runAsNonRoot"]:
        assert uid != 0, f"{container['name']}: runAsNonRoot with runAsUser 0"
    flags = ["--user", f"{uid}:{gid}"]
    if ctx.get("readOnlyRootFilesystem"):
        # podman --read-only also mounts tmpfs on /tmp, /var/tmp and /run; Kubernetes does not.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if ctx.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    assert not ctx.get("privileged"), container["name"]
    caps = ctx.get("capabilities", {})
    for cap in caps.get("drop", []):
        flags += ["--cap-drop", "all" if cap == "ALL" else cap]
    for cap in caps.get("add", []):
        flags += ["--cap-add", cap]
    seccomp = (merged["seccompProfile"] or {}).get("type", "RuntimeDefault")
    assert seccomp == "RuntimeDefault", seccomp  # podman applies its default profile
    return flags


def podman_resources(container: dict[str, Any]) -> list[str]:
    """resources.limits as podman flags (requests only matter to a scheduler)."""
    limits = container.get("resources", {}).get("limits", {})
    flags = []
    if "memory" in limits:
        flags += ["--memory", str(int(quantity(limits["memory"])))]
    if "cpu" in limits:
        flags += ["--cpus", f"{quantity(limits['cpu']):g}"]
    return flags


# --- processes --------------------------------------------------------------------------


class Proc:
    """A started container (a process), its output collected line by line."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str] | None, container_name: str | None
    ) -> None:
        self.name = name
        self.container_name = container_name
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def events(self) -> list[str]:
        """The `event` of every JSON log line so far."""
        out = []
        for line in list(self.lines):
            with contextlib.suppress(ValueError, AttributeError):
                out.append(str(json.loads(line).get("event")))
        return out

    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int:
        """The exit code; fail the test when it does not exit in time."""
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout:g}s:\n{self.output()}")
        self._reader.join(timeout=10)
        return code

    def output(self) -> str:
        """The last lines of output, for failure messages."""
        return "\n".join(self.lines[-60:])

    def stop(self) -> None:
        """Stop it (its container too) and reap it."""
        if self.container_name is not None and self.running():
            subprocess.run(
                [*PODMAN, "rm", "--force", "--time", "10", self.container_name],
                capture_output=True,
                check=False,
                timeout=120,
            )
        if self.running():
            self.popen.terminate()
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


class Runner(Protocol):
    """Starts a pod's container the way one runtime does."""

    kind: str

    def can_run(self, container: dict[str, Any]) -> bool:
        """Whether this runner runs this container (else the scenario must say why not)."""

    def start(self, name: str, pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> Proc:
        """Start the container; pod_dir holds the pod's emptyDirs and ConfigMap files."""


class LocalRunner:
    """`preload` containers as local processes of this checkout."""

    kind = "local"

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def can_run(self, container: dict[str, Any]) -> bool:
        """Only `preload` commands: a local process cannot act as root with one capability."""
        return bool(container.get("command", [])[:1] == ["preload"])

    def start(self, name: str, pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> Proc:
        """Run `python -m agent ARGS` with the container's mounts mapped to host directories."""
        mounts = plan_mounts(pod, container, self.cluster, pod_dir)
        mapping = {m.path: str(m.host) for m in mounts} | self.cluster.services
        args = substitute([str(a) for a in container.get("args", [])], mapping)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PRELOAD_"))}
        env.update({k: substitute([v], mapping)[0] for k, v in plan_env(container, self.cluster).items()})
        env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        return Proc(name, [sys.executable, "-m", "agent", *container["command"][1:], *args], env, None)


class PodmanRunner:
    """Containers under podman, in the locally built image, as the pod spec says."""

    kind = "podman"

    def __init__(self, cluster: Cluster, image: str, replaces: set[str]) -> None:
        self.cluster = cluster
        self.image = image
        self.replaces = replaces

    def can_run(self, container: dict[str, Any]) -> bool:
        """Every container of the preloader image."""
        return container["image"] in self.replaces

    def argv(self, name: str, pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> list[str]:
        """The `podman run` command line for a container."""
        assert container["image"] in self.replaces, container["image"]
        assert not container.get("workingDir") and not container.get("envFrom"), container["name"]
        argv = [*PODMAN, "run", "--rm", "--name", name, "--pull=never", "--network", "host"]
        argv += podman_security(pod, container)
        argv += podman_resources(container)
        for key, value in plan_env(container, self.cluster).items():
            argv += ["--env", f"{key}={substitute([value], self.cluster.services)[0]}"]
        for m in plan_mounts(pod, container, self.cluster, pod_dir):
            if m.empty_dir:
                options = f"rw,size={int(quantity(m.size))}" if m.size else "rw"
                argv += ["--tmpfs", f"{m.path}:{options},mode=1777"]
            else:
                argv += ["--volume", f"{m.host}:{m.path}:{'ro' if m.read_only else 'rw'}"]
        if "command" in container:
            argv += ["--entrypoint", json.dumps(container["command"])]
        argv.append(self.image)
        return argv + substitute([str(a) for a in container.get("args", [])], self.cluster.services)

    def start(self, name: str, pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> Proc:
        """`podman run` the container, attached."""
        cname = f"mc-test-{name}-{uuid.uuid4().hex[:8]}"
        return Proc(name, self.argv(cname, pod, container, pod_dir), None, cname)


# --- the gated hub ----------------------------------------------------------------------


class _GateHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _GateServer

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _forward(self) -> None:
        gate = self.server.gate
        if not gate.opened.is_set():
            with gate.lock:
                gate.held += 1
            gate.opened.wait(GATE_LIMIT)
        upstream = urlsplit(gate.upstream)
        conn = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
            conn.request(self.command, self.path, headers=headers)
            reply = conn.getresponse()
            body = reply.read()
            self.send_response_only(reply.status, reply.reason)
            names = set()
            for key, value in reply.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
                    names.add(key.lower())
            if "content-length" not in names:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client gave up while held
        finally:
            conn.close()


class _GateServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, gate: GatedHub) -> None:
        super().__init__(("127.0.0.1", 0), _GateHandler)
        self.gate = gate


class GatedHub:
    """HF_ENDPOINT for the agent: forwards to the test hub, but holds every request until open()."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.opened = threading.Event()
        self.lock = threading.Lock()
        self.held = 0
        self._server = _GateServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL of the gate."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> GatedHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.opened.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


# --- the scenario -----------------------------------------------------------------------


@dataclass
class Outcome:
    """What a scenario run left behind, for the caller's own checks."""

    cache: Path
    render: Render
    waiters: list[str] = field(default_factory=list)
    skipped_init: list[str] = field(default_factory=list)
    init_output: dict[str, str] = field(default_factory=dict)


def _poll(what: str, check: Callable[[], bool], timeout: float, procs: list[Proc]) -> None:
    """Wait until check() holds; fail early when one of procs exits."""
    deadline = time.monotonic() + timeout
    while not check():
        for proc in procs:
            if not proc.running():
                pytest.fail(
                    f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n{proc.output()}"
                )
        if time.monotonic() > deadline:
            outputs = "\n".join(f"--- {p.name}\n{p.output()}" for p in procs)
            pytest.fail(f"timed out waiting for {what}\n{outputs}")
        time.sleep(0.1)


def _stop_all(procs: list[Proc]) -> None:
    """Stop every started process, the last started first."""
    for proc in reversed(procs):
        proc.stop()


def _reported(proc: Proc, event: str) -> Callable[[], bool]:
    """A check that proc has logged this event."""
    return lambda: event in proc.events()


def _probe_url(container: dict[str, Any], probe: str) -> str:
    """The loopback URL of a container's httpGet probe (a numeric or a named port)."""
    get = container[probe]["httpGet"]
    port = get["port"]
    if not isinstance(port, int):
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return f"http://127.0.0.1:{port}{get['path']}"


def waiters(
    rendered: Render, scenario: Scenario, chart_host_path: str
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, pod, container) of every `preload wait` to run: the example's init containers
    as written, and each wait command NOTES prints, in the example's init container
    (mounting the chart's hostPath read-only at /models, as NOTES say)."""
    found = []
    pod = workload_pod(scenario.example)
    for c in pod.get("initContainers", []):
        if c.get("command") == ["preload"] and c["args"][:1] == ["wait"]:
            container = {**c, "args": substitute([str(a) for a in c["args"]], {EXAMPLE_MODEL: MODEL})}
            found.append((f"example-{c['name']}", pod, container))
    assert found, f"{scenario.example.name} has no `preload wait` init container"

    template = workload_pod(EXAMPLES / "vllm-deployment.yaml")
    (wait,) = template["initContainers"]
    volumes = [
        {"name": "models", "hostPath": {"path": chart_host_path, "type": "Directory"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    notes_pod = {**template, "volumes": volumes}
    commands = notes_wait_args(rendered.notes)
    assert {"--dest", "--agent"} <= {a for args in commands for a in args}, rendered.notes
    for i, args in enumerate(commands):
        mode = "dest" if "--dest" in args else "agent"
        container = {**wait, "args": substitute(args, {NOTES_MODEL: MODEL})}
        found.append((f"notes-{mode}-{i}", notes_pod, container))
    for name, _, container in found:
        for arg in container["args"]:
            # An agent URL must be the chart's Service (release and namespace `model-cache`).
            assert ".svc" not in arg or arg == service_url(rendered), (name, arg)
    return found


def run_chart_and_waiters(
    helm: str,
    hub: HubServer,
    tmp_path: Path,
    scenario: Scenario,
    make_runner: Callable[[Cluster], Runner],
    before_pod: Callable[[Path], None] | None = None,
) -> Outcome:
    """Render the chart, run its DaemonSet pod, and the waiters before the model is ready.

    The hub holds every request until every waiter has started and reported `waiting` (with
    /readyz 503 and no marker); then it opens and every waiter must exit 0 with the model ready.
    """
    procs: list[Proc] = []
    with GatedHub(hub.url) as gate, contextlib.ExitStack() as stack:
        stack.callback(_stop_all, procs)
        port = free_port()
        run_values = tmp_path / "run-values.yaml"
        run_values.write_text(
            yaml.safe_dump(
                {
                    "models": [{"id": MODEL}],
                    "config": {"startupJitter": "0s"},
                    "hf": {"endpoint": gate.url},
                    "agent": {"port": port},
                }
            )
        )
        rendered = render(helm, [*([scenario.values] if scenario.values else []), run_values])
        pod = rendered.pod()
        (agent,) = [c for c in pod["containers"] if c["name"] == "agent"]
        (cache_volume,) = [v for v in pod["volumes"] if v["name"] == "cache"]
        host_path = cache_volume["hostPath"]["path"]
        cache = tmp_path / "node" / host_path.lstrip("/")
        configmap = rendered.find("ConfigMap")
        agent_url = f"http://127.0.0.1:{port}"
        cluster = Cluster(
            host_paths={host_path: cache},
            config_maps={configmap["metadata"]["name"]: configmap["data"]},
            secrets=SECRETS,
            services={service_url(rendered): agent_url},
        )
        runner = make_runner(cluster)
        outcome = Outcome(cache=cache, render=rendered)
        if before_pod is not None:
            before_pod(cache)

        # The DaemonSet pod: init containers in order, then the agent.
        pod_dir = tmp_path / "pods" / "agent"
        for init in pod.get("initContainers", []):
            if not runner.can_run(init):
                outcome.skipped_init.append(init["name"])
                continue
            proc = runner.start(init["name"], pod, init, pod_dir)
            procs.append(proc)
            assert proc.wait(120) == 0, f"init container {init['name']} failed:\n{proc.output()}"
            outcome.init_output[init["name"]] = "\n".join(proc.lines)
        agent_proc = runner.start("agent", pod, agent, pod_dir)
        procs.append(agent_proc)

        live = _probe_url(agent, "livenessProbe")
        ready = _probe_url(agent, "readinessProbe")
        _poll("the agent to answer /livez", lambda: http_status(live) == 200, 90, [agent_proc])
        _poll("the agent to ask the hub", lambda: gate.held > 0, 60, [agent_proc])
        spec = ModelSpec(MODEL, layout=scenario.layout)
        marker = Store(cache).marker_path(spec)

        def not_ready() -> None:
            assert http_status(ready) == 503, "the model is ready before the hub opened"
            assert not marker.exists(), marker

        not_ready()

        # The waiters start while the hub holds the agent's requests.
        started = []
        for name, wait_pod, container in waiters(rendered, scenario, host_path):
            not_ready()
            proc = runner.start(name, wait_pod, container, tmp_path / "pods" / name)
            procs.append(proc)
            started.append(proc)
        for proc in started:
            _poll(f"{proc.name} to report waiting", _reported(proc, "waiting"), 120, [agent_proc, *started])
        not_ready()
        for proc in started:
            assert proc.running(), f"{proc.name} returned before the model was ready:\n{proc.output()}"

        gate.opened.set()
        for proc in started:
            code = proc.wait(60)
            assert code == 0, f"{proc.name} exited {code}:\n{proc.output()}"
            assert marker.exists(), f"{proc.name} returned 0 without a marker"
            assert "model_ready" in proc.events(), proc.output()
        outcome.waiters = [p.name for p in started]

        _poll("/readyz 200", lambda: http_status(ready) == 200, 30, [agent_proc])
        assert http_status(live) == 200
        with contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as conn:
            conn.request("GET", f"/v1/models/{MODEL}")
            view = json.loads(conn.getresponse().read())
        assert view["state"] == "ready", view
        assert view["layout"] == scenario.layout.value, view
        assert Path(Store(cache).model_path(spec, view["commit"])).is_dir()
        if "HF_TOKEN" in {e["name"] for e in agent.get("env", [])}:
            asked = hub.requests(kind="revision")
            assert asked and all(r.authorized for r in asked), (
                "HF_TOKEN (from the Secret) did not reach the hub"
            )
        return outcome


def node_tree_owners(root: Path) -> Iterator[tuple[Path, int]]:
    """(path, uid) of everything under root, root included."""
    yield root, root.stat().st_uid
    for path in root.rglob("*"):
        yield path, path.lstat().st_uid
