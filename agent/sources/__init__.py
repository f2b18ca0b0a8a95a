"""Where model files come from. The transfer engine sees only the `Source` protocol."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from agent.manifest import RemoteFile
from agent.spec import ModelSpec


@dataclass(frozen=True)
class Snapshot:
    """A resolved revision: its commit and every file with size and expected hash."""

    commit: str
    files: tuple[RemoteFile, ...]
    source: str
    endpoint: str | None = None
    hash_origin: str = "source"


class Source(Protocol):
    """A place that can list a model's files and stream byte ranges of them."""

    name: str

    def snapshot(self, spec: ModelSpec) -> Snapshot:
        """Resolve the spec's revision and list its files."""
        ...

    def open_range(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> AbstractContextManager[Iterator[bytes]]:
        """Stream bytes [start, end) of `file`; raise TransientError for retryable trouble."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
