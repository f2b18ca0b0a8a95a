"""An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, SeaweedFS, R2, GCS's S3 API) as a Source.

`s3://BUCKET/PREFIX` is read like a directory source whose root is PREFIX: a tree pushed by
`preload push` (its manifest under PREFIX/.preload/markers/, the store's own names), a hub
cache (PREFIX/models--ORG--NAME/), or plain objects under PREFIX/ORG/NAME/ (hashes from the
hub's listing when `hf` is also a source, else from each object's full-object
x-amz-checksum-sha256, else computed during the copy: "source-computed"). kinds.py holds the
rules all sources share; s3api.py the botocore client (listing, small reads, signing);
s3read.py the body reads (presigned URLs, ranged GETs into the engine).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from agent import log
from agent.errors import IntegrityError, NotFoundError
from agent.integrity import PENDING_SHA256, Digest, safe_relpath
from agent.manifest import RemoteFile
from agent.sources import kinds
from agent.sources.base import Block, Snapshot, SourceFactory
from agent.sources.s3api import S3Api, full_object_sha256
from agent.sources.s3loc import S3Location
from agent.sources.s3read import S3BodyReader
from agent.spec import ModelSpec

HEAD_WORKERS = 16
Objects = dict[str, tuple[int, str]]  # name -> (size, ETag)


class S3Source:
    """Reads a model from a bucket; never writes to it."""

    def __init__(
        self,
        loc: S3Location,
        hub: SourceFactory | None = None,
        *,
        max_workers: int = 16,
        read_timeout: float = 30.0,
    ) -> None:
        self.loc = loc
        self.name = loc.url
        self._hub = hub
        self._max_workers = max_workers
        self._read_timeout = read_timeout
        self._api: S3Api | None = None
        self.bodies = S3BodyReader(loc, lambda: self.api, read_timeout)
        self._keys: dict[str, str] = {}  # file path -> name relative to the prefix
        self._log = log.get().bind(source=self.name)

    @property
    def api(self) -> S3Api:
        """The client, made on first use (a source that is never asked costs nothing)."""
        if self._api is None:
            self._api = S3Api(self.loc, max_connections=self._max_workers, read_timeout=self._read_timeout)
        return self._api

    def close(self) -> None:
        """Close the client and pooled body connections."""
        if self._api is not None:
            self._api.close()
        self.bodies.close()

    # -- listing -------------------------------------------------------------------

    def snapshot(self, spec: ModelSpec) -> Snapshot:
        """Find the model in one of the three kinds of tree and list it with expected hashes."""
        finders = (self._from_marker, self._from_hub_cache, self._from_plain)
        snap, self._keys = kinds.find(spec, finders, self._log, "bucket_source", self.name)
        return snap

    def _from_marker(self, spec: ModelSpec) -> kinds.Found | None:
        for lspec in kinds.layouts_for(spec):
            for name in kinds.marker_names(lspec):
                m = kinds.manifest_for(lspec, self.api.get_small(name) or b"")
                if m is None:
                    continue
                keys = kinds.file_names(lspec, m.commit, m.files)
                self._check_present(spec, keys, {f.path: f.size for f in m.files})
                return Snapshot(m.commit, m.files, self.name, None, kinds.manifest_origin(m)), keys
        return None

    def _check_present(self, spec: ModelSpec, keys: Mapping[str, str], sizes: Mapping[str, int]) -> None:
        """Every file a manifest lists is an object of its size (one listing per folder)."""
        folders: dict[str, Objects] = {}
        for path, rel in keys.items():
            folder, _, name = rel.rpartition("/")
            if folder not in folders:
                folders[folder] = self.api.list(folder)
            found = folders[folder].get(name)
            if found is None:
                raise NotFoundError(f"{self.name}: {spec.repo} is incomplete: {path!r} is missing")
            if found[0] != sizes[path]:
                raise IntegrityError(
                    f"{self.name}: {spec.repo}/{path} has {found[0]} bytes, its manifest says {sizes[path]}"
                )

    def _from_hub_cache(self, spec: ModelSpec) -> kinds.Found | None:
        repo_dir = kinds.hub_cache_dir(spec)
        objects = self.api.list(repo_dir)
        if not objects:
            return None
        ref, _, _, _ = kinds.hub_cache_names(spec, spec.revision, "0" * 40)
        commit = spec.revision if spec.pinned else kinds.parse_ref(self.api.get_small(ref))
        if commit is None:
            raise NotFoundError(f"{spec.repo}@{spec.revision} is not in the hub cache at {self.name}")
        _, snap_dir, tree_name, blobs_dir = kinds.hub_cache_names(spec, spec.revision, commit)
        inside = len(repo_dir) + 1

        def under(folder: str) -> Objects:
            head = folder[inside:] + "/"
            return {k[len(head) :]: v for k, v in objects.items() if k.startswith(head)}

        snap_objects = under(snap_dir)
        if not snap_objects:
            raise NotFoundError(
                f"{spec.repo}: snapshot {commit[:12]} is missing from the hub cache at {self.name}"
            )
        tree = kinds.parse_tree(self.api.get_small(tree_name)) if tree_name[inside:] in objects else {}
        # A bucket has no symlinks: a hub cache copied into one (aws s3 sync) holds each snapshot
        # file as a copy of its blob. The blob is found by size and ETag, which two uploads of the
        # same bytes made the same way share; a wrong match only fails verification.
        by_content: dict[tuple[int, str], set[str]] = {}
        for name, meta in under(blobs_dir).items():
            by_content.setdefault(meta, set()).add(name)

        def blob(meta: tuple[int, str]) -> str:
            blobs = by_content.get(meta, set())
            return next(iter(blobs)) if len(blobs) == 1 else ""

        entries = (
            (safe_relpath(rel), meta[0], blob(meta), f"{snap_dir}/{rel}")
            for rel, meta in sorted(snap_objects.items())
        )
        return kinds.hub_cache_snapshot(spec, commit, entries, tree, self.name, self.name)

    def _from_plain(self, spec: ModelSpec) -> kinds.Found | None:
        model_dir = spec.repo
        objects = {rel: meta for rel, meta in self.api.list(model_dir).items() if not kinds.is_metadata(rel)}
        if not objects:
            return None
        for rel in objects:
            safe_relpath(rel)  # hostile keys ("..", absolute, NUL) fail the source here
            head = rel
            while "/" in head:
                head = head.rsplit("/", 1)[0]
                if head in objects:
                    raise IntegrityError(f"{self.name}/{spec.repo}: {head!r} is both an object and a folder")
        keys = {rel: f"{model_dir}/{rel}" for rel in objects}
        sizes = {rel: meta[0] for rel, meta in objects.items()}

        def hashes(wanted: list[str]) -> tuple[RemoteFile, ...]:
            return self._object_hashes(spec, wanted, objects, keys)

        where = f"{self.name}/{spec.repo}"
        return kinds.plain_snapshot(spec, sizes, self._hub, self._log, where, self.name, hashes), keys

    def _object_hashes(
        self,
        spec: ModelSpec,
        wanted: list[str],
        objects: Mapping[str, tuple[int, str]],
        keys: Mapping[str, str],
    ) -> tuple[RemoteFile, ...]:
        """sha256 of every wanted object: the store's full-object checksum where it kept one (no
        read), else one to compute during the copy (a pending digest, see integrity.py). Either
        vouches only for the bucket as it stands, so both are recorded as source-computed."""

        def stored(rel: str) -> Digest | None:
            head = self.api.head(keys[rel], checksums=True)
            return full_object_sha256(head) if head is not None else None

        with ThreadPoolExecutor(min(HEAD_WORKERS, self._max_workers), thread_name_prefix="s3-head") as pool:
            digests = dict(zip(wanted, pool.map(stored, wanted), strict=True))
        pending = [rel for rel in wanted if digests[rel] is None]
        self._log.warning(
            "hashes_source_computed",
            repo=spec.repo,
            from_checksums=len(wanted) - len(pending),
            hashed_during_copy=len(pending),
            reason="no manifest, no hub cache and no hub listing: the copy is checked only against "
            "the bucket as it reads now",
        )
        for rel in pending:
            digests[rel] = _pending_digest(self.loc, keys[rel], objects[rel])
        return tuple(RemoteFile(rel, objects[rel][0], d) for rel in wanted if (d := digests[rel]) is not None)

    # -- reading -------------------------------------------------------------------

    @contextmanager
    def open_range(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Iterator[Iterator[Block]]:
        """Stream [start, end) of an object with one ranged GET, read into a reused buffer."""
        rel = self._keys.get(file.path)
        if rel is None:
            raise NotFoundError(f"{file.path} is not in {self.name}/{spec.repo}")
        with self.bodies.read(rel, file.size, start, end) as blocks:
            yield blocks


def _pending_digest(loc: S3Location, rel: str, meta: tuple[int, str]) -> Digest:
    """A stand-in for an object's sha256 until the copy computes it: the same object (key, size,
    ETag) gets the same one, so a resumed copy finds its partial file; a rewritten object a new one."""
    ident = f"{loc.bucket}\0{loc.key(rel)}\0{meta[0]}\0{meta[1]}".encode()
    return Digest(PENDING_SHA256, hashlib.sha256(ident).hexdigest())
