"""The agent's per-model state machine: every change sets the state, its metric and its log line.

In-process: a ModelTable over a store in tmp_path, the agent's Prometheus registry, and
structlog's capture_logs. Also the reconcile step (a config reload) without any source.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from agent import log
from agent.engine.preload import PreloadOptions
from agent.integrity import SHA256, Digest
from agent.manifest import Manifest, RemoteFile
from agent.modelview import ModelState
from agent.node import metrics
from agent.node.background import Background
from agent.node.config import ModelConfig
from agent.node.configwatch import LiveConfig
from agent.node.disk import Disk
from agent.node.models import RULES, Change, Entry, Job, ModelTable, TransitionError
from agent.node.reconcile import Reconciler
from agent.node.workers import Workers
from agent.ops import gc
from agent.sources.base import Source
from agent.spec import ModelSpec
from agent.store import Store

COMMIT = "a" * 40
LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error"}


@pytest.fixture(autouse=True)
def _plain_structlog() -> Iterator[None]:
    """Debug lines reach capture_logs whatever another test configured; leave structlog as found."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def state_metric(repo: str, state: ModelState) -> float | None:
    """The enum gauge's sample for one model and state (1.0 for the current state)."""
    labels = {"model": repo, "model_cache_model_state": state.value}
    return metrics.REGISTRY.get_sample_value("model_cache_model_state", labels)


def shown_state(repo: str) -> ModelState | None:
    """The one state the metric shows for `repo`, or None if it shows none."""
    shown = [s for s in ModelState if state_metric(repo, s) == 1.0]
    assert len(shown) <= 1
    return shown[0] if shown else None


def manifest(repo: str, size: int = 7) -> Manifest:
    """A manifest of one file of `size` bytes (nothing on disk)."""
    now = time.time()
    files = (RemoteFile("model.safetensors", size, Digest(SHA256, "0" * 64)),)
    return Manifest(repo, "main", COMMIT, "dir", "hf", files, now, now)


def publish(store: Store, repo: str) -> Manifest:
    """Publish a one-file model straight into the cache, as a preload would."""
    body = repo.encode() * 3
    now = time.time()
    f = RemoteFile("config.json", len(body), Digest(SHA256, hashlib.sha256(body).hexdigest()))
    m = Manifest(repo, "main", COMMIT, "dir", "hf", (f,), now, now)
    spec = ModelSpec(repo)
    path = store.version_dir(spec, COMMIT) / f.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    store.publish(spec, m)
    return m


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """An empty prepared cache."""
    s = Store(tmp_path / "cache")
    s.prepare()
    return s


def new_table(store: Store, repo: str) -> tuple[ModelTable, Entry]:
    """A table of one model, and its record."""
    table = ModelTable([ModelConfig(ModelSpec(repo))], store, log.get())
    entry = table.get(repo)
    assert entry is not None
    return table, entry


def reach(table: ModelTable, entry: Entry, state: ModelState) -> None:
    """Drive a fresh (pending) record to `state` through legal changes."""
    repo = entry.model.id
    if state is ModelState.READY:
        table.transition(entry, Change.FOUND, manifest=manifest(repo))
    elif state in (ModelState.DOWNLOADING, ModelState.FAILED):
        table.transition(entry, Change.STARTED, job=Job(entry.model))
        if state is ModelState.FAILED:
            table.transition(entry, Change.FAILED, error="boom")
    assert entry.state is state


def arguments(change: Change, entry: Entry) -> dict[str, Any]:
    """What each change takes besides the record."""
    if RULES[change].after is ModelState.READY:
        return {"manifest": manifest(entry.model.id)}
    if change in (Change.FAILED, Change.DAMAGED):
        return {"error": "it broke"}
    if change is Change.STARTED:
        return {"job": Job(entry.model)}
    return {}


LEGAL = [(change, before) for change, rule in RULES.items() for before in sorted(rule.before)]
REACHABLE = (ModelState.PENDING, ModelState.DOWNLOADING, ModelState.READY, ModelState.FAILED)
ILLEGAL = [(c, s) for c in Change for s in REACHABLE if s not in RULES[c].before]


