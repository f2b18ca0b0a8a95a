"""Durable filesystem steps the store is built from: fsynced renames, directories, temp names."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> set[Path]:
    """`mkdir -p`; returns the directories that gained an entry (each new directory's parent),
    which must be fsynced too before anything inside the new directories counts as durable."""
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
    return {d.parent for d in missing}


def tmp_sibling(path: Path) -> Path:
    """A temporary name beside `path`, unique per process and thread, and short: a name near
    NAME_MAX (255 bytes) is valid for the file itself but leaves no room for a suffix."""
    return path.with_name(f".preload-tmp-{os.getpid()}-{threading.get_ident()}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file, fsync, rename, fsync the directory (and any it had to create)."""
    created = make_dirs(path.parent)
    tmp = tmp_sibling(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    for d in sorted(created, reverse=True):
        fsync_dir(d)


def atomic_symlink(target: str, link: Path) -> None:
    tmp = tmp_sibling(link)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def existing_ancestor(path: Path) -> Path:
    """`path`, or the nearest parent of it that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def is_no_space(exc: OSError) -> bool:
    """ENOSPC or EDQUOT."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
