"""What `verify` leaves for `status`: DIR/.preload/verified/<layout>/ORG/NAME.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agent.spec import ModelSpec
from agent.store.fs import atomic_write
from agent.store.paths import CachePaths


@dataclass(frozen=True)
class LastVerified:
    """The last verification of a model: which commit, when, how thoroughly, and the verdict."""

    commit: str
    at: float
    deep: bool
    sound: bool


def record(root: Path, spec: ModelSpec, last: LastVerified) -> None:
    """Remember a verification (raises OSError where DIR is not writable)."""
    doc = {"commit": last.commit, "at": last.at, "deep": last.deep, "sound": last.sound}
    atomic_write(CachePaths(root).verified(spec), json.dumps(doc).encode())


def last_verified(root: Path, spec: ModelSpec) -> LastVerified | None:
    """The last verification of this model, if recorded and well-formed."""
    try:
        doc = json.loads(CachePaths(root).verified(spec).read_bytes())
        return LastVerified(str(doc["commit"]), float(doc["at"]), bool(doc["deep"]), bool(doc["sound"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
