"""The agent's reconcile loop: keep this node's cache matching the config, report every model's state.

One loop thread owns all decisions (what to start, verify, reload, collect) and never does
long work itself: each preload runs in its own worker thread with its own cancel event, and a
periodic verification or a watermark GC pass runs in a background thread that stops between
files once the agent is asked to stop. The HTTP server only reads `view()`s.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent import log, retry
from agent.engine.preload import PreloadOptions, PreloadResult, preload
from agent.engine.transfer import Cancelled, Progress
from agent.errors import DiskSpaceError, Interrupted, PreloadError
from agent.manifest import Manifest
from agent.node import metrics
from agent.node.api import ApiServer
from agent.node.config import AgentConfig, ConfigError, ModelConfig, parse
from agent.ops import gc, verify
from agent.sources.base import Snapshot, SourceFactory
from agent.sources.registry import factories
from agent.spec import ModelSpec
from agent.store import Store, usage
from agent.units import iso_seconds

TICK = 0.5
CONFIG_POLL = 1.0
GC_CHECK_INTERVAL = 30.0
LIVENESS_STALL = 60.0
BACKOFF_BASE = 10.0
BACKOFF_MAX = 600.0
BACKOFF_MIN = 1.0
USE_RECORD_EVERY = 10.0  # a waiter asks every second; its use need not be recorded that often


class State(StrEnum):
    """A configured model's state, as the API reports it."""

    PENDING = "pending"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"  # a preload has every byte: last hash checks, then publish
    READY = "ready"
    FAILED = "failed"


@dataclass
class _Job:
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


@dataclass
class _Check:
    """One periodic verification of a ready model, running in a background thread."""

    status: _Status
    done: threading.Event = field(default_factory=threading.Event)
    manifest: Manifest | None = None
    changed: list[str] = field(default_factory=list)
    interrupted: bool = False
    started: float = field(default_factory=time.monotonic)


@dataclass
class _Status:
    """What the loop knows about one configured model; guarded by Daemon._lock."""

    model: ModelConfig
    state: State = State.PENDING
    commit: str | None = None
    path: str | None = None  # where readers open the published commit
    total_bytes: int | None = None
    error: str | None = None
    failures: int = 0
    retry_at: float = 0.0  # monotonic
    ready_since: float | None = None  # wall clock
    verified_at: float = 0.0  # monotonic
    checking: bool = False  # a periodic verification runs; the model stays ready meanwhile
    job: _Job | None = None


class ConfigWatch:
    """Notices a changed config file, including Kubernetes' `..data` symlink swap.

    A mounted ConfigMap is updated by pointing a symlink at a new directory, so the
    file's own path keeps its mtime; the resolved path, its stat and a content hash
    together catch every kind of change.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[str, int, int, int] | None = None
        self._digest = ""

    def read(self) -> bytes:
        """The file's content now, remembered as the last seen; raises OSError if unreadable."""
        real = os.path.realpath(self.path)
        st = os.stat(real)
        data = Path(real).read_bytes()
        self._signature = (real, st.st_mtime_ns, st.st_size, st.st_ino)
        self._digest = hashlib.sha256(data).hexdigest()
        return data

    def changed(self) -> bytes | None:
        """The file's new content if it changed since last seen; raises OSError if unreadable."""
        real = os.path.realpath(self.path)
        st = os.stat(real)
        if (real, st.st_mtime_ns, st.st_size, st.st_ino) == self._signature:
            return None
        before = self._digest
        data = self.read()
        return None if self._digest == before else data

    def forget(self) -> None:
        """Treat whatever the file holds next as a change."""
        self._signature, self._digest = None, ""


