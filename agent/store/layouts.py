"""The two layouts a model can have under DIR, one strategy object each.

    dir:       DIR/ORG/NAME -> .preload/versions/ORG/NAME/<commit>   (a symlink swapped atomically)
    hf-cache:  DIR/models--ORG--NAME/{blobs,snapshots,refs,trees}    (the hub client's own layout)

A strategy knows where a layout puts a revision's files, how readers find them (the pointer),
how to publish and check that pointer, and which paths hold a model's bytes. Everything
common to both (markers, staging, locks) is in `CachePaths`; the store picks a strategy once
per model from `spec.layout`.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from agent.errors import UsageError
from agent.manifest import Manifest, RemoteFile
from agent.spec import Layout, ModelSpec
from agent.store.fs import atomic_symlink, atomic_write, fsync_dir, make_dirs
from agent.store.paths import CachePaths

_HF_PREFIX = "models--"
# https://bford.info/cachedir/: backup tools skip a directory holding this tag.
_CACHEDIR_TAG = b"Signature: 8a477f597d28d172789f06886806bc55\n"


@dataclass(frozen=True)
class HfRepo:
    """One models--ORG--NAME folder of a hub cache, ours or one a directory source holds."""

    path: Path

    @classmethod
    def at(cls, root: Path, spec: ModelSpec) -> HfRepo:
        """The folder of `spec` in the hub cache rooted at `root`."""
        return cls(root / f"{_HF_PREFIX}{spec.org}--{spec.name}")

    @staticmethod
    def repo_of(name: str) -> str | None:
        """The repo id a folder name at the top of a hub cache stands for, if it has the shape."""
        if not name.startswith(_HF_PREFIX):
            return None
        org, sep, model = name.removeprefix(_HF_PREFIX).partition("--")
        return f"{org}/{model}" if sep else None

    @property
    def blobs(self) -> Path:
        """Files by content (LFS sha256 or git blob sha1)."""
        return self.path / "blobs"

    @property
    def snapshots(self) -> Path:
        """One folder of symlinks into blobs/ per commit."""
        return self.path / "snapshots"

    @property
    def refs(self) -> Path:
        """One file per branch or tag, holding its commit."""
        return self.path / "refs"

    @property
    def trees(self) -> Path:
        """One listing per commit (of the files we preloaded)."""
        return self.path / "trees"

    def blob(self, hexdigest: str) -> Path:
        """The content of one file."""
        return self.blobs / hexdigest

    def snapshot(self, commit: str) -> Path:
        """What readers open for one commit."""
        return self.snapshots / commit

    def ref(self, revision: str) -> Path:
        """The file naming the commit a branch or tag resolved to."""
        return self.refs / revision

    def tree(self, commit: str) -> Path:
        """The listing of one commit."""
        return self.trees / f"{commit}.json"


class LayoutStrategy(ABC):
    """Where one layout puts a model's files and how readers are pointed at them."""

    layout: ClassVar[Layout]

    def __init__(self, paths: CachePaths) -> None:
        self.paths = paths

    @abstractmethod
    def model_path(self, spec: ModelSpec, commit: str | None = None) -> Path:
        """What a reader opens for the current revision (or, where each has its own, `commit`)."""

    @abstractmethod
    def stable_path(self, spec: ModelSpec) -> Path | None:
        """The path readers open whatever the commit, where the layout has one."""

    @abstractmethod
    def files_dir(self, spec: ModelSpec, commit: str) -> Path:
        """The folder showing a revision's files under their repo paths."""

    @abstractmethod
    def final_path(self, spec: ModelSpec, commit: str, f: RemoteFile) -> Path:
        """Where a verified file's bytes are committed."""

    def file_paths(self, spec: ModelSpec, commit: str, f: RemoteFile) -> tuple[Path, ...]:
        """Every name a file has in a revision; a repair removes them all before refetching."""
        return (self.final_path(spec, commit, f),)

    @abstractmethod
    def reader_path(self, spec: ModelSpec, m: Manifest) -> Path:
        """Where readers open the revision `m` describes."""

    @abstractmethod
    def pointer_ok(self, spec: ModelSpec, m: Manifest) -> bool:
        """Whether readers asking for `spec` are shown `m`'s commit."""

    @abstractmethod
    def broken_pointers(self, spec: ModelSpec, m: Manifest) -> list[str]:
        """Names readers cannot reach the revision's files through (for `verify`)."""

    @abstractmethod
    def publish(self, spec: ModelSpec, m: Manifest, *, current: bool) -> Path:
        """Make `m`'s committed files visible to readers; with `current`, as what `spec`'s
        revision resolves to. Durable on return; returns what readers open."""

    @abstractmethod
    def pointers(self, spec: ModelSpec) -> tuple[Path, ...]:
        """Reader-facing names outside the model's data (removed first on eviction)."""

    @abstractmethod
    def data(self, spec: ModelSpec) -> Path:
        """The folder holding every revision's bytes."""

    @abstractmethod
    def superseded(self, spec: ModelSpec, current: Manifest) -> tuple[Path, ...]:
        """What other revisions hold that the current one does not need."""

    @abstractmethod
    def repo_folders(self) -> list[str]:
        """Repos with a folder at the top of DIR that only this layout's writer makes."""

    def eviction(self, spec: ModelSpec) -> tuple[Path, ...]:
        """Everything removed to evict a model, in order: readers stop seeing it (pointer, then
        markers) before its files go, its damage records only once the files are gone, and its
        staging last."""
        paths = self.paths
        return (
            *self.pointers(spec),
            paths.marker(spec),
            paths.other_markers_dir(spec),
            self.data(spec),
            paths.damaged_dir(spec),
            paths.staging(spec),
        )

    def extra_files(self, spec: ModelSpec, m: Manifest) -> list[str]:
        """Files in the revision's folder that its manifest does not list."""
        base = self.files_dir(spec, m.commit)
        listed = {f.path for f in m.files}
        found = []
        for dirpath, _dirs, names in os.walk(base):
            for name in names:
                rel = (Path(dirpath) / name).relative_to(base).as_posix()
                if rel not in listed:
                    found.append(rel)
        return found


