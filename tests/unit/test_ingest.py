"""The store's ingest: a part file verified, then committed read-only, with its links."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import IntegrityError
from agent.integrity import SHA256, Digest
from agent.manifest import RemoteFile
from agent.store.fs import DIR_MODE, FILE_MODE, PendingDirs, atomic_write, tmp_sibling
from agent.store.ingest import Ingest, link

DATA = os.urandom(300_000)


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """umask 077: what a locked-down container may run with; published modes must not care."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _file(data: bytes = DATA, path: str = "w/model.safetensors") -> RemoteFile:
    return RemoteFile(path, len(data), Digest(SHA256, hashlib.sha256(data).hexdigest()))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write(ingest: Ingest, data: bytes, at: int = 0, hash_it: bool = True) -> None:
    assert ingest.fd is not None
    os.pwrite(ingest.fd, data, at)
    if hash_it:
        ingest.hasher.update(data)


def test_a_verified_part_is_committed_read_only_in_new_world_readable_dirs(
    tmp_path: Path, strict_umask: None
) -> None:
    part = tmp_path / "staging" / "abc.part"
    final = tmp_path / "out" / "org" / "name" / "w" / "model.safetensors"
    ingest = Ingest(_file(), part, [final])
    assert ingest.open(len(DATA), journaled=True, direct=False) == []
    _write(ingest, DATA)
    ingest.record(0, len(DATA))
    dirs = PendingDirs()
    ingest.commit(dirs)
    dirs.sync()

    assert final.read_bytes() == DATA
    assert _mode(final) == FILE_MODE == 0o444
    for d in (tmp_path / "out", tmp_path / "out" / "org", final.parent, tmp_path / "staging"):
        assert _mode(d) == DIR_MODE == 0o755, d
    assert not part.exists() and not ingest.journal.exists()
    assert ingest.fd is None and ingest.jfd is None


def test_a_hash_mismatch_commits_nothing(tmp_path: Path) -> None:
    part = tmp_path / "staging" / "abc.part"
    final = tmp_path / "out" / "model.safetensors"
    ingest = Ingest(_file(), part, [final])
    ingest.open(len(DATA), journaled=True, direct=False)
    _write(ingest, DATA[:-1] + bytes([DATA[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        ingest.commit(PendingDirs())
    assert not final.exists() and not final.parent.exists()
    assert part.exists(), "the caller decides: discard, or keep for a look"
    ingest.discard()
    assert not part.exists() and not ingest.journal.exists()


def test_duplicate_content_is_linked_and_a_copy_is_read_only_too(
    tmp_path: Path, strict_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    finals = [tmp_path / "a" / "x.bin", tmp_path / "b" / "c" / "y.bin"]
    ingest = Ingest(_file(), tmp_path / "s" / "h.part", finals)
    ingest.open(len(DATA), journaled=False, direct=False)
    _write(ingest, DATA)
    ingest.commit(PendingDirs())
    first, other = (f.stat() for f in finals)
    assert (first.st_ino, first.st_dev) == (other.st_ino, other.st_dev)
    assert _mode(finals[1]) == 0o444 and _mode(finals[1].parent) == 0o755

    def no_links(src: object, dst: object) -> None:
        raise OSError(1, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    copy = tmp_path / "d" / "z.bin"
    link(finals[0], copy, PendingDirs())
    assert copy.read_bytes() == DATA and _mode(copy) == 0o444
    assert copy.stat().st_ino != first.st_ino


def test_linking_a_file_published_writable_makes_it_read_only(tmp_path: Path) -> None:
    """Files from before modes were enforced are reused by newer revisions: read-only from then on."""
    old = tmp_path / "old" / "w.bin"
    old.parent.mkdir()
    old.write_bytes(b"weights")
    old.chmod(0o644)
    dirs = PendingDirs()
    link(old, tmp_path / "new" / "w.bin", dirs)
    assert _mode(tmp_path / "new" / "w.bin") == _mode(old) == 0o444
    dirs.sync()


def test_a_matching_journal_resumes_and_another_content_starts_afresh(tmp_path: Path) -> None:
    part = tmp_path / "s" / "h.part"
    final = tmp_path / "out" / "w.bin"
    first_range = 100_000
    ingest = Ingest(_file(), part, [final])
    ingest.open(first_range, journaled=True, direct=False)
    _write(ingest, DATA[:150_000], hash_it=False)
    ingest.record(0, 100_000)
    ingest.record(1, 50_000)
    ingest.close()
    with open(ingest.journal, "a") as j:
        j.write("2")  # a torn last line: a kill mid-append

    again = Ingest(_file(), part, [final])
    assert again.journaled_range() == first_range
    assert again.open(first_range, journaled=True, direct=False) == [(0, 100_000), (1, 50_000)]
    assert part.read_bytes()[:150_000] == DATA[:150_000], "a resumed part is not truncated"
    again.record(1, 200_000 - 100_000)
    _write(again, DATA[150_000:], at=150_000, hash_it=False)
    again.hasher.update(DATA)
    dirs = PendingDirs()
    again.commit(dirs)
    assert final.read_bytes() == DATA

    other_data = DATA[::-1]
    stale = Ingest(_file(other_data), part, [final])
    stale.open(first_range, journaled=True, direct=False)
    _write(stale, b"partial", hash_it=False)
    stale.record(0, 7)
    stale.close()
    fresh = Ingest(_file(DATA), part, [final])
    assert fresh.journaled_range() is None, "the journal is for other content"
    assert fresh.open(first_range, journaled=True, direct=False) == []
    assert part.stat().st_size == len(DATA) and part.read_bytes()[:7] == bytes(7)
    fresh.discard()


def test_atomic_write_is_read_only_for_all_and_can_be_replaced(tmp_path: Path, strict_umask: None) -> None:
    marker = tmp_path / "markers" / "dir" / "org" / "name.json"
    atomic_write(marker, b"one")
    assert _mode(marker) == 0o444 and _mode(marker.parent) == 0o755
    tmp_sibling(marker).write_bytes(b"left by a killed run")
    tmp_sibling(marker).chmod(0o444)
    atomic_write(marker, b"two")
    assert marker.read_bytes() == b"two" and _mode(marker) == 0o444
    assert not tmp_sibling(marker).exists()
