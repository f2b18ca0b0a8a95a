"""DirectorySource: the three kinds of directory, hash origins and the safety rules (no server)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from pathlib import Path

import pytest

from agent.devhub import git_blob_sha1
from agent.engine.preload import PreloadOptions, preload
from agent.errors import IntegrityError, NotFoundError, UsageError
from agent.sources.directory import DirectorySource, parse_location
from agent.sources.registry import factories
from agent.spec import Layout, ModelSpec

REPO = "acme/small"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {
    "config.json": b'{"model_type": "bert"}',
    "model.safetensors": os.urandom(300_000),
    "sub/tokenizer.json": b'{"v": 1}',
}


def no_hub() -> DirectorySource:
    raise AssertionError("the hub must not be contacted")


def plain_source(root: Path, files: dict[str, bytes] = FILES) -> Path:
    """ROOT/ORG/NAME with the given files."""
    for rel, data in files.items():
        path = root / REPO / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def hub_cache_source(root: Path) -> Path:
    """A hub cache as huggingface_hub writes it: blobs named by hash, snapshot symlinks, refs/main."""
    repo_dir = root / f"models--{REPO.replace('/', '--')}"
    snap = repo_dir / "snapshots" / COMMIT
    for rel, data in FILES.items():
        name = hashlib.sha256(data).hexdigest() if rel.endswith(".safetensors") else git_blob_sha1(data)
        blob = repo_dir / "blobs" / name
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return root


def load(dest: Path, source: Path, layout: Layout = Layout.DIR) -> Path:
    """Preload REPO from a directory source in-process and return the model's path."""
    spec = ModelSpec(REPO, layout=layout)
    result = preload(spec, dest, [lambda: DirectorySource(source)], PreloadOptions(progress_interval=60))
    return result.path


def test_parse_location_accepts_paths_and_file_urls() -> None:
    """A path or a file:// URL names a directory; other schemes are usage errors."""
    assert parse_location("/nfs/models") == Path("/nfs/models")
    assert parse_location("file:///nfs/my%20models") == Path("/nfs/my models")
    assert parse_location("file://localhost/x") == Path("/x")
    for bad in ("s3://bucket/models", "file://otherhost/x", ""):
        with pytest.raises(UsageError):
            parse_location(bad)


def test_plain_directory_without_hub_is_source_computed(tmp_path: Path) -> None:
    """A plain ORG/NAME directory with no hub gets sha256s computed from the source, and says so."""
    src = plain_source(tmp_path / "src")
    snap = DirectorySource(src).snapshot(ModelSpec(REPO))
    assert snap.hash_origin == "source-computed"
    assert snap.commit.startswith("local-") and len(snap.commit) == 40
    assert {f.path: f.digest.hex for f in snap.files} == {
        p: hashlib.sha256(d).hexdigest() for p, d in FILES.items()
    }
    path = load(tmp_path / "dest", src)
    assert {p: (path / p).read_bytes() for p in FILES} == FILES


def test_source_computed_id_is_stable_and_content_addressed(tmp_path: Path) -> None:
    """The same bytes give the same stand-in commit; a changed file gives a new one."""
    src = plain_source(tmp_path / "src")
    first = DirectorySource(src).snapshot(ModelSpec(REPO)).commit
    assert DirectorySource(src).snapshot(ModelSpec(REPO)).commit == first
    (src / REPO / "config.json").write_bytes(b"{}")
    assert DirectorySource(src).snapshot(ModelSpec(REPO)).commit != first


def test_pinned_commit_from_plain_directory_without_hub_is_not_found(tmp_path: Path) -> None:
    """Without a hub nothing proves which commit a plain directory holds, so a pin falls through."""
    src = plain_source(tmp_path / "src")
    with pytest.raises(NotFoundError, match="commit"):
        DirectorySource(src).snapshot(ModelSpec(REPO, revision=COMMIT))


def test_hub_cache_hashes_come_from_blob_names(tmp_path: Path) -> None:
    """In a hub cache, 64-hex blob names are LFS sha256s and 40-hex ones git blob sha1s."""
    src = hub_cache_source(tmp_path / "src")
    snap = DirectorySource(src, hub=no_hub).snapshot(ModelSpec(REPO))
    assert snap.commit == COMMIT
    assert snap.hash_origin == "hub-cache"
    algos = {f.path: f.digest.algo for f in snap.files}
    assert algos == {
        "config.json": "git-sha1",
        "model.safetensors": "sha256",
        "sub/tokenizer.json": "git-sha1",
    }
    path = load(tmp_path / "dest", src)
    assert (path / "sub/tokenizer.json").read_bytes() == FILES["sub/tokenizer.json"]


def test_hub_cache_resolves_a_pinned_commit(tmp_path: Path) -> None:
    """@<commit> reads snapshots/<commit> directly; an unknown commit is NotFound."""
    src = hub_cache_source(tmp_path / "src")
    assert DirectorySource(src).snapshot(ModelSpec(REPO, revision=COMMIT)).commit == COMMIT
    with pytest.raises(NotFoundError):
        DirectorySource(src).snapshot(ModelSpec(REPO, revision="f" * 40))