class DirLayout(LayoutStrategy):
    """DIR/ORG/NAME, a symlink to the current commit's folder under .preload/versions."""

    layout = Layout.DIR

    def model_path(self, spec: ModelSpec, commit: str | None = None) -> Path:
        return self.paths.root / spec.org / spec.name

    def stable_path(self, spec: ModelSpec) -> Path | None:
        return self.model_path(spec)

    def files_dir(self, spec: ModelSpec, commit: str) -> Path:
        return self.paths.version(spec, commit)

    def final_path(self, spec: ModelSpec, commit: str, f: RemoteFile) -> Path:
        return self.files_dir(spec, commit) / f.path

    def reader_path(self, spec: ModelSpec, m: Manifest) -> Path:
        # A revision published beside the current one is read from its own folder.
        return self.model_path(spec) if self.pointer_ok(spec, m) else self.files_dir(spec, m.commit)

    def pointer_ok(self, spec: ModelSpec, m: Manifest) -> bool:
        try:
            return Path(os.readlink(self.model_path(spec))).name == m.commit
        except OSError:
            return False

    def broken_pointers(self, spec: ModelSpec, m: Manifest) -> list[str]:
        return [] if self.pointer_ok(spec, m) else [f"{spec.org}/{spec.name} (link to {m.commit[:12]})"]

    def publish(self, spec: ModelSpec, m: Manifest, *, current: bool) -> Path:
        if not current:
            return self.files_dir(spec, m.commit)
        link = self.model_path(spec)
        if link.exists() and not link.is_symlink():
            raise UsageError(
                f"{link} exists and was not written by preload; move it away or pick another --dest"
            )
        created = make_dirs(link.parent)
        target = os.path.relpath(self.files_dir(spec, m.commit), link.parent)
        atomic_symlink(target, link)
        for d in sorted({link.parent, *created}, reverse=True):
            fsync_dir(d)
        return link

    def pointers(self, spec: ModelSpec) -> tuple[Path, ...]:
        return (self.model_path(spec),)

    def data(self, spec: ModelSpec) -> Path:
        return self.paths.versions(spec)

    def superseded(self, spec: ModelSpec, current: Manifest) -> tuple[Path, ...]:
        return tuple(d for d in _children(self.data(spec)) if d.name != current.commit)

    def repo_folders(self) -> list[str]:
        # DIR/ORG/NAME may as well be anyone's folder; an unpublished transfer shows in staging.
        return []


