"""The chart's bucket settings: endpoint and region env, credentials by envFrom or IRSA, s3:// sources."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from agent.node.config import parse
from tests.integration.test_chart import CHART, agent_container, env_of, find, run_helm, template, values_args

pytestmark = pytest.mark.helm


def test_bucket_scenario_wires_endpoint_credentials_and_sources(helm: str) -> None:
    """ci/s3-bucket-values.yaml: AWS_ENDPOINT_URL/AWS_REGION set, the Secret by envFrom, IRSA annotated."""
    docs = template(helm, *values_args("s3-bucket"))
    container = agent_container(docs)
    env = env_of(container)
    assert env["AWS_ENDPOINT_URL"]["value"] == "https://minio.storage.svc.cluster.local:9000"
    assert env["AWS_REGION"]["value"] == "us-east-1"
    assert container["envFrom"] == [{"secretRef": {"name": "model-cache-s3"}}]
    assert not [k for k in env if k.startswith("AWS_SECRET") or k == "AWS_ACCESS_KEY_ID"]
    account = find(docs, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == (
        "arn:aws:iam::123456789012:role/model-cache-reader"
    )
    assert not [d for d in docs if d["kind"] == "Secret"]
    text = find(docs, "ConfigMap")["data"]["config.yaml"]
    assert yaml.safe_load(text)["defaults"]["sources"] == ["s3://models/approved"]
    assert parse(text).models[1].sources == ("s3://models/approved", "hf")


def test_defaults_have_no_bucket_settings(helm: str) -> None:
    """Without `s3` values: no AWS variables, no envFrom, no IRSA annotation."""
    docs = template(helm)
    container: dict[str, Any] = agent_container(docs)
    assert not [k for k in env_of(container) if k.startswith("AWS_")]
    assert "envFrom" not in container
    assert not find(docs, "ServiceAccount")["metadata"].get("annotations")


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "s3.endpoint=ftp://minio"],
        ["--set", "s3.irsaRoleArn=not-an-arn"],
        ["--set", "s3.credentialsSecret=Bad_Name"],
        ["--set-json", 'config.defaults.sources=["s3://models/../x"]'],
        ["--set-json", 'config.defaults.sources=["s3://x"]'],
    ],
)
def test_schema_refuses_bad_bucket_values(helm: str, args: list[str]) -> None:
    """Bad endpoints, role ARNs, Secret names and bucket URLs fail at install time."""
    proc = run_helm(helm, "template", "mc", str(CHART), *args)
    assert proc.returncode != 0
    assert "schema" in proc.stderr.lower() or "values don't meet" in proc.stderr.lower()
