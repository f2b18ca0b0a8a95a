"""Recognising a model in a tree someone else wrote, wherever the tree lives (a directory, a bucket).

Both the directory source and the bucket source accept the same three kinds of tree under a
root, tried in this order: a destination written by `preload` (its manifest gives every hash),
a hub cache (blob names are the hashes), plain files (hashes from the hub's listing, else
computed from the source). What depends only on bytes and names, not on how the tree is read,
lives here, so both sources recognise the same trees by the same rules.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from agent import log
from agent.errors import IntegrityError, NotFoundError, PreloadError
from agent.integrity import GIT_SHA1, SHA256, Digest
from agent.manifest import Manifest, RemoteFile
from agent.sources.base import Snapshot, SourceFactory
from agent.spec import COMMIT_RE, Layout, ModelSpec
from agent.store import STATE, HfRepo, Store

ORIGIN_MANIFEST = "manifest"
ORIGIN_HUB_CACHE = "hub-cache"
ORIGIN_HUB_LISTING = "hub-listing"
ORIGIN_COMPUTED = "source-computed"
COMPUTED_PREFIX = "local-"

# Metadata that tools leave next to a model's files, never part of it.
SKIP_DIRS = frozenset({".git", STATE})
SKIP_PATHS = frozenset({".cache/huggingface"})

# The store's own names, relative to a root: a tree in a bucket mirrors a DIR key for path.
_RELATIVE = Store(Path())

# A snapshot found in a tree, with where each file's bytes are (a real path, an object name).
Found = tuple[Snapshot, dict[str, str]]
Finder = Callable[[ModelSpec], Found | None]


def find(spec: ModelSpec, finders: Iterable[Finder], logger: log.Logger, event: str, where: str) -> Found:
    """The first kind of tree that holds `spec` (finders in the order of the module docstring),
    logged as `event`; NotFoundError when none does."""
    for finder in finders:
        found = finder(spec)
        if found is not None:
            snap = found[0]
            logger.info(
                event, repo=spec.repo, commit=snap.commit, hash_origin=snap.hash_origin, files=len(snap.files)
            )
            return found
    raise NotFoundError(f"{spec.repo} is not in {where} (no preload marker, hub cache or {spec.repo}/ files)")


def is_metadata(rel: str) -> bool:
    """Whether a relative path inside a plain model folder is tool metadata, not a model file."""
    return any(p in SKIP_DIRS for p in rel.split("/")) or any(
        rel == s or rel.startswith(s + "/") for s in SKIP_PATHS
    )


def layouts_for(spec: ModelSpec) -> Iterator[ModelSpec]:
    """The spec in every layout, the requested one first: its files are then laid out exactly as
    we will write them."""
    for layout in (spec.layout, *(la for la in Layout if la is not spec.layout)):
        yield replace(spec, layout=layout)


def marker_names(spec: ModelSpec) -> list[str]:
    """Relative names of the markers that may describe `spec` in a tree written by preload (or
    pushed by it): for a pinned commit its own marker first, then the current one."""
    names = [commit_marker_name(spec, spec.revision)] if spec.pinned else []
    return [*names, current_marker_name(spec)]


def current_marker_name(spec: ModelSpec) -> str:
    """Relative name of the marker of a model's current revision."""
    return _RELATIVE.marker_path(spec).as_posix()


def commit_marker_name(spec: ModelSpec, commit: str) -> str:
    """Relative name of the marker of one complete revision that is not the current one."""
    return _RELATIVE.other_marker_path(spec, commit).as_posix()


def file_names(spec: ModelSpec, commit: str, files: Iterable[RemoteFile]) -> dict[str, str]:
    """Each file's relative name (where the store commits its bytes) in a tree written by preload."""
    return {p.file.path: p.final.as_posix() for p in _RELATIVE.placements(spec, commit, tuple(files))}


def manifest_for(spec: ModelSpec, data: bytes) -> Manifest | None:
    """The manifest in `data` if it parses, speaks for this repo and layout, and names the revision
    asked for (the store's markers.read rules, for a marker read from anywhere)."""
    try:
        m = Manifest.from_json(data)
    except IntegrityError:
        return None
    if m.repo != spec.repo or m.layout != spec.layout.value:
        return None
    return m if revision_matches(spec, m.revision, m.commit) else None


def manifest_origin(m: Manifest) -> str:
    """The hash origin a copy of a preload tree inherits: its manifest's, or `manifest`."""
    return ORIGIN_COMPUTED if m.hash_origin == ORIGIN_COMPUTED else ORIGIN_MANIFEST


def revision_matches(spec: ModelSpec, revision: str, commit: str) -> bool:
    """A pinned spec asks for the commit, any other for the revision it was resolved from."""
    return commit == spec.revision if spec.pinned else revision == spec.revision


def hub_cache_dir(spec: ModelSpec) -> str:
    """models--ORG--NAME, relative to a hub cache's root."""
    return HfRepo.at(Path(), spec).path.as_posix()


def hub_cache_names(spec: ModelSpec, revision: str, commit: str) -> tuple[str, str, str, str]:
    """Relative names in a hub cache: (ref of `revision`, snapshot folder and tree listing of
    `commit`, blobs folder)."""
    hf = HfRepo.at(Path(), spec)
    return (
        hf.ref(revision).as_posix(),
        hf.snapshot(commit).as_posix(),
        hf.tree(commit).as_posix(),
        hf.blobs.as_posix(),
    )


def parse_ref(data: bytes | None) -> str | None:
    """The commit a hub cache's refs/<revision> file holds, if it holds one."""
    if data is None:
        return None
    try:
        commit = data.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return commit if COMMIT_RE.match(commit) else None


