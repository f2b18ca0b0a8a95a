"""A model on a shared volume (NFS/RWX, a PVC filled by a Job): the "hybrid" source.

Three kinds of directory are recognised, tried in this order for ORG/NAME:

1. a destination written by `preload` (its marker under ROOT/.preload/markers/): the
   manifest gives every hash (hash origin "manifest");
2. a hub cache, ROOT/models--ORG--NAME/{refs,snapshots,blobs}: blob names are the hashes
   (sha256 for LFS files, git blob sha1 otherwise; hash origin "hub-cache");
3. a plain directory ROOT/ORG/NAME/: hashes from the hub's tree listing when a hub is given
   and answers ("hub-listing"), else computed from the source ("source-computed").

The source is only ever read: files are opened read-only (without touching atime where the
kernel allows it), symlinks are followed only while they stay inside ROOT, and anything that
is not a regular file is refused before a byte is copied.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

from agent import log
from agent.errors import IntegrityError, NotFoundError, UsageError
from agent.integrity import SHA256, Digest, hash_file
from agent.manifest import RemoteFile
from agent.sources import kinds
from agent.sources.base import Snapshot, SourceFactory
from agent.sources.dirread import check_file, open_regular, read_blocks, walk
from agent.spec import ModelSpec
from agent.store import HfRepo, Store

# A directory read is one sequential stream per file: ranges would only make the engine
# re-read every byte from the page cache to hash it in order.
WHOLE_FILE_CHUNK = 1 << 62
HASH_WORKERS = 4

# The names other modules and tests know them by; the rules live in kinds.py.
ORIGIN_MANIFEST = kinds.ORIGIN_MANIFEST
ORIGIN_HUB_CACHE = kinds.ORIGIN_HUB_CACHE
ORIGIN_HUB_LISTING = kinds.ORIGIN_HUB_LISTING
ORIGIN_COMPUTED = kinds.ORIGIN_COMPUTED
COMPUTED_PREFIX = kinds.COMPUTED_PREFIX


def parse_location(name: str) -> Path:
    """A directory source given as a path or a file:// URL (other schemes are a usage error)."""
    if not name:
        raise UsageError("empty --source")
    if "://" in name:
        parts = urlsplit(name)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or parts.query:
            raise UsageError(
                f"unsupported --source {name!r}: use 'hf', a directory path or a file:///path URL"
            )
        name = unquote(parts.path)
        if not name:
            raise UsageError(f"--source {name!r} names no directory")
    return Path(name).expanduser()


class DirectorySource:
    """Reads a model from a local or network-mounted directory; never writes to it."""

    def __init__(self, root: Path, hub: SourceFactory | None = None, drop_cache: bool = False) -> None:
        self.root = Path(os.path.abspath(root))
        self.name = f"file://{self.root}"
        self._hub = hub
        self._drop_cache = drop_cache
        self._paths: dict[str, str] = {}
        self._log = log.get().bind(source=self.name)

    def close(self) -> None:
        """Nothing is held open between calls."""

    # -- listing -------------------------------------------------------------------

    def snapshot(self, spec: ModelSpec) -> Snapshot:
        """Find the model in one of the three kinds of directory and list it with expected hashes."""
        if not self.root.is_dir():
            raise NotFoundError(f"source directory {self.root} does not exist (not mounted?)")
        real_root = os.path.realpath(self.root)
        finders = (self._from_marker, self._from_hub_cache, self._from_plain)
        snap, self._paths = kinds.find(
            spec,
            (partial(f, real_root=real_root) for f in finders),
            self._log,
            "directory_source",
            str(self.root),
        )
        return replace(snap, chunk_size=WHOLE_FILE_CHUNK)

    def _from_marker(self, spec: ModelSpec, real_root: str) -> tuple[Snapshot, dict[str, str]] | None:
        store = Store(Path(real_root))
        for lspec in kinds.layouts_for(spec):
            m = store.read_marker(lspec)
            if m is None or not kinds.revision_matches(spec, m.revision, m.commit):
                continue
            paths = {}
            for p in store.placements(lspec, m.commit, m.files):
                paths[p.file.path] = check_file(real_root, str(p.final), p.file.path, p.file.size)
            return Snapshot(m.commit, m.files, self.name, None, kinds.manifest_origin(m)), paths
        return None

    def _from_hub_cache(self, spec: ModelSpec, real_root: str) -> tuple[Snapshot, dict[str, str]] | None:
        hf = HfRepo.at(Path(real_root), spec)
        if not hf.path.is_dir():
            return None
        commit = spec.revision if spec.pinned else kinds.parse_ref(_read_bytes(hf.ref(spec.revision)))
        if commit is None:
            raise NotFoundError(f"{spec.repo}@{spec.revision} is not in the hub cache at {self.root}")
        snap_dir = os.fspath(hf.snapshot(commit))
        if not os.path.isdir(snap_dir):
            raise NotFoundError(
                f"{spec.repo}: snapshot {commit[:12]} is missing from the hub cache at {self.root}"
            )
        tree = kinds.parse_tree(_read_bytes(hf.tree(commit)))
        entries = (
            (rel, os.stat(real).st_size, os.path.basename(real), real)
            for rel, real in walk(real_root, snap_dir)
        )
        return kinds.hub_cache_snapshot(spec, commit, entries, tree, self.name, str(self.root))

    def _from_plain(self, spec: ModelSpec, real_root: str) -> tuple[Snapshot, dict[str, str]] | None:
        model_dir = os.path.join(real_root, spec.org, spec.name)
        if not os.path.isdir(model_dir):
            return None
        paths = dict(walk(real_root, model_dir))
        sizes = {rel: os.stat(real).st_size for rel, real in paths.items()}

        def hashes(wanted: list[str]) -> tuple[RemoteFile, ...]:
            self._log.warning(
                "hashes_source_computed",
                repo=spec.repo,
                reason="no manifest, no hub cache and no hub listing: the copy is checked only against "
                "the source as it reads now",
            )
            return _hash_all(paths, wanted)

        where = f"{self.root}/{spec.repo}"
        return kinds.plain_snapshot(spec, sizes, self._hub, self._log, where, self.name, hashes), paths

    # -- reading -------------------------------------------------------------------

    @contextmanager
    def open_range(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Iterator[Iterator[memoryview]]:
        """Stream [start, end) of a source file with large sequential reads."""
        path = self._paths.get(file.path)
        if path is None:
            raise NotFoundError(f"{file.path} is not in {self.root}/{spec.repo}")
        fd = open_regular(path, file.path)
        try:
            if os.fstat(fd).st_size != file.size:
                raise IntegrityError(f"{path} changed size while being copied")
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_SEQUENTIAL)
            yield read_blocks(fd, path, start, end, self._drop_cache)
        finally:
            os.close(fd)


def _read_bytes(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)  # a ref or a tree listing; anything larger is not one
    except OSError:
        return None


def _hash_all(paths: dict[str, str], wanted: list[str]) -> tuple[RemoteFile, ...]:
    """sha256 of every wanted file, files in parallel (hashlib releases the GIL)."""

    def one(rel: str) -> RemoteFile:
        size = os.stat(paths[rel]).st_size
        return RemoteFile(rel, size, Digest(SHA256, hash_file(paths[rel], SHA256, size).hexdigest()))

    with ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="hash") as pool:
        return tuple(pool.map(one, wanted))
