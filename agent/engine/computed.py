"""Files whose sha256 nobody knows before the copy: hashed while they are copied, then placed.

A source with no expected hash for a file (plain objects in a bucket, no hub listing, no stored
checksum) lists it with a pending digest (integrity.PENDING_SHA256). Where the store puts a file
depends on its hash (hub-cache blobs) and on the commit, here a content id of every hash, so
such a snapshot is copied in two steps: the transfer commits each file into the model's staging
folder, hashing it as its bytes arrive as for any other file (one read of the source); then
`settle` puts the hashes in, and renames each file to its place. A resumed run finds the files
already committed in staging with the hashes they had.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from agent.engine.plan import group, present
from agent.errors import PreloadError
from agent.integrity import PENDING_SHA256, SHA256, Digest, hash_file
from agent.manifest import RemoteFile
from agent.sources.base import Snapshot
from agent.sources.kinds import content_id
from agent.spec import ModelSpec
from agent.store import Placement, Store
from agent.store.fs import PendingDirs, make_dirs
from agent.store.ingest import computed_digest, link

STAGED = "computed"  # the folder in a model's staging folder that holds hashed, unplaced files


def pending(snap: Snapshot) -> bool:
    """Whether some file's hash is only known once it has been copied."""
    return any(f.digest.algo == PENDING_SHA256 for f in snap.files)


def staged(store: Store, spec: ModelSpec, snap: Snapshot) -> list[Placement]:
    """Where the transfer commits each file of a pending snapshot: one staging path per file."""
    base = store.staging_dir(spec)
    return [
        Placement(f, base / STAGED / f"{f.digest.hex}", base / f"{f.digest.hex}.part") for f in snap.files
    ]


def settle(store: Store, spec: ModelSpec, snap: Snapshot) -> Snapshot:
    """The snapshot with every file's computed hash and its content id as the commit, once each
    staged file is in its place (renamed, linked where content repeats; directories synced)."""
    files: list[RemoteFile] = []
    staged_at: dict[str, Path] = {}  # hash -> a staged file with those bytes
    for p in staged(store, spec, snap):
        digest = p.file.digest
        if digest.algo == PENDING_SHA256:
            # The hash the commit recorded; if a crash lost it, the file's own (local) bytes.
            digest = computed_digest(p.final) or Digest(
                SHA256, hash_file(p.final, SHA256, p.file.size).hexdigest()
            )
        files.append(replace(p.file, digest=digest))
        staged_at.setdefault(digest.hex, p.final)
    done = replace(snap, commit=content_id(tuple(files)), files=tuple(files))
    dirs = PendingDirs()
    for members in group(store.placements(spec, done.commit, done.files)).values():
        have = next((p.final for p in members if present(p)), None)
        if have is None:
            have = members[0].final
            dirs.add(*make_dirs(have.parent))
            try:
                os.replace(staged_at[members[0].file.digest.hex], have)
            except OSError as exc:
                raise PreloadError(f"cannot place {members[0].file.path} at {have}: {exc.strerror}") from exc
            dirs.add(have.parent)
        for p in members:
            if not present(p):
                link(have, p.final, dirs)
    dirs.sync()
    return done
