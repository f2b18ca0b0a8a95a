"""What the test hub serves: files (in memory or on disk), repos of commits and refs.

Stdlib only, like the rest of the dev hub: a bug in the downloader cannot hide behind the same
bug here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

LFS_THRESHOLD = 10 * 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx")
# Hashing reads a disk file in blocks this big: large enough that hashlib (which releases the
# GIL) does the work, small enough to keep memory flat.
HASH_BLOCK = 8 * 1024 * 1024


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a blob: sha1 over a `blob <size>\\0` header and the content."""
    h = hashlib.sha1(b"blob %d\0" % len(data), usedforsecurity=False)
    h.update(data)
    return h.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class HubFile:
    """One file of a repo, held in memory (`data`) or streamed from disk (`source`)."""

    path: str
    data: bytes | None = None
    source: Path | None = None
    lfs: bool | None = None
    _size: int = field(default=0, init=False, repr=False, compare=False)
    _digests: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    # One lock per file so that parallel first requests hash a big file once, and different
    # files still hash in parallel (hashlib releases the GIL).
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.data is None) == (self.source is None):
            raise ValueError(f"{self.path}: give exactly one of data= or source=")
        size = len(self.data) if self.data is not None else self._source().stat().st_size
        object.__setattr__(self, "_size", size)
        if self.lfs is None:
            lfs = size >= LFS_THRESHOLD or self.path.endswith(LFS_SUFFIXES)
            object.__setattr__(self, "lfs", lfs)

    @property
    def size(self) -> int:
        """Content size in bytes (a disk file is measured once, when declared)."""
        return self._size

    @property
    def is_lfs(self) -> bool:
        """Whether the hub stores this file in LFS (served through the CDN)."""
        return bool(self.lfs)

    @property
    def sha256(self) -> str:
        """sha256 of the content: the LFS oid and the CDN blob name."""
        return self._digest("sha256")

    @property
    def git_sha1(self) -> str:
        """Git blob sha1 of the content: the ETag of a small file."""
        return self._digest("git_sha1")

    @property
    def pointer(self) -> bytes:
        """The LFS pointer git stores for this file."""
        return lfs_pointer(self.sha256, self.size)

    @property
    def oid(self) -> str:
        """The git blob id in the tree: of the pointer for LFS files, else of the content."""
        return git_blob_sha1(self.pointer) if self.is_lfs else self.git_sha1

    @property
    def etag(self) -> str:
        """What the hub's resolve endpoint announces as the file's identity."""
        return self.sha256 if self.is_lfs else self.git_sha1

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset`."""
        if self.data is not None:
            return self.data[offset : offset + length]
        with self.open() as f:
            return os.pread(f.fileno(), length, offset)

    def open(self) -> BinaryIO:
        """The disk file, unbuffered (large reads and sendfile want no Python buffer)."""
        return self._source().open("rb", buffering=0)

    def _source(self) -> Path:
        if self.source is None:
            raise ValueError(f"{self.path} is held in memory")
        return self.source

    def _digest(self, name: str) -> str:
        with self._lock:
            if name not in self._digests:
                h = (
                    hashlib.sha256()
                    if name == "sha256"
                    else hashlib.sha1(b"blob %d\0" % self.size, usedforsecurity=False)
                )
                for block in self._blocks():
                    h.update(block)
                self._digests[name] = h.hexdigest()
            return self._digests[name]

    def _blocks(self) -> Iterator[bytes | memoryview]:
        if self.data is not None:
            yield memoryview(self.data)
            return
        with self.open() as f:
            while block := f.read(HASH_BLOCK):
                yield block


def _derive_commit(repo_id: str, files: Sequence[HubFile], parent: str | None) -> str:
    """A deterministic 40-hex commit id from the repo id, the parent and every file's identity."""
    h = hashlib.sha1(f"commit\0{repo_id}\0{parent or ''}\0".encode(), usedforsecurity=False)
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.oid}\0".encode())
    return h.hexdigest()


def _warm_hashes(files: Sequence[HubFile]) -> None:
    """Hash big disk files in parallel once, instead of one by one on first use."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        list(pool.map(lambda f: f.oid, files))


class HubRepo:
    """A model repo: commits (each a full file set) and refs (branches, tags) pointing at them."""

    def __init__(
        self,
        repo_id: str,
        files: Iterable[HubFile],
        commit: str | None = None,
        refs: Mapping[str, str] | None = None,
        gated: bool = False,
        private: bool = False,
    ) -> None:
        org, _, name = repo_id.partition("/")
        if not org or not name or "/" in name:
            raise ValueError(f"repo id must be org/name, got {repo_id!r}")
        self.repo_id = repo_id
        self.gated = gated
        self.private = private
        self._lock = threading.Lock()
        self._commits: dict[str, dict[str, HubFile]] = {}
        self.commit = self._store_commit(list(files), commit, parent=None)
        self._refs: dict[str, str] = dict(refs) if refs is not None else {"main": self.commit}
        for ref, target in self._refs.items():
            if target not in self._commits:
                raise ValueError(f"ref {ref!r} points at unknown commit {target}")

    def add_commit(self, files: Iterable[HubFile], branch: str = "main", commit: str | None = None) -> str:
        """Publish a new file set as a commit on `branch` (moving it) and return its id."""
        with self._lock:
            parent = self._refs.get(branch)
        sha = self._store_commit(list(files), commit, parent)
        with self._lock:
            self._refs[branch] = sha
        return sha

    def set_ref(self, ref: str, commit: str) -> None:
        """Point a branch or tag at an existing commit."""
        with self._lock:
            if commit not in self._commits:
                raise ValueError(f"unknown commit {commit}")
            self._refs[ref] = commit

    def delete_ref(self, ref: str) -> None:
        """Remove a branch or tag."""
        with self._lock:
            del self._refs[ref]

    @property
    def refs(self) -> dict[str, str]:
        """A copy of the refs."""
        with self._lock:
            return dict(self._refs)

    def head(self, branch: str = "main") -> str:
        """The commit a branch points at."""
        with self._lock:
            return self._refs[branch]

    def resolve(self, revision: str) -> str | None:
        """The commit a revision (commit id, branch or tag) names, if any."""
        with self._lock:
            if revision in self._commits:
                return revision
            return self._refs.get(revision)

    def files(self, commit: str | None = None) -> dict[str, HubFile]:
        """The files of a commit (default: `main`), by path."""
        with self._lock:
            return dict(self._commits[commit or self._refs["main"]])

    def all_files(self) -> Iterator[HubFile]:
        """Every file of every commit."""
        with self._lock:
            commits = list(self._commits.values())
        for files in commits:
            yield from files.values()

    def _store_commit(self, files: list[HubFile], commit: str | None, parent: str | None) -> str:
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise ValueError(f"{self.repo_id}: duplicate paths in one commit")
        _warm_hashes(files)
        sha = commit or _derive_commit(self.repo_id, files, parent)
        with self._lock:
            self._commits[sha] = {f.path: f for f in files}
        return sha


def directory_repo(repo_id: str, root: Path, gated: bool = False, private: bool = False) -> HubRepo:
    """A repo whose files are a directory's files (streamed from disk), skipping `.git`."""
    files = [
        HubFile(path.relative_to(root).as_posix(), source=path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(root).parts
    ]
    return HubRepo(repo_id, files, gated=gated, private=private)


def export_lfs_blobs(repo: HubRepo, directory: Path) -> list[Path]:
    """Lay out every LFS file of a repo as `<directory>/<sha256>`, for an external CDN (nginx)."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for file in repo.all_files():
        target = directory / file.sha256 if file.is_lfs else None
        if target is None or target.exists():
            continue
        if file.source is not None:
            try:
                os.link(file.source, target)
            except OSError:  # another filesystem: copy instead
                shutil.copyfile(file.source, target)
        else:
            target.write_bytes(file.data or b"")
        written.append(target)
    return written
