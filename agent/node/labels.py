"""Node labels for the models a node holds: the label key of a model, its value, the patch bodies.

Pure values and functions, no I/O: `preload labels` prints `label_key(...)` and the agent's
node sync (nodesync.py) builds its patches and events here, so a selector written from the
command's output always matches what the agent sets.

A model's label is `<prefix>/<name>` with `<name>` = `ORG--NAME` (the hub's own cache spelling:
hub repo ids never contain `--`), plus `--REVISION` when the model asks for a revision other
than `main`. Where that is not a valid label name (over 63 characters, or characters a label
cannot hold) the readable part is cut and a hash of the exact `ORG/NAME@REVISION` is appended,
so two models never share a key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from agent.errors import UsageError
from agent.modelview import ModelState

DEFAULT_PREFIX: Final = "model-cache.io"
DEFAULT_REVISION: Final = "main"
NAME_MAX: Final = 63  # a label key's name part (after the prefix and "/")
PREFIX_MAX: Final = 253  # a DNS subdomain
HASH_CHARS: Final = 10
DETAIL_NAME: Final = "models"  # the annotation `<prefix>/models`: every model's detail, JSON

_NAME_OK = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_NAME_BAD_CHARS = re.compile(r"[^-A-Za-z0-9_.]")
_PREFIX_OK = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class LabelValue(StrEnum):
    """What a model's label says about this node's copy."""

    READY = "ready"  # published and verified: a pod may load it now
    DOWNLOADING = "downloading"  # configured, being fetched, queued or repaired
    FAILED = "failed"  # the last preload failed; retried after a backoff


def check_prefix(prefix: str) -> str:
    """The prefix if it is a valid label prefix (a DNS subdomain), else a usage error."""
    if len(prefix) > PREFIX_MAX or not _PREFIX_OK.match(prefix):
        raise UsageError(f"label prefix {prefix!r} is not a DNS subdomain (e.g. {DEFAULT_PREFIX})")
    return prefix


def label_name(repo: str, revision: str = DEFAULT_REVISION) -> str:
    """The name part of a model's label key: readable when it can be, unique always."""
    org, _, name = repo.partition("/")
    readable = f"{org}--{name}" if name else org
    if revision != DEFAULT_REVISION:
        readable += f"--{revision}"
    if len(readable) <= NAME_MAX and _NAME_OK.match(readable):
        return readable
    digest = hashlib.sha256(f"{repo}@{revision}".encode()).hexdigest()[:HASH_CHARS]
    cleaned = _NAME_BAD_CHARS.sub("-", readable)[: NAME_MAX - HASH_CHARS - 1]
    cleaned = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
    return f"{cleaned}-{digest}" if cleaned else digest


def label_key(repo: str, revision: str = DEFAULT_REVISION, prefix: str = DEFAULT_PREFIX) -> str:
    """`<prefix>/<name>`: the node label that says this node's state of the model."""
    return f"{prefix}/{label_name(repo, revision)}"


def detail_key(prefix: str = DEFAULT_PREFIX) -> str:
    """The node annotation that holds every model's detail."""
    return f"{prefix}/{DETAIL_NAME}"


def label_value(state: ModelState) -> LabelValue:
    """The label's value for a model state: only `ready` means a pod can load it now."""
    if state is ModelState.READY:
        return LabelValue.READY
    if state is ModelState.FAILED:
        return LabelValue.FAILED
    return LabelValue.DOWNLOADING


@dataclass(frozen=True)
class ModelLabel:
    """One configured model as the node shows it: its label and the detail behind it."""

    repo: str
    revision: str
    state: ModelState
    commit: str | None = None
    total_bytes: int | None = None
    error: str | None = None

    def key(self, prefix: str) -> str:
        return label_key(self.repo, self.revision, prefix)

    @property
    def value(self) -> LabelValue:
        return label_value(self.state)

    def detail(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"repo": self.repo, "revision": self.revision, "state": self.state.value}
        if self.commit:
            doc["commit"] = self.commit
        if self.total_bytes is not None:
            doc["bytes"] = self.total_bytes
        if self.error:
            doc["lastError"] = self.error[:500]  # an annotation is not a log: the cause, not a trace
        return doc


def desired_labels(models: Mapping[str, ModelLabel], prefix: str) -> dict[str, str]:
    """Every label of ours the node should carry, key -> value."""
    return {m.key(prefix): m.value.value for m in models.values()}


def detail_annotation(models: Mapping[str, ModelLabel], prefix: str) -> str | None:
    """The detail annotation's value (compact JSON keyed by label name), or None with no model."""
    if not models:
        return None
    doc = {label_name(m.repo, m.revision): m.detail() for m in models.values()}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def node_patch(
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    want: Mapping[str, str],
    detail: str | None,
    prefix: str,
) -> dict[str, Any] | None:
    """A JSON merge patch that makes our labels `want` and our annotation `detail`, or None when
    the node already says so. Keys of ours that are not wanted are removed (null); keys of
    anyone else are never named, so the patch cannot touch them."""
    ours = f"{prefix}/"
    label_changes: dict[str, str | None] = {k: v for k, v in want.items() if labels.get(k) != v}
    label_changes.update({k: None for k in labels if k.startswith(ours) and k not in want})
    meta: dict[str, Any] = {}
    if label_changes:
        meta["labels"] = label_changes
    akey = detail_key(prefix)
    if annotations.get(akey) != detail:
        meta["annotations"] = {akey: detail}
    return {"metadata": meta} if meta else None


@dataclass(frozen=True)
class NodeEvent:
    """A state change worth a Kubernetes Event on the Node."""

    reason: str
    message: str
    warning: bool = False


def event_body(node: str, node_uid: str | None, event: NodeEvent, now: str, component: str) -> dict[str, Any]:
    """A core/v1 Event about the Node (cluster-scoped: the Event lives in `default`, as the
    kubelet's do); `kubectl describe node` and `kubectl get events` both show it."""
    involved: dict[str, str] = {"apiVersion": "v1", "kind": "Node", "name": node}
    if node_uid:
        involved["uid"] = node_uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{node}.model-cache."},
        "involvedObject": involved,
        "reason": event.reason,
        "message": event.message[:1024],
        "type": "Warning" if event.warning else "Normal",
        "source": {"component": component, "host": node},
        "reportingComponent": component,
        "reportingInstance": node,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
