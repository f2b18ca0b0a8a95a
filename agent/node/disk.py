"""The node's disk: usage metrics, the watermark GC pass, GC on demand, and recording model use."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent import log
from agent.node import metrics
from agent.node.background import Background
from agent.node.config import AgentConfig
from agent.ops import gc
from agent.spec import ModelSpec
from agent.store import usage
from agent.store.space import disk_usage

GC_CHECK_INTERVAL = 30.0
USE_RECORD_EVERY = 10.0  # a waiter asks every second; its use need not be recorded that often


class Disk:
    """Keeps the cache under the high watermark, sparing configured and pinned models."""

    def __init__(
        self,
        dest: Path,
        config: Callable[[], AgentConfig],
        background: Background,
        stop: threading.Event,
        logger: log.Logger,
    ) -> None:
        self._dest = dest
        self._config = config
        self._background = background
        self._stop = stop
        self._log = logger
        self._lock = threading.Lock()  # one GC pass at a time: the watermark's or a worker's
        self._next_check = 0.0
        self._used_lock = threading.Lock()
        self._used_at: dict[str, float] = {}

    def tick(self, now: float) -> None:
        """Show disk usage; every GC_CHECK_INTERVAL, above the high watermark, start a GC pass."""
        free, total = disk_usage(self._dest)
        metrics.DISK_FREE_BYTES.set(free)
        metrics.DISK_TOTAL_BYTES.set(total)
        if now < self._next_check or not total:
            return
        self._next_check = now + GC_CHECK_INTERVAL
        high = self._config().gc.high_watermark_percent
        if not self._background.busy("gc") and (total - free) * 100 / total > high:
            self._background.spawn(self._collect_in_background, "gc")

    def _collect_in_background(self) -> None:
        try:
            self.collect()
        except Exception:  # the next watermark check tries again
            self._log.exception("gc_crashed")

    def collect(self, free_wanted: int = 0) -> gc.Report:
        """Evict down to the low watermark, or until `free_wanted` bytes are free (-1: all that may
        go), sparing configured and pinned models; stops between evictions once the agent stops."""
        config = self._config()
        total = disk_usage(self._dest)[1]
        target = int(total * (100 - config.gc.low_watermark_percent) / 100)
        target = total + 1 if free_wanted < 0 else max(target, free_wanted)
        with self._lock:
            report = gc.collect(
                self._dest,
                target,
                keep=[m.id for m in config.models],
                pinned=[m.id for m in config.models if m.pinned],
                cancel=self._stop,
            )
        for ev in report.removed:
            metrics.GC_EVICTED_BYTES.labels(kind=ev.kind.value).inc(ev.bytes)
        self._log.info(
            "gc_done",
            removed=len(report.removed),
            freed_bytes=report.plan.freed,
            free_bytes=report.free_after,
            target_bytes=target,
            short=report.short,
            interrupted=report.interrupted,
        )
        return report

    def record_use(self, spec: ModelSpec) -> None:
        """A client asked for this model by id (a `wait`, any thread): record its use now and then."""
        now = time.monotonic()
        with self._used_lock:
            if now - self._used_at.get(spec.repo, -USE_RECORD_EVERY) < USE_RECORD_EVERY:
                return
            self._used_at[spec.repo] = now
        usage.touch(self._dest, spec)
