"""The layout strategies on real files: models published through the store, no hub."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from agent.integrity import SHA256, Digest
from agent.manifest import Manifest, RemoteFile
from agent.spec import Layout, ModelSpec
from agent.store import CachePaths, HfRepo, Store
from agent.store.layouts import DirLayout, HfCacheLayout

C1, C2 = "1" * 40, "2" * 40
FILES_V1 = {"config.json": b"{}\n", "sub/model.safetensors": b"weights v1" * 100}
FILES_V2 = {"config.json": b"{}\n", "sub/model.safetensors": b"weights v2" * 100}


def put(store: Store, spec: ModelSpec, commit: str, files: dict[str, bytes]) -> Manifest:
    """Commit `files` to their final paths and publish them, as a preload would."""
    listed = tuple(
        RemoteFile(p, len(b), Digest(SHA256, hashlib.sha256(b).hexdigest())) for p, b in sorted(files.items())
    )
    store.prepare()
    for pl in store.placements(spec, commit, listed):
        pl.final.parent.mkdir(parents=True, exist_ok=True)
        pl.final.write_bytes(files[pl.file.path])
    now = 1_700_000_000.0  # whole seconds: a marker keeps milliseconds
    m = Manifest(spec.repo, spec.revision, commit, spec.layout.value, "test", listed, now, now)
    store.publish(spec, m)
    return m


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "cache")


def test_each_layout_gets_its_strategy(store: Store) -> None:
    """The strategy is chosen from spec.layout."""
    assert isinstance(store.layout(ModelSpec("a/b")), DirLayout)
    assert isinstance(store.layout(ModelSpec("a/b", layout=Layout.HF_CACHE)), HfCacheLayout)


def test_dir_layout_paths_and_pointer(store: Store) -> None:
    """DIR/ORG/NAME is a relative symlink to the commit's folder under .preload/versions."""
    spec = ModelSpec("a/b")
    lay = store.layout(spec)
    m = put(store, spec, C1, FILES_V1)
    root = store.root
    version = root / ".preload" / "versions" / "a" / "b" / C1
    assert lay.model_path(spec) == root / "a" / "b"
    assert os.readlink(root / "a" / "b") == os.path.join("..", ".preload", "versions", "a", "b", C1)
    assert lay.files_dir(spec, C1) == version
    assert lay.final_path(spec, C1, m.files[1]) == version / "sub" / "model.safetensors"
    assert lay.file_paths(spec, C1, m.files[1]) == (version / "sub" / "model.safetensors",)
    assert lay.pointer_ok(spec, m) and lay.reader_path(spec, m) == root / "a" / "b"
    assert lay.broken_pointers(spec, m) == [] and lay.extra_files(spec, m) == []
    assert lay.pointers(spec) == (root / "a" / "b",) and lay.data(spec) == version.parent
    assert lay.superseded(spec, m) == () and lay.repo_folders() == []
    assert store.ready(spec) == m


def test_dir_layout_eviction_hides_the_model_before_its_files(store: Store) -> None:
    """Pointer, then markers, then the files, then their damage records, then staging."""
    spec = ModelSpec("a/b")
    paths = CachePaths(store.root)
    assert store.layout(spec).eviction(spec) == (
        store.root / "a" / "b",
        paths.marker(spec),
        paths.other_markers_dir(spec),
        paths.versions(spec),
        paths.damaged_dir(spec),
        paths.staging(spec),
    )


def test_dir_layout_new_revision_supersedes_and_pinned_goes_beside(store: Store) -> None:
    """A branch moves the link and leaves the old commit superseded; a pinned commit goes beside."""
    spec = ModelSpec("a/b")
    lay = store.layout(spec)
    old = put(store, spec, C1, FILES_V1)
    new = put(store, spec, C2, FILES_V2)
    assert lay.pointer_ok(spec, new) and not lay.pointer_ok(spec, old)
    assert lay.reader_path(spec, old) == lay.files_dir(spec, C1)  # read from its own folder
    assert lay.superseded(spec, new) == (lay.files_dir(spec, C1),)
    pinned = replace(spec, revision=C1)
    assert lay.publish(pinned, old, current=False) == lay.files_dir(spec, C1)
    assert os.readlink(lay.model_path(spec)).endswith(C2), "publishing beside leaves the link alone"


def test_dir_layout_damage_is_seen(store: Store) -> None:
    """A stray file is extra; a missing link is a broken pointer."""
    spec = ModelSpec("a/b")
    lay = store.layout(spec)
    m = put(store, spec, C1, FILES_V1)
    (lay.files_dir(spec, C1) / "stray.txt").write_text("x")
    assert lay.extra_files(spec, m) == ["stray.txt"]
    lay.model_path(spec).unlink()
    assert lay.broken_pointers(spec, m) == [f"a/b (link to {C1[:12]})"]
    assert store.ready(spec) is None


