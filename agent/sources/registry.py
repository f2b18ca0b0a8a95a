"""Source names as users write them (`hf`, a directory, `file://`) -> source factories, in order."""

from __future__ import annotations

from collections.abc import Sequence

from agent.sources.base import SourceFactory
from agent.sources.directory import DirectorySource, parse_location

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
        root = parse_location(name)
        lister = hub if HUB in names else None
        out.append(lambda root=root, lister=lister: DirectorySource(root, lister, drop_cache))  # type: ignore[misc]
    return out