@pytest.mark.parametrize("layout", list(Layout))
def test_preload_written_directory_reuses_its_manifest(tmp_path: Path, layout: Layout) -> None:
    """A DEST written by preload (either layout) is a source whose manifest gives every hash."""
    first = tmp_path / "first"
    load(first, hub_cache_source(tmp_path / "src"), layout)
    snap = DirectorySource(first, hub=no_hub).snapshot(ModelSpec(REPO))
    assert (snap.commit, snap.hash_origin) == (COMMIT, "manifest")
    for target_layout in Layout:
        path = load(tmp_path / f"second-{target_layout.value}", first, target_layout)
        assert (path / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_missing_model_is_not_found(tmp_path: Path) -> None:
    """A model absent from the source, or an absent source, raises NotFoundError (so preload falls back)."""
    src = plain_source(tmp_path / "src")
    with pytest.raises(NotFoundError):
        DirectorySource(src).snapshot(ModelSpec("acme/other"))
    with pytest.raises(NotFoundError, match="not mounted"):
        DirectorySource(tmp_path / "nowhere").snapshot(ModelSpec(REPO))


def test_symlink_inside_root_is_followed(tmp_path: Path) -> None:
    """A symlink that stays inside the source root is read like a file."""
    src = plain_source(tmp_path / "src")
    shared = src / "shared.bin"
    shared.write_bytes(b"shared bytes")
    (src / REPO / "extra.txt").symlink_to(shared)
    snap = DirectorySource(src).snapshot(ModelSpec(REPO))
    assert "extra.txt" in {f.path for f in snap.files}


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_symlink_escaping_root_is_refused(tmp_path: Path, kind: str) -> None:
    """A file or directory symlink that leads out of the source root is an integrity error."""
    src = plain_source(tmp_path / "src")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    target = outside / "secret" if kind == "file" else outside
    (src / REPO / "escape").symlink_to(target)
    with pytest.raises(IntegrityError, match="leading out of"):
        DirectorySource(src).snapshot(ModelSpec(REPO))


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO in the source is a clear error, found before anything is opened."""
    src = plain_source(tmp_path / "src")
    os.mkfifo(src / REPO / "pipe")
    with pytest.raises(IntegrityError, match="FIFO"):
        DirectorySource(src).snapshot(ModelSpec(REPO))


def test_device_is_refused(tmp_path: Path) -> None:
    """A symlink to a device inside the root is still not a regular file."""
    src = plain_source(tmp_path / "src")
    (src / "null").symlink_to("/dev/null")
    (src / REPO / "dev").symlink_to(src / "null")
    with pytest.raises(IntegrityError):
        DirectorySource(src).snapshot(ModelSpec(REPO))


def test_file_shrunk_after_listing_is_an_integrity_error(tmp_path: Path) -> None:
    """A source file changing size between listing and copy fails that copy, it is not published."""
    src = plain_source(tmp_path / "src")
    source = DirectorySource(src)
    spec = ModelSpec(REPO)
    snap = source.snapshot(spec)
    (src / REPO / "model.safetensors").write_bytes(b"short")
    file = next(f for f in snap.files if f.path == "model.safetensors")
    with (
        pytest.raises(IntegrityError, match="changed size"),
        source.open_range(spec, snap, file, 0, file.size),
    ):
        pass


def test_factories_give_directories_the_hub_only_when_listed(tmp_path: Path) -> None:
    """A directory may ask the hub for hashes only when 'hf' is among the sources."""

    def hub() -> DirectorySource:
        return DirectorySource(tmp_path)

    alone = factories([str(tmp_path)], hub)[0]()
    assert isinstance(alone, DirectorySource) and alone._hub is None
    with_hub = factories([str(tmp_path), "hf"], hub)
    first = with_hub[0]()
    assert isinstance(first, DirectorySource) and first._hub is hub
    assert with_hub[1] is hub


def _read_range(source: DirectorySource, start: int, end: int, name: str = "big.safetensors") -> bytes:
    spec = ModelSpec(REPO)
    snap = source.snapshot(spec)
    file = next(f for f in snap.files if f.path == name)
    with source.open_range(spec, snap, file, start, end) as blocks:
        return b"".join(bytes(b) for b in blocks)


def _spy_reads(monkeypatch: pytest.MonkeyPatch, refuse_direct: bool = False) -> list[tuple[int, bool]]:
    """Record (offset, O_DIRECT on?) for every source read; optionally refuse direct ones (EINVAL)."""
    from agent.sources import dirread

    real = os.preadv
    reads: list[tuple[int, bool]] = []

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & dirread._O_DIRECT)
        reads.append((offset, direct))
        if direct and refuse_direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset)

    monkeypatch.setattr(dirread.os, "preadv", preadv)
    return reads


@pytest.mark.parametrize(("start", "end"), [(0, None), (12345, None), (4096, 5_000_001), (1, 2)])
def test_large_reads_are_direct_and_byte_exact_at_any_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: int, end: int | None
) -> None:
    """Large ranges are read with O_DIRECT (page cache untouched), small ones buffered; all exact."""
    data = os.urandom(9 * (1 << 20) + 777)
    src = plain_source(tmp_path / "src", {**FILES, "big.safetensors": data})
    stop = len(data) if end is None else end
    reads = _spy_reads(monkeypatch)
    assert _read_range(DirectorySource(src), start, stop) == data[start:stop]
    from agent.sources.dirread import DIRECT_MIN

    if stop - start >= DIRECT_MIN:
        assert all(direct for _, direct in reads) and reads[0][0] == start - start % 4096
    else:
        assert reads == [(start, False)]


def test_read_falls_back_when_the_filesystem_refuses_direct_io(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EINVAL from a direct read (some FUSE and network filesystems) switches to buffered reads."""
    data = os.urandom(6 * (1 << 20) + 3)
    src = plain_source(tmp_path / "src", {**FILES, "big.safetensors": data})
    reads = _spy_reads(monkeypatch, refuse_direct=True)
    assert _read_range(DirectorySource(src), 4097, len(data)) == data[4097:]
    assert reads[0] == (4096, True) and reads[1] == (4097, False)
    assert not any(direct for _, direct in reads[1:])
