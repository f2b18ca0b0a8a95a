"""The peer port's index of ready models' files: rebuilt every few seconds, and soon after a miss
(a model that has just become ready must not be "not here" to its peers for long)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.node import peerserve
from agent.node.peerserve import PublishedIndex
from agent.spec import ModelSpec

SPEC = ModelSpec("org/name")


class Store:
    """Stands in for agent.store.Store's one method the index reads (counted)."""

    def __init__(self) -> None:
        self.scans = 0

    def published_files(self, spec: ModelSpec) -> dict[str, Path]:
        self.scans += 1
        return {"ab" * 32: Path("/cache/org/name/w.bin")}


def test_a_model_just_ready_is_found_within_the_miss_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(peerserve.time, "monotonic", lambda: now[0])
    ready: list[ModelSpec] = []
    store = Store()
    index = PublishedIndex(lambda: list(ready), store)  # type: ignore[arg-type]
    assert index.find("ab" * 32) is None  # nothing ready yet
    ready.append(SPEC)
    now[0] += 0.1
    assert index.find("ab" * 32) is None  # a miss rebuilds at most every MISS_TTL
    now[0] += PublishedIndex.MISS_TTL
    assert index.find("ab" * 32) == Path("/cache/org/name/w.bin")  # well before TTL
    scans = store.scans
    now[0] += 1.0
    assert index.find("ab" * 32) is not None and store.scans == scans  # hits use the index
    now[0] += PublishedIndex.TTL
    index.find("ab" * 32)
    assert store.scans == scans + 1  # ... until it is TTL old
