"""Periodic verification of ready models: one fast check at a time, in a background thread.

The check itself never touches the model's record; the loop applies its finding: a sound model
stays ready (VERIFIED), a damaged one goes back to pending to be repaired (DAMAGED). What a check
finds bad is recorded in the store (its damage record), so it is not forgotten by a restart and
the repairing preload refetches exactly those files. A record written by someone else (`preload
verify` beside the agent) is noticed at the next tick: every reader honours it, so must we.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent import log
from agent.errors import Interrupted
from agent.manifest import Manifest
from agent.modelview import ModelState
from agent.node.background import Background
from agent.node.models import Change, Entry, ModelTable
from agent.ops import verify
from agent.spec import ModelSpec
from agent.store import Store


@dataclass
class Check:
    """One periodic verification of a ready model, running in a background thread."""

    entry: Entry
    done: threading.Event = field(default_factory=threading.Event)
    manifest: Manifest | None = None
    changed: list[str] = field(default_factory=list)
    interrupted: bool = False
    started: float = field(default_factory=time.monotonic)


class Checks:
    """Every `interval()` seconds each ready model gets the fast check (0: never)."""

    def __init__(
        self,
        table: ModelTable,
        store: Store,
        *,
        interval: Callable[[], float],
        background: Background,
        stop: threading.Event,
        wake: threading.Event,
        logger: log.Logger,
    ) -> None:
        self._table = table
        self._store = store
        self._interval = interval
        self._background = background
        self._stop = stop
        self._wake = wake
        self._log = logger
        self._check: Check | None = None

    def start_due(self, now: float) -> None:
        """Start the check of one ready model that is due, if none runs."""
        interval = self._interval()
        if not interval or self._check is not None or self._stop.is_set():
            return
        for entry in self._table.entries():
            if entry.state is ModelState.READY and entry.job is None and now - entry.verified_at >= interval:
                check = Check(entry)
                self._table.checking(entry, True)
                self._check = check
                self._background.spawn(functools.partial(self._run, check), f"verify {entry.model.id}")
                return

    def _run(self, check: Check) -> None:
        """Background thread: the fast check of one ready model."""
        spec = check.entry.model.spec
        try:
            check.manifest = self._store.ready(spec)
            if check.manifest is not None:
                check.changed = self._changed_files(spec, check.manifest)
        except Interrupted:
            check.interrupted = True
        except Exception:  # a check must report, never kill its thread silently
            self._log.exception("verify_crashed", repo=spec.repo)
            check.interrupted = True
        finally:
            check.done.set()
            self._wake.set()

    def reap(self) -> None:
        """Apply a finished check: a sound model stays ready; a damaged one goes back to repair."""
        check = self._check
        if check is None or not check.done.is_set():
            return
        self._check = None
        entry, spec = check.entry, check.entry.model.spec
        m = None if check.changed else check.manifest
        bad: list[str] = []
        if m is None and not check.interrupted:
            marker = self._store.read_marker(spec)
            bad = self._store.fast_check(spec, marker) if marker else ["(completion marker)"]
            bad += check.changed
        self._table.checking(entry, False, interrupted=check.interrupted)
        # A reload may have replaced the record meanwhile, or its model changed state.
        if check.interrupted or not self._table.current(entry) or entry.state is not ModelState.READY:
            return
        seconds = round(time.monotonic() - check.started, 2)
        if m is not None:
            self._table.transition(entry, Change.VERIFIED, manifest=m, seconds=seconds)
        else:
            error = f"damaged: missing, wrong size or changed: {', '.join(bad[:5]) or '(pointer)'}"
            self._table.transition(entry, Change.DAMAGED, error=error, seconds=seconds)

    def notice_damage(self) -> None:
        """Take back the readiness of every ready model whose commit has a damage record."""
        for entry in self._table.entries():
            if entry.state is not ModelState.READY or entry.commit is None:
                continue
            found = self._store.damage(entry.model.spec, entry.commit)
            if found is not None:
                error = f"damaged: found by {found.found_by}: {', '.join(found.paths[:5]) or '(record)'}"
                self._table.transition(entry, Change.DAMAGED, error=error)

    def _changed_files(self, spec: ModelSpec, m: Manifest) -> list[str]:
        """Files modified since publish whose hash no longer matches, or that are not the manifest's.

        Sizes alone miss same-size damage; a later mtime is what a stat can still see, and only
        those files are re-hashed (as `preload verify` does). What is bad is recorded in the
        store, for every reader and for the repair. Skipped while another process holds the
        model's lock.
        """
        with self._store.lock(spec, deadline=0) as got:
            if not got:
                return []
            report = verify.verify(self._store, spec, cancel=self._stop)
            if report.commit != m.commit:
                return []
            if report.touched or not report.sound:
                # Intact: not re-hashed every interval. Damaged: not ready until repaired.
                verify.record(self._store, spec, report, found_by="agent")
            return sorted({*report.corrupt, *report.missing, *report.extra})
