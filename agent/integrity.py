"""Hashing in one place: the hub's LFS sha256 and git's blob sha1, plus safe relative paths."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

from agent.errors import IntegrityError, Interrupted

SHA256 = "sha256"
GIT_SHA1 = "git-sha1"
# A sha256 nobody knows before the copy (plain objects in a bucket with no other source of
# hashes): the hex is a stand-in naming the object, the copy computes the real one and the
# engine (engine/computed.py) swaps it in. Never in a manifest: parsing one refuses it.
PENDING_SHA256 = "pending-sha256"
_HEX = {
    SHA256: re.compile(r"^[0-9a-f]{64}$"),
    GIT_SHA1: re.compile(r"^[0-9a-f]{40}$"),
    PENDING_SHA256: re.compile(r"^[0-9a-f]{64}$"),
}
READ_BLOCK = 8 << 20
# Buffers kept per stream or per thread: small enough that 16 of them stay well inside the
# 200 MB RSS budget, large enough that syscalls and hashing calls stay cheap.
STREAM_BLOCK = 2 << 20
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255  # NAME_MAX of Linux filesystems: a longer component cannot be created


class Hasher(Protocol):
    """The part of hashlib's interface we use."""

    def update(self, data: bytes | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True)
class Digest:
    """An expected or computed content hash."""

    algo: str
    hex: str

    def __post_init__(self) -> None:
        pattern = _HEX.get(self.algo)
        if pattern is None or not pattern.match(self.hex):
            raise IntegrityError(f"invalid {self.algo} digest {self.hex[:80]!r}")

    def hasher(self, size: int) -> Hasher:
        """A fresh hasher of this digest's kind for content of `size` bytes."""
        return new_hasher(self.algo, size)


def new_hasher(algo: str, size: int) -> Hasher:
    """A hasher; git blob sha1 needs the size up front because git hashes a header first."""
    if algo in (SHA256, PENDING_SHA256):
        return hashlib.sha256()
    if algo == GIT_SHA1:
        h = hashlib.sha1()  # noqa: S324 - git's object id, not a security choice of ours
        h.update(b"blob %d\0" % size)
        return h
    raise IntegrityError(f"unknown hash algorithm {algo!r}")


def hash_file(
    path: str | os.PathLike[str],
    algo: str,
    size: int,
    upto: int | None = None,
    cancel: threading.Event | None = None,
) -> Hasher:
    """Hash the first `upto` bytes (default: all) of a file with large sequential reads.

    Raises Interrupted between two reads once `cancel` is set (a large file takes seconds).
    """
    h = new_hasher(algo, size)
    remaining = size if upto is None else upto
    with open(path, "rb", buffering=0) as f:
        while remaining > 0:
            if cancel is not None and cancel.is_set():
                raise Interrupted(f"hashing {path} stopped")
            block = f.read(min(READ_BLOCK, remaining))
            if not block:
                break
            h.update(block)
            remaining -= len(block)
    return h


def safe_relpath(path: str) -> str:
    """Return `path` if it is a clean relative POSIX path inside its root, else raise."""
    encoded = path.encode("utf-8", "surrogatepass")
    bad = (
        not path
        or "\x00" in path
        or "\\" in path
        or path.startswith("/")
        or len(encoded) > MAX_PATH_BYTES
        or any(len(name) > MAX_NAME_BYTES for name in encoded.split(b"/"))
        or any(ord(c) < 32 for c in path)
    )
    parts = PurePosixPath(path).parts if not bad else ()
    if bad or any(p in ("", ".", "..") for p in parts) or "/".join(parts) != path:
        raise IntegrityError(f"refusing unsafe file path {path[:200]!r} from the source listing")
    return path