class Daemon:
    """Reconciles the cache under `dest` with the config at `config_path`."""

    def __init__(
        self,
        config_path: Path,
        dest: Path,
        hub: SourceFactory,
        opts: PreloadOptions,
        max_concurrent: int | None = None,
    ) -> None:
        dest = dest.absolute()  # paths in the API are for other pods, never relative to our cwd
        self.store = Store(dest)
        self.store.prepare()
        self.dest = dest
        self.config_path = config_path
        self._hub = hub
        self._opts = opts
        self._max_override = max_concurrent
        self._watch = ConfigWatch(config_path)
        try:
            data = self._watch.read()
        except OSError as exc:
            raise ConfigError(f"cannot read config {config_path}: {exc.strerror or exc}") from exc
        self.config: AgentConfig = parse(data, str(config_path))
        self.config_loaded_at = time.time()
        self.reload_error: str | None = None
        self._lock = threading.Lock()
        self._gc_lock = threading.Lock()
        self._status: dict[str, _Status] = {m.id: _Status(m) for m in self.config.models}
        self._retiring: list[_Job] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._last_tick = time.monotonic()
        self._next_config_poll = 0.0
        self._next_gc_check = 0.0
        self._not_before = 0.0  # monotonic; no preload starts earlier (start-up jitter)
        self._check: _Check | None = None
        self._background: list[threading.Thread] = []  # checks and GC passes, joined at shutdown
        self._used_at: dict[str, float] = {}
        self.log = log.get().bind(dest=str(dest))
        metrics.install_retry_hook()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def max_concurrent(self) -> int:
        """Preloads allowed at once: the command line wins over the config."""
        return self._max_override or self.config.max_concurrent

    def stop(self) -> None:
        """Ask the loop to stop; safe from a signal handler."""
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Reconcile until stopped, then cancel transfers (they stay resumable)."""
        self.log.info(
            "agent_start",
            models=len(self.config.models),
            max_concurrent=self.max_concurrent,
            max_workers=self._opts.max_workers,
            drop_cache=self._opts.drop_cache,
        )
        for st in self._statuses():
            self._check_local(st)
        jitter = random.uniform(0, self.config.startup_jitter)  # noqa: S311 - spreading load, not crypto
        if jitter:
            # Only the first preloads wait: the loop keeps turning (liveness, reloads, metrics).
            self._not_before = time.monotonic() + jitter
            self.log.info("startup_jitter", seconds=round(jitter, 1))
        while not self._stop.is_set():
            self.tick()
            self._wake.wait(TICK)
            self._wake.clear()

    def shutdown(self, grace: float) -> bool:
        """Cancel every job and wait up to `grace` seconds; True if all workers ended.

        A verification or GC pass sees the stop flag between files and ends too.
        """
        self._stop.set()
        jobs = [st.job for st in self._statuses() if st.job] + list(self._retiring)
        for job in jobs:
            job.cancel.set()
        deadline = time.monotonic() + grace
        for job in jobs:
            job.done.wait(max(0.0, deadline - time.monotonic()))
        for thread in self._background:
            thread.join(max(0.0, deadline - time.monotonic()))
        return all(job.done.is_set() for job in jobs) and not any(t.is_alive() for t in self._background)

    def alive(self) -> bool:
        """True while the loop keeps turning."""
        return self.loop_age() < LIVENESS_STALL

    def loop_age(self) -> float:
        """Seconds since the loop last turned (it turns every TICK)."""
        return time.monotonic() - self._last_tick

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        """Run `target` in a background thread that shutdown waits for."""
        self._background = [t for t in self._background if t.is_alive()]
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._background.append(thread)
        thread.start()

    # -- one pass ------------------------------------------------------------------------

    def tick(self) -> None:
        """Reload, reap, verify, start, collect: everything the loop does once."""
        now = time.monotonic()
        self._last_tick = now
        if now >= self._next_config_poll:
            self._next_config_poll = now + CONFIG_POLL
            self._poll_config()
        self._reap()
        self._reap_check()
        self._count_transfers()
        self._verify_due(now)
        self._start_due(now)
        self._disk(now)

    def _poll_config(self) -> None:
        """Apply a changed config file; count and report every changed file that is rejected.

        An unreadable file is one error until it is readable again (not one per poll), and then
        counts as changed, so that whatever it now holds is parsed and reported afresh.
        """
        try:
            data = self._watch.changed()
        except OSError as exc:
            self._watch.forget()
            self._reject(f"cannot read config: {exc}", repeated=self.reload_error)
            return
        if data is None:
            return
        try:
            config = parse(data, str(self.config_path))
        except ConfigError as exc:
            self._reject(str(exc))
            return
        self._apply(config)

    def _reject(self, message: str, repeated: str | None = None) -> None:
        if message != repeated:
            metrics.CONFIG_RELOAD_ERRORS.inc()
            self.log.error("config_reload_failed", error=message, kept="last good config")
        self.reload_error = message

    def _apply(self, config: AgentConfig) -> None:
        with self._lock:
            old = self._status
            fresh: dict[str, _Status] = {}
            for m in config.models:
                st = old.get(m.id)
                if st is not None and (st.model.spec, st.model.sources) == (m.spec, m.sources):
                    st.model = m
                    fresh[m.id] = st
                else:
                    fresh[m.id] = _Status(m)
                    if st is not None:
                        self._retire(st)
            for repo, st in old.items():
                if repo not in fresh:
                    self._retire(st)
                    metrics.forget_model(repo)
            self._status = fresh
            self.config = config
            self.config_loaded_at = time.time()
            self.reload_error = None
        added = [m.id for m in config.models if m.id not in old]
        removed = [r for r in old if r not in fresh]
        self.log.info("config_reloaded", models=len(config.models), added=added, removed=removed)
        for st in self._statuses():
            if st.state is State.PENDING and st.job is None:
                self._check_local(st)

    def _retire(self, st: _Status) -> None:
        """A job whose model left (or changed in) the config: stop it; its files stay for GC."""
        if st.job is not None:
            st.job.cancel.set()
            self._retiring.append(st.job)

    def _reap(self) -> None:
        for job in self._retiring:
            if job.done.is_set():
                self._count_bytes(job)
        self._retiring = [j for j in self._retiring if not j.done.is_set()]
        for st in self._statuses():
            if st.job is not None and st.job.done.is_set():
                self._finish(st, st.job)

    def _count_transfers(self) -> None:
        """Add what running transfers fetched since the last tick to the transferred-bytes metric."""
        for job in [st.job for st in self._statuses() if st.job] + self._retiring:
            self._count_bytes(job)
        for st in self._statuses():
            if st.job is not None:
                metrics.set_state(st.model.id, self._phase(st.state, st.job).value)

    def _count_bytes(self, job: _Job) -> None:
        fetched = job.progress.fetched
        if fetched > job.counted:
            source = job.source or _source_label(job.model)
            metrics.TRANSFERRED_BYTES.labels(source=source).inc(fetched - job.counted)
            job.counted = fetched

    def _finish(self, st: _Status, job: _Job) -> None:
        result, error = job.result, job.error
        if result is not None:
            job.source = result.manifest.source
        self._count_bytes(job)
        if result is not None:
            usage.touch(self.dest, st.model.spec)  # GC evicts the least recently used first
        with self._lock:
            st.job = None
            if result is not None:
                self._mark_ready(st, result.manifest)
            elif isinstance(error, Cancelled) or job.cancel.is_set():
                st.state = State.PENDING
            else:
                st.failures += 1
                delay = _backoff(st.failures)
                st.state, st.error, st.retry_at = State.FAILED, _describe(error), time.monotonic() + delay
        if result is not None and not result.already_complete:
            metrics.TRANSFER_DURATION.labels(outcome="ok").observe(result.seconds)
        if result is None and st.state is State.FAILED:
            elapsed = time.monotonic() - job.progress.started
            metrics.TRANSFER_DURATION.labels(outcome="failed").observe(elapsed)
            self.log.error(
                "model_failed",
                repo=st.model.id,
                error=st.error,
                failures=st.failures,
                retry_in_s=round(st.retry_at - time.monotonic(), 1),
            )
        metrics.set_state(st.model.id, st.state.value)

    def _mark_ready(self, st: _Status, m: Manifest) -> None:
        if st.state is not State.READY:
            st.ready_since = time.time()
        st.state, st.commit, st.total_bytes = State.READY, m.commit, m.total_bytes
        st.path = str(self.store.reader_path(st.model.spec, m))
        st.error, st.failures, st.retry_at = None, 0, 0.0
        st.verified_at = time.monotonic()
        metrics.MODEL_SIZE_BYTES.labels(model=st.model.id).set(m.total_bytes)

    def _check_local(self, st: _Status) -> None:
        """A model already complete on disk is ready at once, without asking any source."""
        m = self.store.ready(st.model.spec)
        if m is not None:
            with self._lock:
                self._mark_ready(st, m)
        metrics.set_state(st.model.id, st.state.value)

    def _verify_due(self, now: float) -> None:
        """Start the periodic check of one ready model that is due, if none runs."""
        interval = self.config.verify_interval
        if not interval or self._check is not None or self._stop.is_set():
            return
        for st in self._statuses():
            if st.state is State.READY and st.job is None and now - st.verified_at >= interval:
                check = _Check(st)
                with self._lock:
                    st.checking = True
                self._check = check
                self._spawn(functools.partial(self._run_check, check), f"verify {st.model.id}")
                return

    def _run_check(self, check: _Check) -> None:
        """Background thread: the fast check of one ready model; its state is not touched here."""
        spec = check.status.model.spec
        try:
            check.manifest = self.store.ready(spec)
            if check.manifest is not None:
                check.changed = self._changed_files(spec, check.manifest)
        except Interrupted:
            check.interrupted = True
        except Exception:  # a check must report, never kill its thread silently
            self.log.exception("verify_crashed", repo=spec.repo)
            check.interrupted = True
        finally:
            check.done.set()
            self._wake.set()

    def _reap_check(self) -> None:
        """Apply a finished check: a sound model stays ready; a damaged one goes back to repair."""
        check = self._check
        if check is None or not check.done.is_set():
            return
        self._check = None
        st, spec = check.status, check.status.model.spec
        m = None if check.changed else check.manifest
        bad: list[str] = []
        if m is None and not check.interrupted:
            marker = self.store.read_marker(spec)
            bad = self.store.fast_check(spec, marker) if marker else ["(completion marker)"]
            bad += check.changed
        with self._lock:
            st.checking = False
            if check.interrupted:
                st.verified_at = time.monotonic()  # next try after a whole interval, not next tick
            if check.interrupted or self._status.get(spec.repo) is not st or st.state is not State.READY:
                return
            if m is not None:
                self._mark_ready(st, m)
            else:
                st.state, st.ready_since, st.retry_at = State.PENDING, None, 0.0
                st.error = f"damaged: missing, wrong size or changed: {', '.join(bad[:5]) or '(pointer)'}"
        seconds = round(time.monotonic() - check.started, 2)
        if m is None:
            metrics.VERIFICATION_FAILURES.labels(model=spec.repo).inc()
            self.log.warning(
                "model_damaged", repo=spec.repo, error=st.error, action="repair", seconds=seconds
            )
        else:
            self.log.info("model_verified", repo=spec.repo, seconds=seconds)
        metrics.set_state(spec.repo, st.state.value)

    def _changed_files(self, spec: ModelSpec, m: Manifest) -> list[str]:
        """Files modified since publish whose hash no longer matches; deleted so a repair refetches them.

        Sizes alone miss same-size damage; a later mtime is what a stat can still see, and only
        those files are re-hashed (as `preload verify` does). Skipped while another process
        holds the model's lock.
        """

        with self.store.lock(spec, deadline=0) as got:
            if not got:
                return []
            report = verify.verify(self.store, spec, cancel=self._stop)
            if report.commit != m.commit:
                return []
            if report.touched and not report.corrupt:
                verify.record(self.store, spec, report)  # intact: do not re-hash it every interval
            for p in self.store.placements(spec, m.commit, m.files):
                if p.file.path in report.corrupt:
                    with contextlib.suppress(FileNotFoundError):
                        p.final.unlink()
            return list(report.corrupt)

    def _start_due(self, now: float) -> None:
        if self._stop.is_set() or now < self._not_before:
            return
        statuses = self._statuses()
        running = sum(1 for st in statuses if st.job) + len(self._retiring)
        for st in statuses:
            if running >= self.max_concurrent:
                return
            if st.job is None and st.state is not State.READY and now >= st.retry_at:
                self._start(st)
                running += 1

    def _start(self, st: _Status) -> None:
        job = _Job(st.model)
        with self._lock:
            st.job, st.state = job, State.DOWNLOADING
        job.thread = threading.Thread(
            target=self._work, args=(job,), name=f"preload {st.model.id}", daemon=True
        )
        job.thread.start()
        metrics.set_state(st.model.id, st.state.value)

    def _work(self, job: _Job) -> None:
        """Worker thread: one preload; a disk that is too full gets one GC pass and one more try."""
        spec = job.model.spec
        opts = replace(self._opts, cancel=job.cancel, on_snapshot=job.resolved)
        sources = factories(job.model.sources, self._hub, self._opts.drop_cache)
        run: Callable[[], PreloadResult] = lambda: preload(  # noqa: E731
            spec, self.dest, sources, opts, job.progress
        )
        try:
            try:
                job.result = run()
            except DiskSpaceError as exc:
                self.log.warning("disk_full_before_download", repo=spec.repo, error=str(exc), action="gc")
                # A configured model outranks anything GC may take: free what the download
                # needs (all that may go when the store could not say), then try once more.
                self.collect(free_wanted=exc.free_wanted or -1)
                job.result = run()
        except PreloadError as exc:
            job.error = exc
        except Exception as exc:  # a worker must report, never die silently
            self.log.exception("preload_crashed", repo=spec.repo)
            job.error = exc
        finally:
            job.done.set()
            self._wake.set()

    # -- disk ----------------------------------------------------------------------------

    def _disk(self, now: float) -> None:
        free, total = gc.disk_usage(self.dest)
        metrics.DISK_FREE_BYTES.set(free)
        metrics.DISK_TOTAL_BYTES.set(total)
        if now < self._next_gc_check or not total:
            return
        self._next_gc_check = now + GC_CHECK_INTERVAL
        busy = any(t.name == "gc" and t.is_alive() for t in self._background)
        if not busy and (total - free) * 100 / total > self.config.gc.high_watermark_percent:
            self._spawn(self._collect_in_background, "gc")

    def _collect_in_background(self) -> None:
        try:
            self.collect()
        except Exception:  # the next watermark check tries again
            self.log.exception("gc_crashed")

    def collect(self, free_wanted: int = 0) -> gc.Report:
        """Evict down to the low watermark, or until `free_wanted` bytes are free (-1: all that may
        go), sparing configured and pinned models; stops between evictions once the agent stops."""
        config = self.config
        total = gc.disk_usage(self.dest)[1]
        target = int(total * (100 - config.gc.low_watermark_percent) / 100)
        target = total + 1 if free_wanted < 0 else max(target, free_wanted)
        with self._gc_lock:
            report = gc.collect(
                self.dest,
                target,
                keep=[m.id for m in config.models],
                pinned=[m.id for m in config.models if m.pinned],
                cancel=self._stop,
            )
        for ev in report.removed:
            metrics.GC_EVICTED_BYTES.labels(kind=ev.kind.value).inc(ev.bytes)
        self.log.info(
            "gc_done",
            removed=len(report.removed),
            freed_bytes=report.plan.freed,
            free_bytes=report.free_after,
            target_bytes=target,
            short=report.short,
            interrupted=report.interrupted,
        )
        return report

    # -- views for the API (any thread) --------------------------------------------------

    def _statuses(self) -> list[_Status]:
        with self._lock:
            return list(self._status.values())

    def views(self) -> list[dict[str, Any]]:
        """Every configured model, in config order."""
        return [self._view(st) for st in self._statuses()]

    def view(self, repo: str) -> dict[str, Any] | None:
        """One configured model, or None."""
        with self._lock:
            st = self._status.get(repo)
        return None if st is None else self._view(st)

    def record_use(self, repo: str) -> None:
        """Someone asked for this model by id (a `wait`): record its use for GC, now and then."""
        with self._lock:
            st = self._status.get(repo)
            now = time.monotonic()
            if st is None or now - self._used_at.get(repo, -USE_RECORD_EVERY) < USE_RECORD_EVERY:
                return
            self._used_at[repo] = now
        usage.touch(self.dest, st.model.spec)

    def readiness(self) -> list[str]:
        """Required models that are not ready yet (empty: the node's cache is warm)."""
        return [st.model.id for st in self._statuses() if st.model.required and st.state is not State.READY]

    def config_view(self) -> dict[str, Any]:
        """Where the config came from and whether the last change to it was rejected."""
        return {
            "path": str(self.config_path),
            "loaded_at": iso_seconds(self.config_loaded_at),
            "reload_error": self.reload_error,
            "max_concurrent": self.max_concurrent,
        }

    @staticmethod
    def _phase(state: State, job: _Job | None) -> State:
        """A running preload whose bytes are all in is verifying (last hashes, then publish)."""
        if state is State.DOWNLOADING and job is not None:
            total, done = job.progress.total, job.progress.done
            if total and done >= total:
                return State.VERIFYING
        return state

    def _view(self, st: _Status) -> dict[str, Any]:
        with self._lock:
            spec, job, state = st.model.spec, st.job, st.state
            commit, total, error, ready_path = st.commit, st.total_bytes, st.error, st.path
            retry_at, ready_since, checking = st.retry_at, st.ready_since, st.checking
        done = total if state is State.READY else 0
        rate, eta = 0.0, None
        if job is not None and job.progress.total:
            total, done, rate = job.progress.total, job.progress.done, job.progress.rate()
            eta = round((total - done) / rate, 1) if rate > 0 else None
        # The published commit's path; the commit being fetched is reported as soon as it is known.
        path = ready_path or (str(self.store.model_path(spec)) if spec.layout.value == "dir" else None)
        if job is not None and job.commit:
            commit = job.commit
        state = self._phase(state, job)
        return {
            "id": spec.repo,
            "revision": spec.revision,
            "layout": spec.layout.value,
            "required": st.model.required,
            "pinned": st.model.pinned,
            "sources": list(st.model.sources),
            "state": state.value,
            "commit": commit,
            "path": str(path) if path else None,
            "bytes_done": done,
            "bytes_total": total,
            "rate_bytes_per_second": round(rate, 1),
            "eta_seconds": eta,
            "ready_since": iso_seconds(ready_since) if ready_since else None,
            "last_error": error,
            "retry_in_seconds": round(max(0.0, retry_at - time.monotonic()), 1)
            if state is State.FAILED
            else None,
            "checking": checking,
        }


def _backoff(failures: int) -> float:
    """Per-model retry delay: doubling, capped, jittered; scaled like every other retry."""
    delay = min(BACKOFF_MAX, BACKOFF_BASE * 2.0 ** (failures - 1)) * random.uniform(0.8, 1.2)  # noqa: S311
    return max(BACKOFF_MIN, delay * retry.RetryPolicy().scale())


def _source_label(model: ModelConfig) -> str:
    return model.sources[0] if len(model.sources) == 1 else "unknown"


def _describe(error: BaseException | None) -> str:
    if isinstance(error, PreloadError):
        return log.scrub(str(error))
    return log.scrub(f"{type(error).__name__}: {error}")


def serve(daemon: Daemon, listen: tuple[str, int], grace: float = 8.0) -> int:
    """Run the loop and the API in this (main) thread until SIGTERM/SIGINT; return the exit code."""
    import signal

    server = ApiServer(listen, daemon)
    server.start()
    daemon.log.info("api_listening", host=server.host, port=server.port)

    def on_signal(signum: int, _: Any) -> None:
        daemon.log.info("agent_stopping", signal=signal.Signals(signum).name)
        daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.run()
    finally:
        clean = daemon.shutdown(grace)
        server.stop()
        daemon.log.info("agent_stopped", transfers_ended=clean)
    if not clean:
        # A worker blocked in a socket read would hold interpreter exit until its read
        # timeout; its partial files are journaled, so leaving now keeps them resumable.
        with contextlib.suppress(Exception):
            import sys

            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(0)
    return 0
