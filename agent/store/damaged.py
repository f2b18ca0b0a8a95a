"""What a check found bad, kept until a repair: DIR/.preload/damaged/<layout>/ORG/NAME/<commit>.json.

Sizes and modification times cannot show a same-size change made behind our back; only a re-hash
can, and a re-hash is too slow for every reader to repeat. So a check that finds a commit's
files bad writes that down here, and the store's readiness check (`Store.ready`) treats a commit
with a record as not ready, for every reader, until a repair clears it.

A repair clears a record only after the files it names are gone for good (see
`Store.drop_damaged`): at every moment either the record or the absence of the files keeps the
model from being reported ready, so a crash in between cannot bring the damage back as ready.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

from agent.spec import ModelSpec
from agent.store.fs import atomic_write, fsync_dir
from agent.store.paths import CachePaths


@dataclass(frozen=True)
class Damage:
    """The bad files of one published commit: the manifest's own, and files it does not list."""

    commit: str
    files: tuple[str, ...]  # listed files found corrupt or missing
    extra: tuple[str, ...]  # files in the revision's folder that its manifest does not list
    found_by: str  # which check: "verify", "verify --deep", "agent"
    at: float
    # The record exists but cannot be read: every file of the commit is suspect.
    everything: bool = False

    @property
    def paths(self) -> tuple[str, ...]:
        """Every bad name, for messages."""
        return tuple(sorted({*self.files, *self.extra}))

    def condemns(self, path: str) -> bool:
        """Whether a listed file of the commit is to be refetched."""
        return self.everything or path in self.files


def record(paths: CachePaths, spec: ModelSpec, damage: Damage) -> None:
    """Write (or widen) the record of a commit durably; raises OSError where DIR is read-only."""
    old = read(paths, spec, damage.commit)
    if old is not None:  # a second finding adds to the first: neither may be forgotten
        damage = Damage(
            damage.commit,
            tuple(sorted({*old.files, *damage.files})),
            tuple(sorted({*old.extra, *damage.extra})),
            damage.found_by,
            damage.at,
        )
    doc = {
        "commit": damage.commit,
        "files": list(damage.files),
        "extra": list(damage.extra),
        "found_by": damage.found_by,
        "at": damage.at,
    }
    atomic_write(paths.damaged(spec, damage.commit), json.dumps(doc, indent=1).encode())


def read(paths: CachePaths, spec: ModelSpec, commit: str) -> Damage | None:
    """The record of one commit. One that cannot be read or parsed still says "damaged": a
    record is only ever written whole (atomic_write), so a torn one is no reason to trust the files."""
    path = paths.damaged(spec, commit)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return Damage(commit, (), (), "(unreadable record)", 0.0, everything=True)
    try:
        doc = json.loads(data)
        return Damage(
            commit,
            tuple(str(p) for p in doc["files"]),
            tuple(str(p) for p in doc["extra"]),
            str(doc["found_by"]),
            float(doc["at"]),
        )
    except (ValueError, KeyError, TypeError):
        return Damage(commit, (), (), "(malformed record)", 0.0, everything=True)


def commits(paths: CachePaths, spec: ModelSpec) -> list[str]:
    """Every commit of a model with a record."""
    return [p.stem for p in paths.damaged_files(spec)]


def clear(paths: CachePaths, spec: ModelSpec, commit: str) -> None:
    """Remove a record durably (the caller has made sure its files are gone)."""
    path = paths.damaged(spec, commit)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)
