"""Show this node's models on its Node object: one label each, a detail annotation, Events.

The model table tells `NodeSync` of every state change (it is the table's `Observer`); the
change only updates the wanted state and queues an Event, under a lock, and returns. One
background thread does the API calls: it reads the Node, patches only the difference in keys
of ours (latest wanted state wins: ten changes in a second are one patch), then sends the
queued Events. A failed call is logged, counted (`model_cache_kube_api_errors`) and retried
after a doubling, jittered, bounded backoff; nothing here can make a model or the agent
unready, and the agent works the same when the API server is away.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from agent import log
from agent.node import metrics
from agent.node.kube import ApiError, NodeApi
from agent.node.labels import (
    ModelLabel,
    NodeEvent,
    desired_labels,
    detail_annotation,
    detail_key,
    event_body,
    node_patch,
)
from agent.node.models import Change, StateChange

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
RESYNC_EVERY = 300.0  # also repair what someone else changed (a label deleted by hand)
EVENTS_KEPT = 100  # queued while the API server is away; the oldest go first
COMPONENT: Final = "model-cache-agent"


def backoff(failures: int, rand: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds before the next try after `failures` failed ones: doubling from BACKOFF_FIRST,
    capped at BACKOFF_MAX, drawn from [cap/2, cap] so a node pool does not retry in step."""
    cap = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** max(0, failures - 1))
    return rand(cap / 2, cap)


@dataclass(frozen=True)
class NodeTarget:
    """Which Node to keep, under which prefix, and where its Events go."""

    node: str
    prefix: str
    events_namespace: str = "default"


def event_for(change: StateChange) -> NodeEvent | None:
    """The Event a change deserves, if any (a periodic check that finds nothing is not news)."""
    m = change.model
    name = m.id if m.spec.revision == "main" else f"{m.id}@{m.spec.revision}"
    if change.state is None:
        return NodeEvent("ModelRemoved", f"{name} left the config: its label is removed")
    if change.change is Change.STARTED:
        attempt = f" (attempt {change.failures + 1})" if change.failures else ""
        return NodeEvent("ModelDownloading", f"{name}: downloading to this node's cache{attempt}")
    if change.change in (Change.PUBLISHED, Change.FOUND):
        how = "published" if change.change is Change.PUBLISHED else "found complete on disk"
        size = f", {change.total_bytes} bytes" if change.total_bytes is not None else ""
        return NodeEvent("ModelReady", f"{name}: {how}, verified (commit {change.commit}{size})")
    if change.change is Change.FAILED:
        return NodeEvent("ModelFailed", f"{name}: download failed: {change.error}", warning=True)
    if change.change is Change.DAMAGED:
        return NodeEvent("ModelDamaged", f"{name}: check found damage, repairing: {change.error}", True)
    return None


class NodeSync:
    """Keeps the Node's labels of ours equal to the table's states; sends Events (one thread)."""

    def __init__(
        self,
        api: NodeApi,
        target: NodeTarget,
        logger: log.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._target = target
        self._log = logger.bind(node=target.node)
        self._clock = clock
        self._cond = threading.Condition()
        self._models: dict[str, ModelLabel] = {}
        self._events: deque[NodeEvent] = deque(maxlen=EVENTS_KEPT)
        self._dirty = True  # the first pass also removes keys of models no longer configured
        self._stopping = False
        self._failures = 0
        self._retry_at = 0.0
        self._next_resync = 0.0
        self._node_uid: str | None = None
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()  # set while the Node shows the latest wanted state

    # -- the table's observer (any thread; never blocks on the API) ----------------------

    def model_changed(self, change: StateChange) -> None:
        repo = change.model.id
        if change.error:  # the Node is readable by many: no secret in it, as in a log line
            change = dataclasses.replace(change, error=log.scrub(change.error))
        event = event_for(change)
        with self._cond:
            if change.state is None:
                self._models.pop(repo, None)
            else:
                spec = change.model.spec
                self._models[repo] = ModelLabel(
                    repo, spec.revision, change.state, change.commit, change.total_bytes, change.error
                )
            if event is not None:
                self._events.append(event)
            self._dirty = True
            self.synced.clear()
            self._cond.notify()
        metrics.NODE_LABELS_SYNCED.set(0)

    # -- the thread ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="node-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop after the call in flight (its timeout bounds the wait); what is queued is dropped."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        self._log.info("node_sync_start", prefix=self._target.prefix)
        while True:
            with self._cond:
                while not self._stopping and not self._due():
                    self._cond.wait(self._wait_time())
                if self._stopping:
                    return
            self.step()

    def _due(self) -> bool:
        now = self._clock()
        if now < self._retry_at:
            return False
        return self._dirty or bool(self._events) or now >= self._next_resync

    def _wait_time(self) -> float:
        now = self._clock()
        if now < self._retry_at:
            return self._retry_at - now
        return max(0.05, self._next_resync - now)

    def step(self) -> bool:
        """One pass: patch the Node if it differs, then send the queued Events. True on success;
        a failure sets the backoff and is counted and logged, never raised."""
        try:
            self._sync_labels()
            self._send_events()
        except ApiError as exc:
            metrics.KUBE_API_ERRORS.labels(operation=exc.operation).inc()
            with self._cond:
                self._failures += 1
                delay = backoff(self._failures)
                self._retry_at = self._clock() + delay
            self._log.warning(
                "node_sync_failed",
                error=str(exc),
                failures=self._failures,
                retry_in_s=round(delay, 1),
            )
            return False
        with self._cond:
            if self._failures:
                self._log.info("node_sync_recovered", after_failures=self._failures)
            self._failures, self._retry_at = 0, 0.0
        return True

    def _sync_labels(self) -> None:
        with self._cond:
            dirty = self._dirty
            if not dirty and self._clock() < self._next_resync:
                return
            models = dict(self._models)
            self._dirty = False
        try:
            self._apply(models)
        except ApiError:
            with self._cond:
                self._dirty = True
            raise
        with self._cond:
            self._next_resync = self._clock() + RESYNC_EVERY
            if not self._dirty:
                self.synced.set()
                metrics.NODE_LABELS_SYNCED.set(1)

    def _apply(self, models: dict[str, ModelLabel]) -> None:
        t = self._target
        node = self._api.get_node(t.node)
        meta: dict[str, Any] = node.get("metadata", {})
        self._node_uid = meta.get("uid")
        want = desired_labels(models, t.prefix)
        detail = detail_annotation(models, t.prefix)
        patch = node_patch(meta.get("labels") or {}, meta.get("annotations") or {}, want, detail, t.prefix)
        if patch is None:
            return
        self._api.patch_node(t.node, patch)
        changed = patch["metadata"].get("labels", {})
        self._log.info(
            "node_labels_patched",
            set={k: v for k, v in changed.items() if v is not None},
            removed=sorted(k for k, v in changed.items() if v is None),
            annotation=detail_key(t.prefix) if "annotations" in patch["metadata"] else None,
        )

    def _send_events(self) -> None:
        t = self._target
        while True:
            with self._cond:
                if not self._events:
                    return
                event = self._events[0]
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            try:
                self._api.create_event(
                    t.events_namespace, event_body(t.node, self._node_uid, event, now, COMPONENT)
                )
            except ApiError as exc:
                if not exc.permanent:
                    raise
                # Refused for good (RBAC, validation): sending it again would only be refused again.
                metrics.KUBE_API_ERRORS.labels(operation=exc.operation).inc()
                self._log.warning("node_event_dropped", reason=event.reason, error=str(exc))
            with self._cond:
                if self._events and self._events[0] is event:
                    self._events.popleft()