def test_a_model_enters_the_table_pending_and_the_metric_shows_it(store: Store) -> None:
    """No model is ever configured without a state in the metric."""
    _, entry = new_table(store, "enter/model")
    assert entry.state is ModelState.PENDING
    assert shown_state("enter/model") is ModelState.PENDING


@pytest.mark.parametrize(("change", "before"), LEGAL, ids=lambda x: str(x.value))
def test_every_change_sets_state_metric_and_log_line_together(
    store: Store, change: Change, before: ModelState
) -> None:
    """One call: the record's state, the state metric and one log line of the change's level."""
    repo = f"state/{change.value.replace('_', '-')}-{before.value}"
    table, entry = new_table(store, repo)
    reach(table, entry, before)
    with capture_logs() as logs:
        table.transition(entry, change, seconds=0.5, **arguments(change, entry))
    rule = RULES[change]
    assert entry.state is rule.after
    assert shown_state(repo) is rule.after
    assert [(e["event"], e["log_level"], e["repo"]) for e in logs] == [
        (change.value, LEVELS[rule.level], repo)
    ]
    assert logs[0]["seconds"] == 0.5  # the caller's detail goes into the line
    assert (entry.job is not None) == (rule.after is ModelState.DOWNLOADING)
    metrics.forget_model(repo)


@pytest.mark.parametrize(("change", "before"), ILLEGAL, ids=lambda x: str(x.value))
def test_an_illegal_change_raises_and_changes_nothing(
    store: Store, change: Change, before: ModelState
) -> None:
    """A change the rules do not allow from the current state is a bug: nothing is half-applied."""
    repo = f"illegal/{change.value.replace('_', '-')}-{before.value}"
    table, entry = new_table(store, repo)
    reach(table, entry, before)
    with capture_logs() as logs, pytest.raises(TransitionError):
        table.transition(entry, change, **arguments(change, entry))
    assert entry.state is before and shown_state(repo) is before and not logs
    metrics.forget_model(repo)


def test_failure_records_error_backoff_and_the_documented_line(store: Store) -> None:
    """FAILED: error, failure count and retry time on the record; the model_failed line says them."""
    repo = "state/fails"
    table, entry = new_table(store, repo)
    for attempt in (1, 2):
        table.transition(entry, Change.STARTED, job=Job(entry.model))
        with capture_logs() as logs:
            table.transition(entry, Change.FAILED, error="no such repo")
        assert (entry.error, entry.failures, entry.job) == ("no such repo", attempt, None)
        assert entry.retry_at > time.monotonic()
        (line,) = logs
        assert line["error"] == "no such repo" and line["failures"] == attempt and line["retry_in_s"] >= 0
    view = table.view(entry)
    assert view.state is ModelState.FAILED and view.last_error == "no such repo"
    assert view.retry_in_seconds is not None and view.retry_in_seconds >= 0
    metrics.forget_model(repo)


def test_ready_clears_failures_and_sets_size_and_path(store: Store) -> None:
    """PUBLISHED after a failure: ready, error cleared, size gauge set, ready_since stamped."""
    repo = "state/recovers"
    table, entry = new_table(store, repo)
    reach(table, entry, ModelState.FAILED)
    table.transition(entry, Change.STARTED, job=Job(entry.model))
    m = manifest(repo, size=123)
    table.transition(entry, Change.PUBLISHED, manifest=m)
    assert (entry.error, entry.failures, entry.retry_at, entry.commit) == (None, 0, 0.0, COMMIT)
    assert entry.ready_since is not None and entry.path == str(store.reader_path(ModelSpec(repo), m))
    size = metrics.REGISTRY.get_sample_value("model_cache_model_size_bytes", {"model": repo})
    assert size == 123
    assert table.readiness() == []
    metrics.forget_model(repo)


def test_damage_counts_and_sends_the_model_back_to_pending(store: Store) -> None:
    """DAMAGED: pending, ready_since cleared, error kept, the verification-failure counter grows."""
    repo = "state/damaged"
    table, entry = new_table(store, repo)
    reach(table, entry, ModelState.READY)
    labels = {"model": repo}
    before = metrics.REGISTRY.get_sample_value("model_cache_verification_failures_total", labels) or 0
    with capture_logs() as logs:
        table.transition(entry, Change.DAMAGED, error="damaged: x", seconds=1.0)
    assert entry.state is ModelState.PENDING and entry.ready_since is None and entry.error == "damaged: x"
    assert logs[0]["action"] == "repair"
    after = metrics.REGISTRY.get_sample_value("model_cache_verification_failures_total", labels)
    assert after == before + 1
    assert table.readiness() == [repo]
    metrics.forget_model(repo)


