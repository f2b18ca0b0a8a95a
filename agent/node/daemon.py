"""The agent process: build every part in one place, turn the loop, serve the API, stop cleanly.

One loop thread owns all decisions (what to reload, start, verify, collect) and never does long
work itself: each preload runs in its own worker thread (workers.py), a periodic verification
(checks.py) or a watermark GC pass (disk.py) in a background thread that stops between files
once the agent is asked to stop. Every model's state lives in the model table (models.py); the
HTTP server (api.py) only reads views of it.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from agent import log
from agent.engine.preload import PreloadOptions
from agent.errors import PreloadError
from agent.modelview import ConfigView, ModelState, ModelView
from agent.node import metrics
from agent.node.api import ApiServer
from agent.node.background import Background
from agent.node.checks import Checks
from agent.node.configwatch import LiveConfig
from agent.node.disk import Disk
from agent.node.kube import InCluster, KubeClient
from agent.node.models import ModelTable
from agent.node.nodesync import NodeSync, NodeTarget
from agent.node.peerserve import PeerServer, PublishedIndex
from agent.node.reconcile import Reconciler
from agent.node.workers import Workers
from agent.ops.diagnose import AGENT_TEST_BYTES, diagnose
from agent.sources.registry import SourcesFor
from agent.store import Store

TICK = 0.5
LIVENESS_STALL = 60.0


class Daemon:
    """Reconciles the cache under `dest` with the config at `config_path`; the API's `Status`."""

    def __init__(
        self,
        config_path: Path,
        dest: Path,
        sources: SourcesFor,
        opts: PreloadOptions,
        max_concurrent: int | None = None,
        node: NodeTarget | None = None,
        kube: InCluster | None = None,
    ) -> None:
        dest = dest.absolute()  # paths in the API are for other pods, never relative to our cwd
        store = Store(dest)
        store.prepare()
        self.log = log.get().bind(dest=str(dest))
        self._opts = opts
        self._dest = dest
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._last_tick = time.monotonic()
        self._background = Background()
        self._config = LiveConfig(config_path, max_concurrent, self.log)
        self._node_sync = self._node_sync_for(node, kube)
        self._table = ModelTable(self._config.current.models, store, self.log, observer=self._node_sync)
        self._disk = Disk(dest, lambda: self._config.current, self._background, self._stop, self.log)
        self._workers = Workers(
            self._table,
            dest,
            sources,
            opts,
            max_concurrent=lambda: self._config.max_concurrent,
            collect=self._disk.collect,
            stop=self._stop,
            wake=self._wake,
            logger=self.log,
        )
        self._checks = Checks(
            self._table,
            store,
            interval=lambda: self._config.current.verify_interval,
            background=self._background,
            stop=self._stop,
            wake=self._wake,
            logger=self.log,
        )
        self._reconciler = Reconciler(self._table, store, self._config, self._workers, self.log)
        self._published = PublishedIndex(
            lambda: [e.model.spec for e in self._table.entries() if e.state is ModelState.READY], store
        )
        metrics.install_retry_hook()

    def _node_sync_for(self, node: NodeTarget | None, kube: InCluster | None) -> NodeSync | None:
        """Node labels and Events when a node name and API credentials are both there; else none."""
        if node is None:
            return None
        kube = kube or InCluster.from_env()
        if kube is None:
            self.log.info("node_labels_off", node=node.node, reason="no in-cluster service account token")
            return None
        return NodeSync(KubeClient(kube), node, self.log)

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop; safe from a signal handler."""
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Reconcile until stopped, then cancel transfers (they stay resumable)."""
        config = self._config.current
        self.log.info(
            "agent_start",
            models=len(config.models),
            max_concurrent=self._config.max_concurrent,
            max_workers=self._opts.max_workers,
            drop_cache=self._opts.drop_cache,
        )
        self._reconciler.adopt_local()
        if self._node_sync is not None:
            self._node_sync.start()  # after adopt_local: the first patch already says what is ready
        self._background.spawn(self._diagnose, "diagnose")
        jitter = random.uniform(0, config.startup_jitter)  # noqa: S311 - spreading load, not crypto
        if jitter:
            # Only the first preloads wait: the loop keeps turning (liveness, reloads, metrics).
            self._workers.not_before = time.monotonic() + jitter
            self.log.info("startup_jitter", seconds=round(jitter, 1))
        while not self._stop.is_set():
            self.tick()
            self._wake.wait(TICK)
            self._wake.clear()

    def _diagnose(self) -> None:
        """Measure the cache volume and CPU once, small, so the dashboard shows slow nodes."""
        try:
            d = diagnose(self._dest, AGENT_TEST_BYTES)
        except PreloadError as exc:
            self.log.warning("diagnose_failed", error=str(exc))
            return
        metrics.record_diagnosis(d)
        self.log.info(
            "diagnose",
            disk_write_mb_s=round(d.write_bps / 1e6),
            disk_read_mb_s=round(d.read_bps / 1e6),
            sha256_mb_s=round(d.hash_bps / 1e6),
            direct_io=d.direct_io,
        )

    def tick(self) -> None:
        """Reload, reap, verify, start, collect: everything the loop does once."""
        now = time.monotonic()
        self._last_tick = now
        self._reconciler.poll(now)
        self._workers.reap()
        self._checks.reap()
        self._checks.notice_damage()
        self._workers.count_transfers()
        self._checks.start_due(now)
        self._workers.start_due(now)
        self._disk.tick(now)

    def shutdown(self, grace: float) -> bool:
        """Cancel every job and wait up to `grace` seconds; True if all workers ended.

        A verification or GC pass sees the stop flag between files and ends too.
        """
        self._stop.set()
        jobs = self._workers.jobs()
        for job in jobs:
            job.cancel.set()
        deadline = time.monotonic() + grace
        for job in jobs:
            job.done.wait(max(0.0, deadline - time.monotonic()))
        background_ended = self._background.join(deadline)
        if self._node_sync is not None:
            self._node_sync.stop(min(2.0, max(0.0, deadline - time.monotonic())))
        return all(job.done.is_set() for job in jobs) and background_ended

    # -- what the API reads (any thread) -------------------------------------------------

    def alive(self) -> bool:
        """True while the loop keeps turning."""
        return self.loop_age() < LIVENESS_STALL

    def loop_age(self) -> float:
        """Seconds since the loop last turned (it turns every TICK)."""
        return time.monotonic() - self._last_tick

    def readiness(self) -> list[str]:
        """Required models that are not ready yet (empty: the node's cache is warm)."""
        return self._table.readiness()

    def views(self) -> list[ModelView]:
        """Every configured model, in config order."""
        return [self._table.view(entry) for entry in self._table.entries()]

    def view(self, repo: str) -> ModelView | None:
        """One configured model, or None."""
        entry = self._table.get(repo)
        return None if entry is None else self._table.view(entry)

    def config_view(self) -> ConfigView:
        """Where the config came from and whether the last change to it was rejected."""
        return self._config.view()

    def published(self, key: str) -> Path | None:
        """A verified file of a ready model with this content hash (what the peer port serves)."""
        return self._published.find(key)

    def record_use(self, repo: str) -> None:
        """Someone asked for this model by id (a `wait`): record its use for GC, now and then."""
        entry = self._table.get(repo)
        if entry is not None:
            self._disk.record_use(entry.model.spec)


def serve(
    daemon: Daemon, listen: tuple[str, int], grace: float = 8.0, peers: PeerServer | None = None
) -> int:
    """Run the loop and the API in this (main) thread until SIGTERM/SIGINT; return the exit code."""
    server = ApiServer(listen, daemon)
    server.start()
    daemon.log.info("api_listening", host=server.host, port=server.port)
    if peers is not None:
        peers.start()
        daemon.log.info("peer_port_listening", port=peers.port)

    def on_signal(signum: int, _: FrameType | None) -> None:
        daemon.log.info("agent_stopping", signal=signal.Signals(signum).name)
        daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.run()
    finally:
        clean = daemon.shutdown(grace)
        server.stop()
        if peers is not None:
            peers.stop()
        daemon.log.info("agent_stopped", transfers_ended=clean)
    if not clean:
        # A worker blocked in a socket read would hold interpreter exit until its read
        # timeout; its partial files are journaled, so leaving now keeps them resumable.
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(0)
    return 0
