"""Reconcile the model table with the config: models found on disk, added, changed and removed."""

from __future__ import annotations

from agent import log
from agent.modelview import ModelState
from agent.node.configwatch import LiveConfig
from agent.node.models import Change, Entry, ModelTable
from agent.node.workers import Workers
from agent.store import Store


class Reconciler:
    """Applies each valid change of the config file to the table and the running preloads."""

    def __init__(
        self, table: ModelTable, store: Store, live: LiveConfig, workers: Workers, logger: log.Logger
    ) -> None:
        self._table = table
        self._store = store
        self._live = live
        self._workers = workers
        self._log = logger

    def adopt_local(self) -> None:
        """At start: every model already complete on disk is ready at once."""
        for entry in self._table.entries():
            self._found(entry)

    def poll(self, now: float) -> None:
        """Apply the config file's change, if it changed and is valid."""
        config = self._live.poll(now)
        if config is None:
            return
        replaced = self._table.replace(config.models)
        # A model that left or changed: its transfer stops, its files stay for GC.
        for entry in replaced.retired:
            self._workers.retire(entry)
        self._live.accept(config)
        self._log.info(
            "config_reloaded",
            models=len(config.models),
            added=list(replaced.added),
            removed=list(replaced.removed),
        )
        for entry in self._table.entries():
            if entry.state is ModelState.PENDING and entry.job is None:
                self._found(entry)

    def _found(self, entry: Entry) -> None:
        """A model complete on disk is ready without asking any source."""
        m = self._store.ready(entry.model.spec)
        if m is not None:
            self._table.transition(entry, Change.FOUND, manifest=m)
