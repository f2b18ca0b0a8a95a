"""What to fetch and where: the selection, identical content grouped, what is already in place,
and the bytes still to write (for the free-space check)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from agent.errors import UsageError
from agent.manifest import Manifest, RemoteFile
from agent.sources.base import Snapshot
from agent.spec import ModelSpec
from agent.store import Placement, Store


def plan(
    spec: ModelSpec, store: Store, listing: Snapshot
) -> tuple[Snapshot, tuple[RemoteFile, ...], list[Placement]]:
    """What to fetch given the marker as it is now, and where: selection, placements, and the
    free-space check (which raises before anything is written)."""
    snap, skipped = select(spec, listing, store.read_marker(spec))
    placements = store.placements(spec, snap.commit, snap.files)
    store.check_space(pending_bytes(placements, store.published_files(spec)))
    return snap, skipped, placements


def select(
    spec: ModelSpec, snap: Snapshot, current: Manifest | None
) -> tuple[Snapshot, tuple[RemoteFile, ...]]:
    """The snapshot narrowed to the files to publish, and the listed files left out.

    Files an earlier run already published for the same commit stay in (another pod may have
    asked for them with another selection), so one run never takes files from another.
    """
    wanted = set(spec.files.select(f.path for f in snap.files))
    if not wanted:
        raise UsageError(f"no files of {spec.repo}@{snap.commit[:12]} match the include/exclude filters")
    if current is not None and current.commit == snap.commit:
        wanted |= {f.path for f in current.files}
    files = tuple(f for f in snap.files if f.path in wanted)
    return replace(snap, files=files), tuple(f for f in snap.files if f.path not in wanted)


def group(placements: Iterable[Placement]) -> dict[Path, list[Placement]]:
    """Placements by staging path: identical content is fetched once."""
    groups: dict[Path, list[Placement]] = defaultdict(list)
    for p in placements:
        groups[p.part].append(p)
    return groups


def present(p: Placement) -> bool:
    """The file is in its final place (a final path only ever holds verified content)."""
    try:
        return p.final.stat().st_size == p.file.size
    except OSError:
        return False


def same_size(path: Path | None, size: int) -> Path | None:
    """`path` if it is a file of `size` bytes."""
    try:
        return path if path is not None and path.stat().st_size == size else None
    except OSError:
        return None


def pending_bytes(placements: Iterable[Placement], reuse: Mapping[str, Path] | None = None) -> int:
    """Bytes still to be written to disk, counting space already allocated to partial files;
    files in `reuse` (see `Transfer.run`) are hard-linked and cost nothing."""
    total = 0
    for part, members in group(placements).items():
        if any(present(p) for p in members):
            continue
        if reuse and same_size(reuse.get(members[0].file.digest.hex), members[0].file.size):
            continue
        size = members[0].file.size
        try:
            allocated = part.stat().st_blocks * 512
        except OSError:
            allocated = 0
        total += max(0, size - allocated)
    return total
