"""`preload wait`: block an init container until its model is ready on this node.

Two ways to know:
- `--dest`: read the node cache (a hostPath mount) directly; no network. The marker is
  written last, so its file is what we watch: inotify on its nearest existing directory
  wakes a full readiness check (agent.ops.watch; a stat poll where inotify is unavailable),
  and the check also runs every few seconds anyway (network filesystems, where inotify
  sees nothing of other hosts' writes). This mode cannot see a failed preload: only
  --timeout ends it.
- `--agent`: ask the node's agent over HTTP; print its progress; ride out connection
  refused and agent restarts until the deadline.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import httpx

from agent import log
from agent.errors import DeadlineExceeded, NotFoundError, PreloadError, UsageError
from agent.manifest import Manifest
from agent.modelview import ModelState, ModelView, ViewError
from agent.ops.watch import PathWatch
from agent.spec import COMMIT_RE, Layout, ModelSpec
from agent.store import Store, usage
from agent.units import fmt_bytes

FULL_CHECK_EVERY = 5.0
AGENT_POLL = 1.0
REPORT_EVERY = 5.0
HTTP_TIMEOUT = 5.0


class ModelFailedError(PreloadError):
    """The agent reports the model as failed."""


def wait_dest(spec: ModelSpec, dest: Path, timeout: float, any_revision: bool) -> Manifest:
    """Return the manifest once `spec` is ready under `dest`; `any_revision` accepts any published one."""
    store = Store(dest)
    logger = log.get().bind(repo=spec.repo, layout=spec.layout.value, dest=str(dest))
    started = time.monotonic()
    deadline = started + timeout if timeout else float("inf")
    next_report = started
    with PathWatch(store.marker_path(spec)) as watch:
        while True:
            m = _ready(store, spec, any_revision)  # set up the watch first: nothing is missed
            if m is not None:
                usage.touch(dest, replace(spec, revision=m.revision))
                logger.info("model_ready", commit=m.commit, path=str(store.reader_path(spec, m)))
                return m
            now = time.monotonic()
            if now >= deadline:
                raise DeadlineExceeded(
                    f"timed out after {timeout:g}s waiting for {spec.repo} under {dest}: "
                    + _why_not_ready(store, spec, any_revision)
                )
            if now >= next_report:
                next_report = now + REPORT_EVERY
                logger.info(
                    "waiting",
                    waited_s=round(now - started, 1),
                    reason="no valid completion marker yet",
                    watch=watch.mode,
                )
            wake = min(now + FULL_CHECK_EVERY, next_report, deadline)
            watch.wait(max(0.0, wake - time.monotonic()))


def _why_not_ready(store: Store, spec: ModelSpec, any_revision: bool) -> str:
    """Why `spec` is not ready under `store`, as `verify` says it: no marker, another revision
    published, or the model published in the other layout only."""
    m = store.read_marker(spec)
    if m is None:
        other = Layout.HF_CACHE if spec.layout is Layout.DIR else Layout.DIR
        if store.read_marker(replace(spec, layout=other)) is not None:
            return (
                f"it is published in the {other.value} layout, not {spec.layout.value} "
                f"(pass --layout {other.value})"
            )
        busy = " (a transfer holds the lock)" if store.busy(spec) else ""
        return f"no valid completion marker{busy}"
    if not any_revision and spec.revision not in (m.revision, m.commit):
        return f"published revision is {m.revision} ({m.commit[:12]}), not {spec.revision}"
    found = store.damage(spec, m.commit)
    if found is not None:
        names = ", ".join(found.paths[:5]) or "(unreadable record)"
        return f"{found.found_by} found {m.commit[:12]} damaged ({names}); a preload repairs it"
    return f"the published copy of {m.commit[:12]} is incomplete (files missing or the wrong size)"


def _ready(store: Store, spec: ModelSpec, any_revision: bool) -> Manifest | None:
    if any_revision:
        m = store.read_marker(spec)
        if m is None:
            return None
        spec = replace(spec, revision=m.revision)
    return store.ready(spec, selection=False)


def wait_agent(url: str, spec: ModelSpec, timeout: float, any_revision: bool) -> ModelView:
    """Return the agent's view of the model once it is ready; raise on failed, unknown or timeout."""
    base = url.rstrip("/")
    endpoint = f"{base}/v1/models/{spec.repo}"
    logger = log.get().bind(repo=spec.repo, agent=base)
    started = time.monotonic()
    next_report = started
    last = "no answer from the agent yet"
    with httpx.Client(timeout=HTTP_TIMEOUT, trust_env=False) as client:
        while True:
            now = time.monotonic()
            view = _ask(client, endpoint, spec, base)
            if view is not None:
                _check_match(view, spec, any_revision, base)
                if view.state is ModelState.READY:
                    logger.info("model_ready", commit=view.commit, path=view.path)
                    return view
                if view.state is ModelState.FAILED:
                    raise ModelFailedError(f"{spec.repo} failed on the agent: {view.last_error}")
                last = _describe(view)
            else:
                last = "agent not reachable"
            if timeout and now - started >= timeout:
                raise DeadlineExceeded(f"timed out after {timeout:g}s waiting for {spec.repo}: {last}")
            if now >= next_report:
                next_report = now + REPORT_EVERY
                logger.info("waiting", waited_s=round(now - started, 1), status=last)
            time.sleep(AGENT_POLL)


def _ask(client: httpx.Client, endpoint: str, spec: ModelSpec, base: str) -> ModelView | None:
    """The agent's view of the model, or None while it cannot answer (down, restarting, 5xx, or
    an answer that is not a model's view)."""
    try:
        r = client.get(endpoint)
    except httpx.HTTPError:
        return None
    if r.status_code == 404:
        raise NotFoundError(f"{spec.repo} is not configured on the agent at {base}")
    if 400 <= r.status_code < 500:
        raise UsageError(f"the agent at {base} rejected the request: {_error(r)}")
    if r.status_code != 200:
        return None
    try:
        data = r.json()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    try:
        return ModelView.from_dict(data)
    except ViewError:
        return None


def _check_match(view: ModelView, spec: ModelSpec, any_revision: bool, base: str) -> None:
    """Raise NotFoundError when the agent keeps this model in another layout or revision.

    A commit asked for matches while the agent does not know its configured revision's commit
    yet (it may resolve to it); only a different known commit is a mismatch.
    """
    if view.layout is not spec.layout:
        raise NotFoundError(
            f"the agent at {base} keeps {spec.repo} in the {view.layout.value} layout, "
            f"not {spec.layout.value}; pass --layout {view.layout.value}"
        )
    if any_revision or spec.revision == view.revision:
        return
    commit = view.commit
    if COMMIT_RE.match(spec.revision) and commit in (None, spec.revision):
        return
    known = f" (commit {commit})" if commit else ""
    raise NotFoundError(
        f"the agent at {base} is configured for {spec.repo}@{view.revision}{known}, "
        f"not revision {spec.revision}"
    )


def _describe(view: ModelView) -> str:
    state = view.state.value
    done, total = view.bytes_done or 0, view.bytes_total or 0
    if not total:
        return state
    text = f"{state} {done * 100 / total:.1f}% ({fmt_bytes(done)} of {fmt_bytes(total)})"
    rate, eta = view.rate_bytes_per_second, view.eta_seconds
    if rate:
        text += f" at {rate / 1e6:.1f} MB/s"
    if eta is not None:
        text += f", ETA {eta:.0f}s"
    return text


def _error(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error"))
    except ValueError:
        return f"HTTP {r.status_code}"
