"""Where model files come from. The transfer engine sees only the `Source` protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

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
HUB = "hf"


def factories(names: Sequence[str], hub: SourceFactory, drop_cache: bool = False) -> list[SourceFactory]:
    """Source factories in the order given: "hf" is the hub, anything else a directory.

    A directory may ask the hub for expected hashes, but only when "hf" is one of the sources:
    a user who left it out may well be offline.
    """
    out: list[SourceFactory] = []
    names = names or (HUB,)
    for name in names:
        if name == HUB:
            out.append(hub)
            continue
        from agent.sources.directory import DirectorySource, parse_location

        root = parse_location(name)
        lister = hub if HUB in names else None
        out.append(lambda root=root, lister=lister: DirectorySource(root, lister, drop_cache))  # type: ignore[misc]
    return out