def parse_tree(data: bytes | None) -> dict[str, dict[str, Any]]:
    """Our own hf-cache layout records each file's hashes in trees/<commit>.json."""
    if data is None:
        return {}
    try:
        files = json.loads(data).get("files", {})
    except (ValueError, AttributeError, RecursionError):
        return {}
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, dict)}


def digest_from_tree(entry: Mapping[str, Any] | None) -> Digest | None:
    """A file's expected hash from its trees/<commit>.json entry."""
    if not entry:
        return None
    with contextlib.suppress(IntegrityError, TypeError):
        if entry.get("lfs_sha256"):
            return Digest(SHA256, entry["lfs_sha256"])
        return Digest(GIT_SHA1, entry["blob_id"])
    return None


def digest_from_blob_name(name: str) -> Digest | None:
    """The hub client names blobs by LFS sha256 (64 hex) or git blob sha1 (40 hex)."""
    algo = {64: SHA256, 40: GIT_SHA1}.get(len(name))
    if algo is None:
        return None
    try:
        return Digest(algo, name)
    except IntegrityError:
        return None


def hub_cache_file(rel: str, size: int, tree: Mapping[str, dict[str, Any]], blob: str) -> RemoteFile | None:
    """A snapshot file with its expected hash (from the tree listing, else its blob's name), or
    None when neither names a hash."""
    digest = digest_from_tree(tree.get(rel)) or digest_from_blob_name(PurePosixPath(blob).name)
    if digest is None:
        return None
    blob_id = tree.get(rel, {}).get("blob_id") if digest.algo == SHA256 else None
    return RemoteFile(rel, size, digest, blob_id if isinstance(blob_id, str) else None)


def hub_listing(hub: SourceFactory | None, spec: ModelSpec, logger: log.Logger) -> Snapshot | None:
    """The hub's listing of `spec`, or None when no hub is a source or it does not answer."""
    if hub is None:
        return None
    source = hub()
    try:
        return source.snapshot(spec)
    except PreloadError as exc:
        logger.warning("hub_listing_unavailable", repo=spec.repo, error=str(exc))
        return None
    finally:
        source.close()


def checked_against(
    spec: ModelSpec, listed: Snapshot, sizes: Mapping[str, int], where: str, name: str
) -> Snapshot:
    """The hub's listing as this source's snapshot, once every selected file is in the source
    (`sizes`: relative path -> size) with the listed size."""
    wanted = spec.files.select(f.path for f in listed.files)
    by_path = {f.path: f for f in listed.files}
    missing = [p for p in wanted if p not in sizes]
    if missing:
        raise NotFoundError(
            f"{where} lacks {len(missing)} file(s) of commit {listed.commit[:12]}, e.g. {missing[0]!r}"
        )
    for p in wanted:
        if sizes[p] != by_path[p].size:
            raise IntegrityError(f"{where}/{p} has {sizes[p]} bytes, the hub lists {by_path[p].size}")
    return Snapshot(listed.commit, listed.files, name, listed.endpoint, ORIGIN_HUB_LISTING)


def hub_cache_snapshot(
    spec: ModelSpec,
    commit: str,
    entries: Iterable[tuple[str, int, str, str]],
    tree: Mapping[str, dict[str, Any]],
    name: str,
    where: str,
) -> Found:
    """A hub cache's snapshot of `commit` from its files as (path, size, blob name, where the
    bytes are), each with the hash its tree listing or blob name gives; a file with neither fails
    the source (its hash is unknown)."""
    files: list[RemoteFile] = []
    located: dict[str, str] = {}
    unknown: list[str] = []
    for rel, size, blob, at in entries:
        rf = hub_cache_file(rel, size, tree, blob)
        if rf is None:
            unknown.append(rel)
            continue
        files.append(rf)
        located[rel] = at
    if unknown:
        raise IntegrityError(
            f"hub cache {where}: {len(unknown)} file(s) of {spec.repo} are no blob (e.g. {unknown[0]!r}), "
            "so their hashes are unknown"
        )
    if not files:
        raise NotFoundError(f"{spec.repo}: snapshot {commit[:12]} in {where} is empty")
    files.sort(key=lambda f: f.path)
    return Snapshot(commit, tuple(files), name, None, ORIGIN_HUB_CACHE), located


def plain_snapshot(
    spec: ModelSpec,
    sizes: Mapping[str, int],
    hub: SourceFactory | None,
    logger: log.Logger,
    where: str,
    name: str,
    hashes: Callable[[list[str]], tuple[RemoteFile, ...]],
) -> Snapshot:
    """Plain files (`sizes`: relative path -> size) as a snapshot: the hub's listing when a hub is
    a source and answers, else every selected file with the sha256 `hashes` gives it, recorded
    as source-computed under a content id."""
    listed = hub_listing(hub, spec, logger)
    if listed is not None:
        return checked_against(spec, listed, sizes, where, name)
    if spec.pinned:
        raise NotFoundError(
            f"{where} holds plain files and the hub is not reachable to tell whether they are commit "
            f"{spec.revision[:12]}"
        )
    wanted = spec.files.select(sizes)
    if not wanted:
        raise NotFoundError(f"{where} holds no files matching the filters")
    files = hashes(wanted)
    return Snapshot(content_id(files), files, name, None, ORIGIN_COMPUTED)


def content_id(files: tuple[RemoteFile, ...]) -> str:
    """A stable stand-in for a commit: the same bytes give the same id, any change a new one."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.path}\0{f.size}\0{f.digest.hex}\n".encode())
    return COMPUTED_PREFIX + h.hexdigest()[: 40 - len(COMPUTED_PREFIX)]
