"""Hashes, safe paths and the manifest format."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from agent.errors import IntegrityError
from agent.integrity import GIT_SHA1, SHA256, Digest, hash_file, new_hasher, safe_relpath
from agent.manifest import Manifest, RemoteFile, public_endpoint


def test_git_blob_sha1_matches_git(tmp_path: Path) -> None:
    """Our git-sha1 equals `git hash-object` for the same bytes."""
    data = b"hello model cache\n"
    f = tmp_path / "f"
    f.write_bytes(data)
    want = subprocess.run(
        ["git", "hash-object", str(f)], capture_output=True, text=True, check=True
    ).stdout.strip()
    h = new_hasher(GIT_SHA1, len(data))
    h.update(data)
    assert h.hexdigest() == want
    assert hash_file(f, GIT_SHA1, len(data)).hexdigest() == want


def test_hash_file_prefix(tmp_path: Path) -> None:
    """hash_file(upto=N) hashes exactly the first N bytes."""
    f = tmp_path / "f"
    f.write_bytes(b"abcdef")
    assert hash_file(f, SHA256, 6, upto=3).hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_digest_rejects_malformed_hex() -> None:
    """A digest of the wrong length or alphabet is an integrity error."""
    for algo, hexd in ((SHA256, "ab"), (GIT_SHA1, "z" * 40), ("md5", "a" * 32)):
        with pytest.raises(IntegrityError):
            Digest(algo, hexd)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/abs",
        "../x",
        "a/../../x",
        "a/./b",
        "a//b",
        "a\\b",
        "nul\x00",
        "tab\tx",
        "a/",
        "x" * 2000,
        "x" * 256,
        "dir/" + "x" * 256 + "/f",
        "a/" + "\u00e9" * 128,  # 128 characters, 256 bytes in UTF-8
    ],
)
def test_unsafe_paths_are_rejected(bad: str) -> None:
    """Anything that could leave the model directory or confuse a filesystem is refused."""
    with pytest.raises(IntegrityError, match="refusing unsafe file path"):
        safe_relpath(bad)


def test_safe_paths_pass() -> None:
    """Normal nested paths, and names of up to 255 bytes each, are fine."""
    longest = ("x" * 255, "d/" + "\u00e9" * 127 + "x", "/".join(["y" * 255] * 3))
    for good in ("config.json", "1_Pooling/config.json", "a/b/c.safetensors", ".gitattributes", *longest):
        assert safe_relpath(good) == good


def _manifest() -> Manifest:
    now = time.time()
    return Manifest(
        repo="a/b",
        revision="main",
        commit="c" * 40,
        layout="dir",
        source="hf",
        files=(
            RemoteFile("config.json", 3, Digest(GIT_SHA1, "a" * 40)),
            RemoteFile("m.safetensors", 10, Digest(SHA256, "b" * 64), blob_id="d" * 40),
        ),
        started_at=now - 5,
        completed_at=now,
        endpoint="https://huggingface.co",
    )


def test_manifest_round_trips() -> None:
    """to_json/from_json preserve every field that matters."""
    m = _manifest()
    back = Manifest.from_json(m.to_json())
    assert back.files == m.files and back.commit == m.commit and back.total_bytes == 13
    assert abs(back.completed_at - m.completed_at) < 0.01


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.replace('"format": 2', '"format": 99'),
        lambda s: s.replace('"total_bytes": 13', '"total_bytes": 14'),
        lambda s: s.replace('"config.json"', '"../config.json"'),
        lambda s: s[: len(s) // 2],
        lambda s: s.replace('"m.safetensors"', '"config.json"'),
    ],
    ids=["format", "total", "traversal", "truncated", "duplicate"],
)
def test_damaged_manifest_is_invalid(mutate: object) -> None:
    """Any defect in a marker makes it invalid (and the model not ready)."""
    text = mutate(_manifest().to_json())  # type: ignore[operator]
    with pytest.raises(IntegrityError):
        Manifest.from_json(text)


def test_public_endpoint_drops_credentials() -> None:
    """Recorded endpoints never carry userinfo, query or fragment."""
    assert (
        public_endpoint("https://user:hf_secret@mirror.local:8443/hub/?token=x#f")
        == "https://mirror.local:8443/hub"
    )
