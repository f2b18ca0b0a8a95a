"""Node labels: the label key of a model, the patch and Event bodies, the backoff, and the node
sync driven by the model table's observer hook.

In-process. The node sync talks to `MemoryNodeApi`, a Node held in memory that applies JSON
merge patches as the API server does (RFC 7386) and records Events; the HTTP client itself is
tested against a loopback stand-in server in tests/integration/test_node_labels_api.py and on
the real cluster in tests/cluster/test_cluster_node_labels.py.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from agent import log
from agent.cli.root import cli
from agent.errors import UsageError
from agent.integrity import SHA256, Digest
from agent.manifest import Manifest, RemoteFile
from agent.modelview import ModelState
from agent.node import metrics
from agent.node.config import ModelConfig
from agent.node.kube import ApiError
from agent.node.labels import (
    DEFAULT_PREFIX,
    NAME_MAX,
    LabelValue,
    ModelLabel,
    NodeEvent,
    check_prefix,
    detail_annotation,
    detail_key,
    event_body,
    label_key,
    label_name,
    label_value,
    node_patch,
)
from agent.node.models import Change, Job, ModelTable, StateChange
from agent.node.nodesync import BACKOFF_FIRST, BACKOFF_MAX, NodeSync, NodeTarget, backoff, event_for
from agent.spec import ModelSpec
from agent.store import Store

LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
NODE = "gpu-node-7"
P = DEFAULT_PREFIX


# --- the label key ------------------------------------------------------------------------------


def test_label_key_is_readable_for_a_plain_repo() -> None:
    assert label_key("Qwen/Qwen2.5-0.5B-Instruct") == "model-cache.io/Qwen--Qwen2.5-0.5B-Instruct"
    assert label_key("Qwen/Qwen2.5-0.5B-Instruct", "main", "example.com") == (
        "example.com/Qwen--Qwen2.5-0.5B-Instruct"
    )


def test_a_revision_other_than_main_is_part_of_the_key() -> None:
    assert label_name("meta-llama/Llama-3.1-8B", "v2") == "meta-llama--Llama-3.1-8B--v2"
    assert label_name("meta-llama/Llama-3.1-8B", "main") == "meta-llama--Llama-3.1-8B"


def test_a_long_key_keeps_its_readable_start_and_gets_a_hash() -> None:
    name = label_name("Qwen/Qwen2.5-0.5B-Instruct", COMMIT)
    assert len(name) <= NAME_MAX and LABEL_NAME.match(name), name
    assert name.startswith("Qwen--Qwen2.5-0.5B-Instruct--0123456789")
    other = label_name("Qwen/Qwen2.5-0.5B-Instruct", COMMIT[:-1] + "8")  # same readable start
    assert other != name and len(other) <= NAME_MAX


def test_a_revision_a_label_cannot_spell_is_hashed_not_mangled_into_a_collision() -> None:
    a, b = label_name("org/model", "feature/x"), label_name("org/model", "feature-x")
    assert b == "org--model--feature-x"
    assert a != b and LABEL_NAME.match(a), a


_REPO_PART = st.text("abcXYZ019-_.", min_size=1, max_size=96)


@given(_REPO_PART, _REPO_PART, st.one_of(st.just("main"), st.text("abcf0123/._-v", min_size=1, max_size=60)))
def test_every_key_is_a_valid_label_name(org: str, name: str, revision: str) -> None:
    got = label_name(f"{org}/{name}", revision)
    assert len(got) <= NAME_MAX and LABEL_NAME.match(got), got


def test_prefix_must_be_a_dns_subdomain() -> None:
    assert check_prefix("models.example.com") == "models.example.com"
    for bad in ("Model-Cache.io", "model_cache.io", "a/b", "", "-x.io", "x" * 254):
        with pytest.raises(UsageError):
            check_prefix(bad)


def test_only_ready_says_ready() -> None:
    assert label_value(ModelState.READY) is LabelValue.READY
    assert label_value(ModelState.FAILED) is LabelValue.FAILED
    for state in (ModelState.PENDING, ModelState.DOWNLOADING, ModelState.VERIFYING):
        assert label_value(state) is LabelValue.DOWNLOADING


def test_preload_labels_prints_the_agents_key() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["labels", "--model", "Qwen/Qwen2.5-0.5B-Instruct"])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == label_key("Qwen/Qwen2.5-0.5B-Instruct")
    out = runner.invoke(
        cli, ["labels", "--model", f"Qwen/Qwen2.5-0.5B-Instruct@{COMMIT}", "--node-label-prefix", "x.io"]
    )
    assert out.output.strip() == label_key("Qwen/Qwen2.5-0.5B-Instruct", COMMIT, "x.io")
    out = runner.invoke(cli, ["labels", "--model", "not a repo"])
    assert out.exit_code != 0


# --- patch and Event bodies ---------------------------------------------------------------------


def test_the_patch_names_only_keys_of_ours() -> None:
    labels = {
        "kubernetes.io/hostname": NODE,
        "nvidia.com/gpu.present": "true",
        f"{P}/old--model": "ready",  # ours, no longer configured
        f"{P}/org--a": "downloading",
        "other.io/org--a": "x",
    }
    want = {f"{P}/org--a": "ready", f"{P}/org--b": "downloading"}
    patch = node_patch(labels, {"note": "keep"}, want, '{"x":1}', P)
    assert patch == {
        "metadata": {
            "labels": {f"{P}/org--a": "ready", f"{P}/org--b": "downloading", f"{P}/old--model": None},
            "annotations": {detail_key(P): '{"x":1}'},
        }
    }
    applied = merge_patch({"metadata": {"labels": labels, "annotations": {"note": "keep"}}}, patch)
    assert applied["metadata"]["labels"] == {
        "kubernetes.io/hostname": NODE,
        "nvidia.com/gpu.present": "true",
        "other.io/org--a": "x",
        **want,
    }
    again = node_patch(applied["metadata"]["labels"], applied["metadata"]["annotations"], want, '{"x":1}', P)
    assert again is None


def test_no_model_left_removes_the_annotation_too() -> None:
    labels = {f"{P}/org--a": "ready"}
    patch = node_patch(labels, {detail_key(P): "{}"}, {}, detail_annotation({}, P), P)
    assert patch == {"metadata": {"labels": {f"{P}/org--a": None}, "annotations": {detail_key(P): None}}}


def test_the_detail_annotation_says_what_the_label_cannot() -> None:
    m = ModelLabel("org/a", "main", ModelState.FAILED, None, None, "hub answered 503 " * 100)
    ok = ModelLabel("org/b", COMMIT, ModelState.READY, COMMIT, 1234)
    doc = json.loads(detail_annotation({"org/a": m, "org/b": ok}, P) or "")
    assert doc["org--a"]["state"] == "failed" and len(doc["org--a"]["lastError"]) == 500
    assert doc[label_name("org/b", COMMIT)] == {
        "repo": "org/b",
        "revision": COMMIT,
        "state": "ready",
        "commit": COMMIT,
        "bytes": 1234,
    }


def test_event_body_is_a_node_event() -> None:
    body = event_body(
        NODE, "uid-1", NodeEvent("ModelFailed", "boom", warning=True), "2026-01-01T00:00:00Z", "c"
    )
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": "uid-1"}
    assert body["type"] == "Warning" and body["reason"] == "ModelFailed" and body["message"] == "boom"
    assert body["metadata"]["generateName"].startswith(NODE)
    assert "namespace" not in body["metadata"]  # the URL says where it goes


# --- backoff ------------------------------------------------------------------------------------


def test_backoff_doubles_is_capped_and_jittered() -> None:
    highest = [backoff(n, rand=lambda lo, hi: hi) for n in range(1, 12)]
    lowest = [backoff(n, rand=lambda lo, hi: lo) for n in range(1, 12)]
    assert highest[:4] == [BACKOFF_FIRST, 2 * BACKOFF_FIRST, 4 * BACKOFF_FIRST, 8 * BACKOFF_FIRST]
    assert max(highest) == BACKOFF_MAX and highest[-1] == BACKOFF_MAX
    assert all(lo == hi / 2 for lo, hi in zip(lowest, highest, strict=True))
    drawn = {round(backoff(3), 6) for _ in range(50)}
    assert len(drawn) > 1 and all(2 * BACKOFF_FIRST <= d <= 4 * BACKOFF_FIRST for d in drawn)


# --- the node sync ------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class MemoryNodeApi:
    """One Node in memory; `fail` makes the next calls raise as an unreachable API server would."""

    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.node: dict[str, Any] = {"metadata": {"name": NODE, "uid": "u-1", "labels": dict(labels or {})}}
        self.patches: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.fail: ApiError | None = None

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    def get_node(self, name: str) -> dict[str, Any]:
        self._check()
        assert name == NODE
        return copy.deepcopy(self.node)

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        self._check()
        self.patches.append(dict(patch))
        self.node = merge_patch(self.node, patch)
        return copy.deepcopy(self.node)

    def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        self._check()
        assert namespace == "default"
        self.events.append(dict(event))

    def ours(self) -> dict[str, str]:
        return {k: v for k, v in self.node["metadata"]["labels"].items() if k.startswith(f"{P}/")}


def manifest(repo: str) -> Manifest:
    now = time.time()
    files = (RemoteFile("model.safetensors", 7, Digest(SHA256, "0" * 64)),)
    return Manifest(repo, "main", "c" * 40, "dir", "hf", files, now, now)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "cache")
    s.prepare()
    return s


def synced(api: MemoryNodeApi, models: list[str], store: Store) -> tuple[NodeSync, ModelTable]:
    sync = NodeSync(api, NodeTarget(NODE, P), log.get())
    table = ModelTable([ModelConfig(ModelSpec(m)) for m in models], store, log.get(), observer=sync)
    return sync, table


def errors(operation: str) -> float:
    value = metrics.REGISTRY.get_sample_value("model_cache_kube_api_errors_total", {"operation": operation})
    return value or 0.0


def test_state_changes_become_one_coalesced_patch_and_events(store: Store) -> None:
    api = MemoryNodeApi({"nvidia.com/gpu.present": "true", f"{P}/gone--model": "ready"})
    sync, table = synced(api, ["org/a", "org/b"], store)
    a, b = table.get("org/a"), table.get("org/b")
    assert a is not None and b is not None
    table.transition(a, Change.STARTED, job=Job(a.model))
    table.transition(a, Change.PUBLISHED, manifest=manifest("org/a"))
    table.transition(b, Change.STARTED, job=Job(b.model))
    assert sync.step()
    assert len(api.patches) == 1  # four changes, one patch: the latest state wins
    assert api.ours() == {f"{P}/org--a": "ready", f"{P}/org--b": "downloading"}
    assert api.node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    detail = json.loads(api.node["metadata"]["annotations"][detail_key(P)])
    assert detail["org--a"]["commit"] == "c" * 40 and detail["org--b"]["state"] == "downloading"
    assert [e["reason"] for e in api.events] == ["ModelDownloading", "ModelReady", "ModelDownloading"]
    assert sync.synced.is_set()
    assert metrics.REGISTRY.get_sample_value("model_cache_node_labels_synced") == 1.0

    assert sync.step() and len(api.patches) == 1  # nothing changed: no patch

    log.register_secret("hf_secret_token_value")
    table.transition(b, Change.FAILED, error="hub said 500 to hf_secret_token_value")
    assert sync.step()
    assert api.ours()[f"{P}/org--b"] == "failed"
    assert api.events[-1]["type"] == "Warning" and "hub said 500" in api.events[-1]["message"]
    assert "hf_secret_token_value" not in json.dumps(api.node) + json.dumps(api.events)


def test_leaving_the_config_removes_the_label(store: Store) -> None:
    api = MemoryNodeApi()
    sync, table = synced(api, ["org/a", "org/b"], store)
    assert sync.step()
    assert set(api.ours()) == {f"{P}/org--a", f"{P}/org--b"}
    table.replace([ModelConfig(ModelSpec("org/b"))])
    assert sync.step()
    assert set(api.ours()) == {f"{P}/org--b"}
    assert api.events[-1]["reason"] == "ModelRemoved"


def test_a_changed_revision_moves_the_label_and_a_retired_record_says_nothing(store: Store) -> None:
    api = MemoryNodeApi()
    sync, table = synced(api, ["org/a"], store)
    old = table.get("org/a")
    assert old is not None
    table.transition(old, Change.STARTED, job=Job(old.model))
    table.replace([ModelConfig(ModelSpec("org/a", revision="v2"))])
    table.transition(old, Change.CANCELLED)  # the old job ends after the reload
    assert sync.step()
    assert api.ours() == {f"{P}/org--a--v2": "downloading"}


def test_api_errors_back_off_count_and_recover(store: Store) -> None:
    api = MemoryNodeApi()
    now = [100.0]
    sync = NodeSync(api, NodeTarget(NODE, P), log.get(), clock=lambda: now[0])
    table = ModelTable([ModelConfig(ModelSpec("org/a"))], store, log.get(), observer=sync)
    entry = table.get("org/a")
    assert entry is not None
    table.transition(entry, Change.FOUND, manifest=manifest("org/a"))
    before = errors("get_node")
    api.fail = ApiError("get_node", 0, "ConnectError: connection refused")
    assert not sync.step()
    assert not sync.step()
    assert errors("get_node") == before + 2
    assert not sync.synced.is_set()
    assert metrics.REGISTRY.get_sample_value("model_cache_node_labels_synced") == 0.0
    assert not sync._due()  # waiting out the backoff
    assert 0.5 * 2 * BACKOFF_FIRST <= sync._wait_time() <= 2 * BACKOFF_FIRST
    api.fail = None
    now[0] += BACKOFF_MAX
    assert sync._due()
    assert sync.step()
    assert api.ours() == {f"{P}/org--a": "ready"}
    assert [e["reason"] for e in api.events] == ["ModelReady"]  # queued while away, sent once back


def test_a_refused_event_is_dropped_not_retried_forever(store: Store) -> None:
    class NoEvents(MemoryNodeApi):
        def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
            raise ApiError("create_event", 403, "events is forbidden")

    api = NoEvents()
    sync, table = synced(api, ["org/a"], store)
    entry = table.get("org/a")
    assert entry is not None
    table.transition(entry, Change.STARTED, job=Job(entry.model))
    assert sync.step()
    assert api.ours() == {f"{P}/org--a": "downloading"}
    assert not sync._events


def test_event_for_each_change() -> None:
    model = ModelConfig(ModelSpec("org/a"))

    def reason(change: Change | None, state: ModelState | None = ModelState.READY) -> str | None:
        event = event_for(StateChange(model, state, change, "c" * 40, 7, "why"))
        return None if event is None else event.reason

    assert reason(Change.FOUND) == reason(Change.PUBLISHED) == "ModelReady"
    assert reason(Change.STARTED, ModelState.DOWNLOADING) == "ModelDownloading"
    assert reason(Change.FAILED, ModelState.FAILED) == "ModelFailed"
    assert reason(Change.DAMAGED, ModelState.PENDING) == "ModelDamaged"
    assert reason(None, None) == "ModelRemoved"
    assert reason(Change.VERIFIED) is None and reason(Change.CANCELLED, ModelState.PENDING) is None
    assert reason(None, ModelState.PENDING) is None  # entering the table is not news


@pytest.mark.parametrize(
    "example", ["vllm-deployment-node-affinity.yaml", "vllm-deployment-prefer-warm.yaml"]
)
def test_the_examples_select_on_the_key_the_agent_sets(example: str) -> None:
    import yaml

    path = Path(__file__).resolve().parents[2] / "examples" / example
    (deploy,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Deployment"]
    affinity = deploy["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    terms = [
        t["matchExpressions"]
        for t in affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get(
            "nodeSelectorTerms", []
        )
    ]
    terms += [
        p["preference"]["matchExpressions"]
        for p in affinity.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    ]
    keys = {e["key"] for t in terms for e in t}
    assert keys == {label_key("Qwen/Qwen2.5-0.5B-Instruct")}
    values = {v for t in terms for e in t for v in e["values"]}
    assert values <= {v.value for v in LabelValue} and LabelValue.READY.value in values
