"""The chart with node labels on (nodeLabels.enabled): lint, strict schema validation, checkov,
and what the RBAC, the admission policy and the DaemonSet look like. Off (the default) the chart
has no token and no RBAC: tests/integration/test_chart.py. The policy's behaviour is tested on
the real cluster (tests/cluster/test_cluster_node_labels.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "model-cache"
NAMESPACE = "model-cache"
RELEASE = "mc"
KUBE_VERSIONS = ["1.30.0", "latest"]
ON = ["--set", "nodeLabels.enabled=true"]
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
RBAC = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
POLICY = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}

pytestmark = pytest.mark.helm


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, check=False, timeout=120)


def template(helm: str, *args: str) -> list[dict[str, Any]]:
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = of_kind(docs, "DaemonSet")
    spec: dict[str, Any] = ds["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def on(helm: str) -> list[dict[str, Any]]:
    return template(helm, *ON)


def test_lint_with_node_labels(helm: str) -> None:
    for extra in ([], ["--set", "nodeLabels.admissionPolicy.enabled=false"]):
        proc = run_helm(helm, "lint", "--strict", str(CHART), *ON, *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rendered_with_node_labels_validates(on: list[dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    assert {d["kind"] for d in on} >= RBAC | POLICY
    for doc in on:
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], doc["kind"]
        elif doc["kind"] in {"Role", "RoleBinding"}:
            assert doc["metadata"]["namespace"] == "default"  # where Node Events live
        else:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
        for version in KUBE_VERSIONS:
            wanted = kubernetes_validate.latest_version() if version == "latest" else version
            kubernetes_validate.validate(doc, wanted, strict=True)


def test_rbac_is_get_and_patch_nodes_and_create_events(on: list[dict[str, Any]]) -> None:
    (account,) = of_kind(on, "ServiceAccount")
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    (cluster_role,) = of_kind(on, "ClusterRole")
    assert cluster_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    (role,) = of_kind(on, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]
    for kind, role_doc in (("ClusterRoleBinding", cluster_role), ("RoleBinding", role)):
        (binding,) = of_kind(on, kind)
        assert binding["subjects"] == [subject]
        assert binding["roleRef"]["name"] == role_doc["metadata"]["name"]


def test_policy_names_the_agent_the_prefix_and_the_node_claim(helm: str, on: list[dict[str, Any]]) -> None:
    (account,) = of_kind(on, "ServiceAccount")
    policies = {p["metadata"]["name"]: p for p in of_kind(on, "ValidatingAdmissionPolicy")}
    bindings = of_kind(on, "ValidatingAdmissionPolicyBinding")
    assert {b["spec"]["policyName"] for b in bindings} == set(policies)
    assert all(b["spec"]["validationActions"] == ["Deny"] for b in bindings)
    user = f"system:serviceaccount:{NAMESPACE}:{account['metadata']['name']}"
    for policy in policies.values():
        assert policy["spec"]["failurePolicy"] == "Fail"
        assert user in policy["spec"]["matchConditions"][0]["expression"]
        assert "authentication.kubernetes.io/node-name" in json.dumps(policy["spec"])
    other = template(helm, *ON, "--set", "nodeLabels.prefix=models.example.com")
    (node_policy,) = [p for p in of_kind(other, "ValidatingAdmissionPolicy") if "variables" in p["spec"]]
    ours = {v["name"]: v["expression"] for v in node_policy["spec"]["variables"]}["ours"]
    assert ours == "'models.example.com/'"
    off = template(helm, *ON, "--set", "nodeLabels.admissionPolicy.enabled=false")
    assert not {d["kind"] for d in off} & POLICY and {d["kind"] for d in off} >= RBAC


def test_only_the_agent_container_gets_a_token(on: list[dict[str, Any]]) -> None:
    spec = pod_spec(on)
    assert spec["automountServiceAccountToken"] is False
    (volume,) = [v for v in spec["volumes"] if v["name"] == "kube-api-access"]
    sources = volume["projected"]["sources"]
    assert sources[0]["serviceAccountToken"] == {"path": "token", "expirationSeconds": 3600}
    assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"
    (agent,) = [c for c in spec["containers"] if c["name"] == "agent"]
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["kube-api-access"]["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert mounts["kube-api-access"]["readOnly"] is True
    for init in spec.get("initContainers", []):
        assert "kube-api-access" not in {m["name"] for m in init.get("volumeMounts", [])}
    env = {e["name"]: e for e in agent["env"]}
    assert env["PRELOAD_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["PRELOAD_NODE_LABEL_PREFIX"]["value"] == "model-cache.io"
    assert env["PRELOAD_EVENTS_NAMESPACE"]["value"] == "default"
    args = agent["command"][1:] + agent["args"]
    proc = subprocess.run(
        [sys.executable, "-m", "agent", *args, "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env={**os.environ, **{k: "x" for k in ("PRELOAD_NODE_NAME",)}},
    )
    assert proc.returncode == 0, proc.stderr
    assert "--node-name" in proc.stdout


def test_off_by_default_no_token_no_rbac(helm: str) -> None:
    docs = template(helm)
    assert not {d["kind"] for d in docs} & (RBAC | POLICY)
    spec = pod_spec(docs)
    assert "kube-api-access" not in {v["name"] for v in spec["volumes"]}
    (agent,) = [c for c in spec["containers"] if c["name"] == "agent"]
    assert "PRELOAD_NODE_NAME" not in {e["name"] for e in agent["env"]}


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--set", "nodeLabels.prefix=Model_Cache"], "prefix"),
        (["--set", "nodeLabels.tokenExpirationSeconds=60"], "tokenExpirationSeconds"),
        (["--set", "nodeLabels.colour=red"], "colour"),
    ],
)
def test_schema_rejects_bad_node_label_values(helm: str, args: list[str], complaint: str) -> None:
    proc = run_helm(helm, "template", RELEASE, str(CHART), *ON, *args)
    assert proc.returncode != 0, proc.stdout[:500]
    assert complaint in proc.stderr, proc.stderr


def test_checkov_finds_nothing_with_node_labels(
    on: list[dict[str, Any]], checkov: str, tmp_path: Path
) -> None:
    (tmp_path / "chart-node-labels.yaml").write_text(yaml.safe_dump_all(on))
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
    for check in report["results"]["skipped_checks"]:
        assert len(check["check_result"].get("suppress_comment", "")) > 20, check
