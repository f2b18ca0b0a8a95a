"""The agent's reconcile loop: keep this node's cache matching the config, report every model's state.

One loop thread owns all decisions (what to start, verify, reload, collect); each preload runs
in its own worker thread with its own cancel event. The HTTP server only reads `view()`s.
"""

from __future__ import annotations

import contextlib
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

from agent import gc, log, metrics, retry
from agent.config import AgentConfig, ConfigError, ModelConfig, parse
from agent.errors import DiskSpaceError, PreloadError
from agent.manifest import Manifest
from agent.preload import PreloadOptions, PreloadResult, preload
from agent.sources import SourceFactory, factories
from agent.spec import ModelSpec
from agent.store import Store
from agent.transfer import Cancelled, Progress

TICK = 0.5
CONFIG_POLL = 1.0
GC_CHECK_INTERVAL = 30.0
LIVENESS_STALL = 60.0
BACKOFF_BASE = 10.0
BACKOFF_MAX = 600.0
BACKOFF_MIN = 1.0


class State(StrEnum):
    """A configured model's state, as the API reports it."""

    PENDING = "pending"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
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


@dataclass
class _Status:
    """What the loop knows about one configured model; guarded by Daemon._lock."""

    model: ModelConfig
    state: State = State.PENDING
    commit: str | None = None
    total_bytes: int | None = None
    error: str | None = None
    failures: int = 0
    retry_at: float = 0.0  # monotonic
    ready_since: float | None = None  # wall clock
    verified_at: float = 0.0  # monotonic
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
        self.log.info("agent_start", models=len(self.config.models), max_concurrent=self.max_concurrent)
        for st in self._statuses():
            self._check_local(st)
        jitter = random.uniform(0, self.config.startup_jitter)  # noqa: S311 - spreading load, not crypto
        if jitter:
            self.log.info("startup_jitter", seconds=round(jitter, 1))
            self._pause(jitter)
        while not self._stop.is_set():
            self.tick()
            self._wake.wait(TICK)
            self._wake.clear()

    def shutdown(self, grace: float) -> bool:
        """Cancel every job and wait up to `grace` seconds; True if all workers ended."""
        jobs = [st.job for st in self._statuses() if st.job] + list(self._retiring)
        for job in jobs:
            job.cancel.set()
        deadline = time.monotonic() + grace
        for job in jobs:
            job.done.wait(max(0.0, deadline - time.monotonic()))
        return all(job.done.is_set() for job in jobs)

    def alive(self) -> bool:
        """True while the loop keeps turning."""
        return time.monotonic() - self._last_tick < LIVENESS_STALL

    def _pause(self, seconds: float) -> None:
        self._stop.wait(seconds)

    # -- one pass ------------------------------------------------------------------------

    def tick(self) -> None:
        """Reload, reap, verify, start, collect: everything the loop does once."""
        now = time.monotonic()
        self._last_tick = now
        if now >= self._next_config_poll:
            self._next_config_poll = now + CONFIG_POLL
            self._poll_config()
        self._reap()
        self._verify_due(now)
        self._start_due(now)
        self._disk(now)

    def _poll_config(self) -> None:
        try:
            data = self._watch.changed()
            if data is None:
                return
            config = parse(data, str(self.config_path))
        except (OSError, ConfigError) as exc:
            message = str(exc) if isinstance(exc, ConfigError) else f"cannot read config: {exc}"
            if message != self.reload_error:
                metrics.CONFIG_RELOAD_ERRORS.inc()
                self.log.error("config_reload_failed", error=message, kept="last good config")
            self.reload_error = message
            return
        self._apply(config)

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
        self._retiring = [j for j in self._retiring if not j.done.is_set()]
        for st in self._statuses():
            if st.job is not None and st.job.done.is_set():
                self._finish(st, st.job)

    def _finish(self, st: _Status, job: _Job) -> None:
        result, error = job.result, job.error
        source = result.manifest.source if result else _source_label(job.model)
        if job.progress.fetched:
            metrics.TRANSFERRED_BYTES.labels(source=source).inc(job.progress.fetched)
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
        interval = self.config.verify_interval
        if not interval:
            return
        for st in self._statuses():
            if st.state is State.READY and st.job is None and now - st.verified_at >= interval:
                self._verify(st)

    def _verify(self, st: _Status) -> None:
        spec = st.model.spec
        with self._lock:
            st.state = State.VERIFYING
        metrics.set_state(spec.repo, st.state.value)
        m = self.store.ready(spec)
        changed = self._changed_files(spec, m) if m is not None else []
        if changed:
            m = None
        with self._lock:
            if m is not None:
                self._mark_ready(st, m)
            else:
                marker = self.store.read_marker(spec)
                bad = self.store.fast_check(spec, marker) if marker else ["(completion marker)"]
                bad += changed
                st.state, st.ready_since, st.retry_at = State.PENDING, None, 0.0
                st.error = f"damaged: missing, wrong size or changed: {', '.join(bad[:5]) or '(pointer)'}"
        if m is None:
            metrics.VERIFICATION_FAILURES.labels(model=spec.repo).inc()
            self.log.warning("model_damaged", repo=spec.repo, error=st.error, action="repair")
        metrics.set_state(spec.repo, st.state.value)

    def _changed_files(self, spec: ModelSpec, m: Manifest) -> list[str]:
        """Files modified since publish whose hash no longer matches; deleted so a repair refetches them.

        Sizes alone miss same-size damage; a later mtime is what a stat can still see, and only
        those files are re-hashed (as `preload verify` does). Skipped while another process
        holds the model's lock.
        """
        from agent import verify

        with self.store.lock(spec, deadline=0) as got:
            if not got:
                return []
            report = verify.verify(self.store, spec)
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
        if self._stop.is_set():
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
        opts = replace(self._opts, cancel=job.cancel)
        run: Callable[[], PreloadResult] = lambda: preload(  # noqa: E731
            spec, self.dest, factories(job.model.sources, self._hub), opts, job.progress
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
        if (total - free) * 100 / total > self.config.gc.high_watermark_percent:
            self.collect()

    def collect(self, free_wanted: int = 0) -> gc.Report:
        """Evict down to the low watermark, or until `free_wanted` bytes are free (-1: all that may
        go), sparing configured and pinned models."""
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

    def readiness(self) -> list[str]:
        """Required models that are not ready yet (empty: the node's cache is warm)."""
        return [st.model.id for st in self._statuses() if st.model.required and st.state is not State.READY]

    def config_view(self) -> dict[str, Any]:
        """Where the config came from and whether the last change to it was rejected."""
        return {
            "path": str(self.config_path),
            "loaded_at": _iso(self.config_loaded_at),
            "reload_error": self.reload_error,
            "max_concurrent": self.max_concurrent,
        }

    def _view(self, st: _Status) -> dict[str, Any]:
        with self._lock:
            spec, job, state = st.model.spec, st.job, st.state
            commit, total, error = st.commit, st.total_bytes, st.error
            retry_at, ready_since = st.retry_at, st.ready_since
        done = total if state is State.READY else 0
        rate, eta = 0.0, None
        if job is not None and job.progress.total:
            total, done, rate = job.progress.total, job.progress.done, job.progress.rate()
            eta = round((total - done) / rate, 1) if rate > 0 else None
        path = self.store.model_path(spec, commit) if commit or spec.layout.value == "dir" else None
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
            "ready_since": _iso(ready_since) if ready_since else None,
            "last_error": error,
            "retry_in_seconds": round(max(0.0, retry_at - time.monotonic()), 1)
            if state is State.FAILED
            else None,
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


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def serve(daemon: Daemon, listen: tuple[str, int], grace: float = 8.0) -> int:
    """Run the loop and the API in this (main) thread until SIGTERM/SIGINT; return the exit code."""
    import signal

    from agent.server import ApiServer

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
