"""Durable filesystem steps the store is built from: fsynced renames, directories, temp names.

Everything the store publishes is readable by any uid whatever the writer's umask (the
model server usually runs as another user than the preloader): files 0444, directories 0755.
Files are read-only because nothing rewrites them in place; a change is always a new file
renamed over the old one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path

FILE_MODE = 0o444  # published files and markers: read-only for everyone
DIR_MODE = 0o755  # directories the store creates


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PendingDirs:
    """Directories whose new entries are not durable yet. Files are committed one by one, but
    each directory is fsynced once at the end of a batch, not once per file."""

    def __init__(self) -> None:
        self._dirs: set[Path] = set()
        self._lock = threading.Lock()  # commits run on the transfer's worker threads

    def add(self, *dirs: Path) -> None:
        with self._lock:
            self._dirs.update(dirs)

    def sync(self) -> None:
        """fsync every pending directory."""
        with self._lock:
            dirs, self._dirs = sorted(self._dirs), set()
        for d in dirs:
            fsync_dir(d)


def make_dirs(path: Path) -> set[Path]:
    """`mkdir -p` with DIR_MODE for the new directories; returns the directories that gained an
    entry (each new directory's parent), which must be fsynced too before anything inside the
    new directories counts as durable."""
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue  # another process made it: its mode is its own business
        os.chmod(d, DIR_MODE)  # mkdir's mode is filtered by the umask; chmod's is not
    return {d.parent for d in missing}


def tmp_sibling(path: Path) -> Path:
    """A temporary name beside `path`, unique per process and thread, and short: a name near
    NAME_MAX (255 bytes) is valid for the file itself but leaves no room for a suffix."""
    return path.with_name(f".preload-tmp-{os.getpid()}-{threading.get_ident()}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write a FILE_MODE file via a temp file, fsync, rename, fsync the directory (and any it
    had to create)."""
    created = make_dirs(path.parent)
    tmp = tmp_sibling(path)
    # A temp file left by a killed process with our pid and thread id is read-only: start anew.
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, FILE_MODE)
        os.fsync(fd)
    finally:
        os.close(fd)
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
