"""Preload workers: start the models that are due, run each preload in its own thread, finish it.

The loop thread starts and finishes jobs; a worker thread only runs its preload and reports
through its Job. The outcome becomes a state change in the model table (ModelTable.transition).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from agent import log
from agent.engine.preload import PreloadOptions, PreloadResult, preload
from agent.engine.transfer import Cancelled
from agent.errors import DiskSpaceError, PreloadError
from agent.modelview import ModelState
from agent.node import metrics
from agent.node.config import ModelConfig
from agent.node.models import Change, Entry, Job, ModelTable
from agent.ops import gc
from agent.sources.registry import SourcesFor
from agent.store import usage


class Workers:
    """At most `max_concurrent()` preloads at once, counting cancelled ones that have not ended."""

    def __init__(
        self,
        table: ModelTable,
        dest: Path,
        sources: SourcesFor,
        opts: PreloadOptions,
        *,
        max_concurrent: Callable[[], int],
        collect: Callable[[int], gc.Report],
        stop: threading.Event,
        wake: threading.Event,
        logger: log.Logger,
    ) -> None:
        self._table = table
        self._dest = dest
        self._sources = sources
        self._opts = opts
        self._max_concurrent = max_concurrent
        self._collect = collect
        self._stop = stop
        self._wake = wake
        self._log = logger
        self._retiring: list[Job] = []  # cancelled because their model left or changed; not ended yet
        self.not_before = 0.0  # monotonic; no preload starts earlier (start-up jitter)

    def jobs(self) -> list[Job]:
        """Every job not reaped yet: running ones and retiring ones."""
        return [e.job for e in self._table.entries() if e.job] + self._retiring

    def retire(self, entry: Entry) -> None:
        """The model left (or changed in) the config: stop its job; its files stay for GC."""
        if entry.job is not None:
            entry.job.cancel.set()
            self._retiring.append(entry.job)

    def reap(self) -> None:
        """Finish every job that ended."""
        for job in self._retiring:
            if job.done.is_set():
                self._count_bytes(job)
        self._retiring = [j for j in self._retiring if not j.done.is_set()]
        for entry in self._table.entries():
            if entry.job is not None and entry.job.done.is_set():
                self._finish(entry, entry.job)

    def count_transfers(self) -> None:
        """Add what running transfers fetched since the last tick to the transferred-bytes metric,
        and show each running preload's phase."""
        for job in self.jobs():
            self._count_bytes(job)
        for entry in self._table.entries():
            if entry.job is not None:
                self._table.report_phase(entry)

    def start_due(self, now: float) -> None:
        """Start the models that are due, in config order, while slots are free."""
        if self._stop.is_set() or now < self.not_before:
            return
        entries = self._table.entries()
        running = sum(1 for e in entries if e.job) + len(self._retiring)
        for entry in entries:
            if running >= self._max_concurrent():
                return
            if entry.job is None and entry.state is not ModelState.READY and now >= entry.retry_at:
                self._start(entry)
                running += 1

    def _start(self, entry: Entry) -> None:
        job = Job(entry.model)
        job.thread = threading.Thread(
            target=self._work, args=(job,), name=f"preload {entry.model.id}", daemon=True
        )
        self._table.transition(entry, Change.STARTED, job=job)
        job.thread.start()

    def _work(self, job: Job) -> None:
        """Worker thread: one preload; a disk that is too full gets one GC pass and one more try."""
        spec = job.model.spec
        opts = replace(self._opts, cancel=job.cancel, on_snapshot=job.resolved)
        sources = self._sources(job.model.sources)

        def run() -> PreloadResult:
            return preload(spec, self._dest, sources, opts, job.progress)

        try:
            try:
                job.result = run()
            except DiskSpaceError as exc:
                self._log.warning("disk_full_before_download", repo=spec.repo, error=str(exc), action="gc")
                # A configured model outranks anything GC may take: free what the download
                # needs (all that may go when the store could not say), then try once more.
                self._collect(exc.free_wanted or -1)
                job.result = run()
        except PreloadError as exc:
            job.error = exc
        except Exception as exc:  # a worker must report, never die silently
            self._log.exception("preload_crashed", repo=spec.repo)
            job.error = exc
        finally:
            job.done.set()
            self._wake.set()

    def _finish(self, entry: Entry, job: Job) -> None:
        result, error = job.result, job.error
        if result is not None:
            job.source = result.manifest.source
        self._count_bytes(job)
        if result is not None:
            usage.touch(self._dest, entry.model.spec)  # GC evicts the least recently used first
            if not result.already_complete:
                metrics.TRANSFER_DURATION.labels(outcome="ok").observe(result.seconds)
            self._table.transition(entry, Change.PUBLISHED, manifest=result.manifest)
        elif isinstance(error, Cancelled) or job.cancel.is_set():
            self._table.transition(entry, Change.CANCELLED)
        else:
            elapsed = time.monotonic() - job.progress.started
            metrics.TRANSFER_DURATION.labels(outcome="failed").observe(elapsed)
            self._table.transition(entry, Change.FAILED, error=_describe(error))

    def _count_bytes(self, job: Job) -> None:
        metrics.set_connections(job.model.id, job.progress.connections)
        fetched = job.progress.fetched
        if fetched > job.counted:
            source = job.source or _source_label(job.model)
            metrics.TRANSFERRED_BYTES.labels(source=source).inc(fetched - job.counted)
            job.counted = fetched


def _source_label(model: ModelConfig) -> str:
    return model.sources[0] if len(model.sources) == 1 else "unknown"


def _describe(error: BaseException | None) -> str:
    if isinstance(error, PreloadError):
        return log.scrub(str(error))
    return log.scrub(f"{type(error).__name__}: {error}")