def test_a_preload_with_every_byte_in_is_reported_verifying(store: Store) -> None:
    """The verifying phase follows the transfer's progress: in the view and in the metric."""
    repo = "state/phase"
    table, entry = new_table(store, repo)
    job = Job(entry.model)
    table.transition(entry, Change.STARTED, job=job)
    job.progress.total = 10
    job.progress.add(4)
    table.report_phase(entry)
    assert table.view(entry).state is ModelState.DOWNLOADING and shown_state(repo) is ModelState.DOWNLOADING
    job.progress.add(6)
    table.report_phase(entry)
    assert table.view(entry).state is ModelState.VERIFYING and shown_state(repo) is ModelState.VERIFYING
    assert entry.state is ModelState.DOWNLOADING  # a phase, not a change of state
    metrics.forget_model(repo)


# -- reconcile: a config reload, in-process, without any source ---------------------------


def _no_source() -> Source:
    raise AssertionError("the reconcile step never asks a source")


def _write(path: Path, *models: str) -> None:
    path.write_text("models: [" + ", ".join(models) + "]\nverifyInterval: 0\n")
    # A rewrite within the filesystem's timestamp granularity must still look changed to the watch.
    bump = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(bump, bump))


def test_reload_adopts_retires_and_forgets(store: Store, tmp_path: Path) -> None:
    """Start: a model on disk is ready at once. Reload: an added model on disk is ready, a changed
    one starts over (its running preload is cancelled and counted until it ends), a removed one
    leaves the table and the metric."""
    config = tmp_path / "agent.yaml"
    _write(config, "rec/on-disk", "rec/changes", "rec/leaves")
    publish(store, "rec/on-disk")
    publish(store, "rec/added")
    logger = log.get()
    stop, wake = threading.Event(), threading.Event()
    live = LiveConfig(config, None, logger)
    table = ModelTable(live.current.models, store, logger)
    disk = Disk(store.root, lambda: live.current, Background(), stop, logger)

    def collect(free_wanted: int) -> gc.Report:
        return disk.collect(free_wanted)

    workers = Workers(
        table,
        store.root,
        lambda names: [_no_source],
        PreloadOptions(),
        max_concurrent=lambda: live.max_concurrent,
        collect=collect,
        stop=stop,
        wake=wake,
        logger=logger,
    )
    reconciler = Reconciler(table, store, live, workers, logger)
    reconciler.adopt_local()
    states = {e.model.id: e.state for e in table.entries()}
    assert states == {
        "rec/on-disk": ModelState.READY,
        "rec/changes": ModelState.PENDING,
        "rec/leaves": ModelState.PENDING,
    }
    changing = table.get("rec/changes")
    assert changing is not None
    job = Job(changing.model)  # as if its preload ran (no thread: nothing to fetch)
    table.transition(changing, Change.STARTED, job=job)

    _write(config, "rec/on-disk", "{id: rec/changes, revision: v2}", "rec/added")
    with capture_logs() as logs:
        reconciler.poll(time.monotonic())
    (reloaded,) = [e for e in logs if e["event"] == "config_reloaded"]
    assert (reloaded["added"], reloaded["removed"]) == (["rec/added"], ["rec/leaves"])
    states = {e.model.id: e.state for e in table.entries()}
    assert states == {
        "rec/on-disk": ModelState.READY,
        "rec/changes": ModelState.PENDING,
        "rec/added": ModelState.READY,
    }
    assert job.cancel.is_set() and workers.jobs() == [job]  # retiring: still counted as running
    assert table.get("rec/changes") is not changing
    assert shown_state("rec/leaves") is None and shown_state("rec/added") is ModelState.READY
    assert live.reload_error is None and live.view().max_concurrent == 2
    for repo in ("rec/on-disk", "rec/changes", "rec/added"):
        metrics.forget_model(repo)
