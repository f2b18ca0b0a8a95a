"""The agent's config file: loaded at start, polled for changes, the last good one kept in force."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

from agent import log
from agent.modelview import ConfigView
from agent.node import metrics
from agent.node.config import AgentConfig, ConfigError, load, parse
from agent.units import iso_seconds

CONFIG_POLL = 1.0


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


class LiveConfig:
    """The config in force, and the last rejected change of its file.

    Loading raises ConfigError (at start an invalid file stops the agent); later, `poll` returns
    each valid change for the caller to apply with `accept`, and an invalid one changes nothing.
    """

    def __init__(self, path: Path, max_concurrent: int | None, logger: log.Logger) -> None:
        self.path = path
        self._max_override = max_concurrent
        self._log = logger
        self._watch = ConfigWatch(path)
        # Remember the file before loading it: a change in between is then seen by the first poll
        # (at worst one reload of what was loaded), where the other order would miss it.
        with contextlib.suppress(OSError):  # load() reports an unreadable file
            self._watch.read()
        self.current: AgentConfig = load(path)
        self.loaded_at = time.time()
        self.reload_error: str | None = None
        self._next_poll = 0.0

    @property
    def max_concurrent(self) -> int:
        """Preloads allowed at once: the command line wins over the config."""
        return self._max_override or self.current.max_concurrent

    def poll(self, now: float) -> AgentConfig | None:
        """A valid new config if the file changed (checked every CONFIG_POLL seconds), else None.

        Every rejected change is counted and reported; an unreadable file is one error until it is
        readable again (not one per poll), and then counts as changed, so that whatever it now
        holds is parsed and reported afresh.
        """
        if now < self._next_poll:
            return None
        self._next_poll = now + CONFIG_POLL
        try:
            data = self._watch.changed()
        except OSError as exc:
            self._watch.forget()
            self._reject(f"cannot read config: {exc}", repeated=self.reload_error)
            return None
        if data is None:
            return None
        try:
            return parse(data, str(self.path))
        except ConfigError as exc:
            self._reject(str(exc))
            return None

    def accept(self, config: AgentConfig) -> None:
        """`config` is in force from now on."""
        self.current = config
        self.loaded_at = time.time()
        self.reload_error = None

    def view(self) -> ConfigView:
        """Where the config came from and whether the last change to it was rejected."""
        return ConfigView(
            path=str(self.path),
            loaded_at=iso_seconds(self.loaded_at),
            reload_error=self.reload_error,
            max_concurrent=self.max_concurrent,
        )

    def _reject(self, message: str, repeated: str | None = None) -> None:
        if message != repeated:
            metrics.CONFIG_RELOAD_ERRORS.inc()
            self._log.error("config_reload_failed", error=message, kept="last good config")
        self.reload_error = message
