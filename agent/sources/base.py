"""The seam between the engine and the places model files come from: the `Source` protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from agent.manifest import RemoteFile
from agent.spec import ModelSpec

Block = bytes | memoryview


@dataclass(frozen=True)
class Snapshot:
    """A resolved revision: its commit and every file with size and expected hash."""

    commit: str
    files: tuple[RemoteFile, ...]
    source: str
    endpoint: str | None = None
    hash_origin: str = "source"
    chunk_size: int | None = None  # the source's preferred range size; None: the caller's


class Source(Protocol):
    """A place that can list a model's files and stream byte ranges of them."""

    name: str

    def snapshot(self, spec: ModelSpec) -> Snapshot:
        """Resolve the spec's revision and list its files."""
        ...

    def open_range(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> AbstractContextManager[Iterator[Block]]:
        """Stream bytes [start, end) of `file`; raise TransientError for retryable trouble.

        A yielded block is valid only until the next one is asked for (sources may reuse buffers).
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


SourceFactory = Callable[[], Source]


@runtime_checkable
class Layered(Protocol):
    """A source in front of another (peers in front of the origin)."""

    origin: Source


@runtime_checkable
class HashFeedback(Protocol):
    """A source that wants to know when bytes it sent failed their hash."""

    def hash_failed(self, file: RemoteFile, part: Path) -> None:
        """`file` failed its hash; `part` still holds the bytes received (deleted after this)."""
        ...


@runtime_checkable
class ByteCounting(Protocol):
    """A source that can say where the bytes it streamed came from (for the final line)."""

    def bytes_by_source(self) -> dict[str, int]: ...