class HfCacheLayout(LayoutStrategy):
    """The hub client's cache: content-named blobs, one snapshot of symlinks per commit."""

    layout = Layout.HF_CACHE

    def repo(self, spec: ModelSpec) -> HfRepo:
        """The model's models--ORG--NAME folder."""
        return HfRepo.at(self.paths.root, spec)

    def model_path(self, spec: ModelSpec, commit: str | None = None) -> Path:
        return self.repo(spec).snapshot(commit or "")

    def stable_path(self, spec: ModelSpec) -> Path | None:
        return None  # every commit has its own snapshot folder

    def files_dir(self, spec: ModelSpec, commit: str) -> Path:
        return self.model_path(spec, commit)

    def final_path(self, spec: ModelSpec, commit: str, f: RemoteFile) -> Path:
        return self.repo(spec).blob(f.digest.hex)

    def file_paths(self, spec: ModelSpec, commit: str, f: RemoteFile) -> tuple[Path, ...]:
        return (self.final_path(spec, commit, f), self.files_dir(spec, commit) / f.path)

    def reader_path(self, spec: ModelSpec, m: Manifest) -> Path:
        return self.model_path(spec, m.commit)

    def pointer_ok(self, spec: ModelSpec, m: Manifest) -> bool:
        if spec.pinned:
            return True  # a commit's snapshot is its own pointer
        try:
            return self.repo(spec).ref(m.revision).read_text() == m.commit
        except OSError:
            return False

    def broken_pointers(self, spec: ModelSpec, m: Manifest) -> list[str]:
        snap, repo = self.files_dir(spec, m.commit), self.repo(spec)
        return [
            f.path
            for f in m.files
            if os.path.realpath(snap / f.path) != os.path.realpath(repo.blob(f.digest.hex))
        ]

    def publish(self, spec: ModelSpec, m: Manifest, *, current: bool) -> Path:
        # Every commit has its own snapshot: published beside or not, the steps are the same.
        repo = self.repo(spec)
        snap = repo.snapshot(m.commit)
        created: set[Path] = set()
        for f in m.files:
            link = snap / f.path
            created |= make_dirs(link.parent)
            target = os.path.relpath(repo.blob(f.digest.hex), link.parent)
            if not (link.is_symlink() and os.readlink(link) == target):
                atomic_symlink(target, link)
        atomic_write(repo.tree(m.commit), json.dumps(_tree(m), indent=1).encode())
        tag = self.paths.root / "CACHEDIR.TAG"
        if not tag.exists():
            atomic_write(tag, _CACHEDIR_TAG)
        for d in sorted({(snap / f.path).parent for f in m.files} | created, reverse=True):
            fsync_dir(d)
        if not spec.pinned:
            # The hub client reads refs/<rev> verbatim: no trailing newline.
            atomic_write(repo.ref(m.revision), m.commit.encode())
        return snap

    def pointers(self, spec: ModelSpec) -> tuple[Path, ...]:
        return ()  # refs and snapshots live inside the repo folder

    def data(self, spec: ModelSpec) -> Path:
        return self.repo(spec).path

    def superseded(self, spec: ModelSpec, current: Manifest) -> tuple[Path, ...]:
        repo, commit = self.repo(spec), current.commit
        wanted = {f.digest.hex for f in current.files}
        old = [d for d in _children(repo.snapshots) if d.name != commit]
        old += [t for t in _children(repo.trees) if t != repo.tree(commit)]
        old += [r for r in _children(repo.refs) if _read(r) != commit]
        old += [b for b in _children(repo.blobs) if b.name not in wanted]
        return tuple(old)

    def repo_folders(self) -> list[str]:
        found = []
        for d in sorted(self.paths.root.glob(f"{_HF_PREFIX}*--*")):
            repo = HfRepo.repo_of(d.name)
            if repo is not None and d.is_dir():
                found.append(repo)
        return found


def strategies(paths: CachePaths) -> dict[Layout, LayoutStrategy]:
    """One strategy per layout for a DIR."""
    return {s.layout: s for s in (DirLayout(paths), HfCacheLayout(paths))}


def _tree(m: Manifest) -> dict[str, object]:
    """trees/<commit>.json: the files preloaded with their hub ids, as the hub client reads it."""
    return {
        "format_version": 1,
        "files": {
            f.path: {"size": f.size, "blob_id": f.digest.hex}
            if f.digest.algo != "sha256"
            else {
                "size": f.size,
                "blob_id": f.blob_id or f.digest.hex,
                "lfs_sha256": f.digest.hex,
                "lfs_size": f.size,
            }
            for f in m.files
        },
    }


def _children(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError:
        return []


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