def test_hf_cache_layout_is_the_hub_clients(store: Store) -> None:
    """Blobs by hash, snapshot links into them, refs without newline, a trees listing, CACHEDIR.TAG."""
    spec = ModelSpec("a/b", layout=Layout.HF_CACHE)
    lay = store.layout(spec)
    m = put(store, spec, C1, FILES_V1)
    repo = store.root / "models--a--b"
    weights = m.files[1]
    blob = repo / "blobs" / weights.digest.hex
    link = repo / "snapshots" / C1 / "sub" / "model.safetensors"
    assert lay.final_path(spec, C1, weights) == blob
    assert lay.file_paths(spec, C1, weights) == (blob, link)
    assert os.readlink(link) == os.path.join("..", "..", "..", "blobs", weights.digest.hex)
    assert (repo / "refs" / "main").read_bytes() == C1.encode()
    tree = json.loads((repo / "trees" / f"{C1}.json").read_bytes())
    assert tree["files"]["sub/model.safetensors"]["lfs_sha256"] == weights.digest.hex
    assert (
        (store.root / "CACHEDIR.TAG").read_bytes().startswith(b"Signature: 8a477f597d28d172789f06886806bc55")
    )
    assert (
        lay.model_path(spec, C1)
        == lay.files_dir(spec, C1)
        == lay.reader_path(spec, m)
        == repo / "snapshots" / C1
    )
    assert lay.pointer_ok(spec, m) and lay.broken_pointers(spec, m) == [] and lay.extra_files(spec, m) == []
    assert lay.pointers(spec) == () and lay.data(spec) == repo
    assert lay.repo_folders() == ["a/b"]
    assert store.ready(spec) == m


def test_hf_cache_pointer_is_the_ref_unless_pinned(store: Store) -> None:
    """A branch is served only while refs/<branch> names the commit; a pinned commit by its snapshot."""
    spec = ModelSpec("a/b", layout=Layout.HF_CACHE)
    lay = store.layout(spec)
    m = put(store, spec, C1, FILES_V1)
    (store.root / "models--a--b" / "refs" / "main").write_text(C2)
    assert not lay.pointer_ok(spec, m)
    assert lay.pointer_ok(replace(spec, revision=C1), m)


def test_hf_cache_superseded_keeps_what_the_current_commit_uses(store: Store) -> None:
    """Old snapshot and tree and the blobs only it used go; shared blobs and the ref stay."""
    spec = ModelSpec("a/b", layout=Layout.HF_CACHE)
    lay = store.layout(spec)
    old = put(store, spec, C1, FILES_V1)
    new = put(store, spec, C2, FILES_V2)
    repo = HfRepo.at(store.root, spec)
    assert set(lay.superseded(spec, new)) == {
        repo.snapshot(C1),
        repo.tree(C1),
        repo.blob(old.files[1].digest.hex),
    }
    assert store.ready(replace(spec, revision=C1)) == old, "the old commit stays ready until GC"


def test_hf_cache_broken_snapshot_link_is_seen(store: Store) -> None:
    """A snapshot file that no longer leads to its blob is reported by path."""
    spec = ModelSpec("a/b", layout=Layout.HF_CACHE)
    lay = store.layout(spec)
    m = put(store, spec, C1, FILES_V1)
    (lay.files_dir(spec, C1) / "config.json").unlink()
    assert lay.broken_pointers(spec, m) == ["config.json"]


def test_hf_repo_names(tmp_path: Path) -> None:
    """models--ORG--NAME both ways; other names are not repos."""
    repo = HfRepo.at(tmp_path, ModelSpec("org/name"))
    assert repo.path == tmp_path / "models--org--name"
    assert repo.ref("main") == repo.path / "refs" / "main"
    assert repo.tree(C1) == repo.path / "trees" / f"{C1}.json"
    assert HfRepo.repo_of("models--org--name") == "org/name"
    assert HfRepo.repo_of("models--orgname") is None and HfRepo.repo_of("org--name") is None


def test_state_paths(tmp_path: Path) -> None:
    """The state directory's names, as the README's on-disk format lists them."""
    paths, spec = CachePaths(tmp_path), ModelSpec("o/n", layout=Layout.HF_CACHE)
    state = tmp_path / ".preload"
    assert paths.lock(spec) == state / "locks" / "o--n.lock"
    assert paths.staging(spec) == state / "staging" / "o--n"
    assert paths.marker(spec) == state / "markers" / "hf-cache" / "o" / "n.json"
    assert paths.other_marker(spec, C1) == state / "markers" / "hf-cache" / "o" / "n" / f"{C1}.json"
    assert paths.version(spec, C1) == state / "versions" / "o" / "n" / C1
    assert paths.verified(spec) == state / "verified" / "hf-cache" / "o" / "n.json"
    assert paths.used("o/n", Layout.DIR) == state / "used" / "dir" / "o" / "n"
    assert paths.marker_repo(paths.marker(spec)) == "o/n"
    assert paths.staging_repo("o--n") == "o/n" and paths.staging_repo("junk") is None
