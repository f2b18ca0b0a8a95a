"""The model table: what the agent knows about each configured model, and its one state machine.

Every change of a model's state goes through `ModelTable.transition`, which sets the state, the
`model_cache_model_state` metric and the change's log line together; `RULES` lists every legal
change. Only the loop thread changes records; API threads read them through `view()`, so each
change is made under the table's lock and a reader never sees half of one.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Protocol

from agent import log, retry
from agent.engine.preload import PreloadResult
from agent.engine.transfer import Progress
from agent.manifest import Manifest
from agent.modelview import ModelState, ModelView
from agent.node import metrics
from agent.node.config import ModelConfig
from agent.sources.base import Snapshot
from agent.store import Store
from agent.units import iso_seconds

BACKOFF_BASE = 10.0
BACKOFF_MAX = 600.0
BACKOFF_MIN = 1.0


class Change(StrEnum):
    """Something that happened to a model; its value is the event name of the change's log line."""

    FOUND = "model_found"  # complete on disk (at start, or new in a reload): ready without a source
    STARTED = "model_started"  # a preload starts in a worker thread
    PUBLISHED = "model_published"  # the preload published the model
    CANCELLED = "model_cancelled"  # the preload was cancelled (stop, or the model left the config)
    FAILED = "model_failed"  # the preload failed: retried after a backoff
    VERIFIED = "model_verified"  # a periodic check found the ready model sound
    DAMAGED = "model_damaged"  # a periodic check found it damaged: back to pending, to be repaired


@dataclass(frozen=True)
class Rule:
    """A legal change: the states it may start from, the state it leads to, its log level."""

    before: frozenset[ModelState]
    after: ModelState
    level: int


_IDLE = frozenset({ModelState.PENDING, ModelState.FAILED})
_RUNNING = frozenset({ModelState.DOWNLOADING})
_READY = frozenset({ModelState.READY})

# Lines that were never logged before the state machine had one owner stay at debug level.
RULES: Final[Mapping[Change, Rule]] = MappingProxyType(
    {
        Change.FOUND: Rule(frozenset({ModelState.PENDING}), ModelState.READY, logging.DEBUG),
        Change.STARTED: Rule(_IDLE, ModelState.DOWNLOADING, logging.DEBUG),
        Change.PUBLISHED: Rule(_RUNNING, ModelState.READY, logging.DEBUG),
        Change.CANCELLED: Rule(_RUNNING, ModelState.PENDING, logging.DEBUG),
        Change.FAILED: Rule(_RUNNING, ModelState.FAILED, logging.ERROR),
        Change.VERIFIED: Rule(_READY, ModelState.READY, logging.INFO),
        Change.DAMAGED: Rule(_READY, ModelState.PENDING, logging.WARNING),
    }
)


@dataclass(frozen=True)
class StateChange:
    """A model's state after a change, for observers outside the table (the node's labels)."""

    model: ModelConfig
    state: ModelState | None  # None: the model left the table
    change: Change | None  # None: the model entered or left the table
    commit: str | None = None
    total_bytes: int | None = None
    error: str | None = None
    failures: int = 0


class Observer(Protocol):
    """Told of every change of a current record's state, on the thread that made it; must not
    block (the loop thread makes most changes)."""

    def model_changed(self, change: StateChange) -> None: ...


class TransitionError(RuntimeError):
    """A change the state machine does not allow from the model's state: a bug, never input."""


@dataclass
class Job:
    """One preload running in a worker thread."""

    model: ModelConfig
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: Progress = field(default_factory=Progress)
    done: threading.Event = field(default_factory=threading.Event)
    result: PreloadResult | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None
    source: str | None = None  # set once the source's listing is read
    commit: str | None = None
    counted: int = 0  # fetched bytes already added to the transferred-bytes metric

    def resolved(self, snap: Snapshot) -> None:
        """The preload's source answered: remember which one, and the commit (worker thread)."""
        self.source, self.commit = snap.source, snap.commit

    def complete(self) -> bool:
        """Every byte is in: what remains is the last hash checks, then publishing."""
        total = self.progress.total
        return bool(total) and self.progress.done >= total


@dataclass
class Entry:
    """What the agent knows about one configured model. `state`, `job` and the fields between
    change only in `ModelTable.transition` (`verified_at` also when a check is interrupted)."""

    model: ModelConfig
    state: ModelState = ModelState.PENDING
    commit: str | None = None
    path: str | None = None  # where readers open the published commit
    total_bytes: int | None = None
    error: str | None = None
    failures: int = 0
    retry_at: float = 0.0  # monotonic
    ready_since: float | None = None  # wall clock
    verified_at: float = 0.0  # monotonic
    job: Job | None = None
    checking: bool = False  # a periodic verification runs; the model stays ready meanwhile


@dataclass(frozen=True)
class Replaced:
    """What taking a new config's models did to the table."""

    retired: tuple[Entry, ...]  # records let go: their running jobs are to be stopped
    added: tuple[str, ...]
    removed: tuple[str, ...]


class ModelTable:
    """Every configured model's record, in config order."""

    def __init__(
        self,
        models: Sequence[ModelConfig],
        store: Store,
        logger: log.Logger,
        observer: Observer | None = None,
    ) -> None:
        self._store = store
        self._log = logger
        self._observer = observer
        self._lock = threading.Lock()
        self._entries = {m.id: self._enter(m) for m in models}

    # -- reading (any thread) ------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every record, in config order."""
        with self._lock:
            return list(self._entries.values())

    def get(self, repo: str) -> Entry | None:
        """The record of a configured model, or None."""
        with self._lock:
            return self._entries.get(repo)

    def current(self, entry: Entry) -> bool:
        """Whether `entry` is still the record of its model (a reload may have replaced it)."""
        return self.get(entry.model.id) is entry

    def readiness(self) -> list[str]:
        """Required models that are not ready yet (empty: the node's cache is warm)."""
        return [e.model.id for e in self.entries() if e.model.required and e.state is not ModelState.READY]

    @staticmethod
    def phase(state: ModelState, job: Job | None) -> ModelState:
        """The state to report: a running preload whose bytes are all in is verifying."""
        if state is ModelState.DOWNLOADING and job is not None and job.complete():
            return ModelState.VERIFYING
        return state

    def view(self, entry: Entry) -> ModelView:
        """The API's view of one record, with the running preload's progress."""
        with self._lock:
            model, job, state = entry.model, entry.job, entry.state
            commit, total, error, ready_path = entry.commit, entry.total_bytes, entry.error, entry.path
            retry_at, ready_since, checking = entry.retry_at, entry.ready_since, entry.checking
        spec = model.spec
        done = total if state is ModelState.READY else 0
        rate, eta = 0.0, None
        if job is not None and job.progress.total:
            total, done, rate = job.progress.total, job.progress.done, job.progress.rate()
            eta = round((total - done) / rate, 1) if rate > 0 else None
        # The published commit's path; the commit being fetched is reported as soon as it is known.
        stable = self._store.layout(spec).stable_path(spec)
        path = ready_path or (str(stable) if stable is not None else None)
        if job is not None and job.commit:
            commit = job.commit
        state = self.phase(state, job)
        failed = state is ModelState.FAILED
        return ModelView(
            id=spec.repo,
            revision=spec.revision,
            layout=spec.layout,
            required=model.required,
            pinned=model.pinned,
            sources=tuple(model.sources),
            state=state,
            commit=commit,
            path=path or None,
            bytes_done=done,
            bytes_total=total,
            rate_bytes_per_second=round(rate, 1),
            eta_seconds=eta,
            ready_since=iso_seconds(ready_since) if ready_since else None,
            last_error=error,
            retry_in_seconds=round(max(0.0, retry_at - time.monotonic()), 1) if failed else None,
            checking=checking,
        )

    # -- changing (the loop thread) ------------------------------------------------------

    def transition(
        self,
        entry: Entry,
        change: Change,
        *,
        job: Job | None = None,
        manifest: Manifest | None = None,
        error: str | None = None,
        **detail: object,
    ) -> None:
        """Apply `change` to `entry`: its state and fields, the state metric, one log line.

        STARTED takes the `job`; FOUND, PUBLISHED and VERIFIED the `manifest` now on disk; FAILED
        and DAMAGED the `error`. `detail` goes into the log line.
        """
        rule = RULES[change]
        if entry.state not in rule.before:
            raise TransitionError(f"{entry.model.id}: {change.value} from {entry.state.value}")
        repo = entry.model.id
        path = None
        if rule.after is ModelState.READY:
            if manifest is None:
                raise TransitionError(f"{repo}: {change.value} needs the manifest")
            path = str(self._store.reader_path(entry.model.spec, manifest))
        if change in (Change.FAILED, Change.DAMAGED) and error is None:
            raise TransitionError(f"{repo}: {change.value} needs the error")
        if change is Change.STARTED and job is None:
            raise TransitionError(f"{repo}: {change.value} needs the job")
        fields: dict[str, object] = {}
        with self._lock:
            if rule.after is ModelState.READY and manifest is not None:
                if entry.state is not ModelState.READY:
                    entry.ready_since = time.time()
                entry.commit, entry.total_bytes, entry.path = manifest.commit, manifest.total_bytes, path
                entry.error, entry.failures, entry.retry_at = None, 0, 0.0
                entry.verified_at = time.monotonic()
                if change is not Change.VERIFIED:
                    fields = {"commit": manifest.commit}
            elif change is Change.FAILED:
                entry.failures += 1
                entry.error, entry.retry_at = error, time.monotonic() + backoff(entry.failures)
                fields = {
                    "error": error,
                    "failures": entry.failures,
                    "retry_in_s": round(entry.retry_at - time.monotonic(), 1),
                }
            elif change is Change.DAMAGED:
                entry.error, entry.ready_since, entry.retry_at = error, None, 0.0
                fields = {"error": error, "action": "repair"}
            entry.job = job if change is Change.STARTED else None
            entry.state = rule.after
            # A retired record's late change (its cancelled job ending) is no one's news.
            current = self._entries.get(repo) is entry
            news = StateChange(
                entry.model, entry.state, change, entry.commit, entry.total_bytes, entry.error, entry.failures
            )
        if rule.after is ModelState.READY and manifest is not None:
            metrics.MODEL_SIZE_BYTES.labels(model=repo).set(manifest.total_bytes)
        if change is Change.DAMAGED:
            metrics.VERIFICATION_FAILURES.labels(model=repo).inc()
        metrics.set_state(repo, rule.after.value)
        self._log.log(rule.level, change.value, repo=repo, **fields, **detail)
        if current and self._observer is not None:
            self._observer.model_changed(news)

    def report_phase(self, entry: Entry) -> None:
        """Show a running preload's phase in the state metric (verifying once all bytes are in).

        Not a change of state: the phase follows the transfer's progress, which only a reader sees.
        """
        metrics.set_state(entry.model.id, self.phase(entry.state, entry.job).value)

    def checking(self, entry: Entry, running: bool, *, interrupted: bool = False) -> None:
        """A periodic check of a ready model starts or ends; the state stays as it is.

        An interrupted check counts as done for scheduling: the next try comes a whole interval
        later, not at the next tick.
        """
        with self._lock:
            entry.checking = running
            if interrupted:
                entry.verified_at = time.monotonic()

    def replace(self, models: Sequence[ModelConfig]) -> Replaced:
        """Take a new config's models. A model whose spec and sources stay keeps its record (and
        takes its new settings: required, pinned); any other starts over, pending."""
        with self._lock:
            old = self._entries
            fresh: dict[str, Entry] = {}
            retired: list[Entry] = []
            for m in models:
                entry = old.get(m.id)
                if entry is not None and (entry.model.spec, entry.model.sources) == (m.spec, m.sources):
                    entry.model = m
                    fresh[m.id] = entry
                else:
                    fresh[m.id] = self._enter(m)
                    if entry is not None:
                        retired.append(entry)
            removed = tuple(repo for repo in old if repo not in fresh)
            retired += [old[repo] for repo in removed]
            self._entries = fresh
        for repo in removed:
            metrics.forget_model(repo)
            if self._observer is not None:
                self._observer.model_changed(StateChange(old[repo].model, None, None))
        added = tuple(m.id for m in models if m.id not in old)
        return Replaced(tuple(retired), added, removed)

    def _enter(self, model: ModelConfig) -> Entry:
        """A model enters the table pending, and the state metric (and any observer) shows it."""
        entry = Entry(model)
        metrics.set_state(model.id, entry.state.value)
        if self._observer is not None:
            self._observer.model_changed(StateChange(model, entry.state, None))
        return entry


def backoff(failures: int) -> float:
    """Per-model retry delay: doubling, capped, jittered; scaled like every other retry."""
    delay = min(BACKOFF_MAX, BACKOFF_BASE * 2.0 ** (failures - 1)) * random.uniform(0.8, 1.2)  # noqa: S311
    return max(BACKOFF_MIN, delay * retry.RetryPolicy().scale())
