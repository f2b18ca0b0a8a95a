"""Reading a source directory without trusting it: symlinks must stay inside the root, only
regular files are read, opened so a swapped-in FIFO cannot hang us, and read in large blocks
(O_DIRECT where the filesystem allows it)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator

from agent.buffers import DIRECT_ALIGN, READS
from agent.errors import IntegrityError, NotFoundError, PreloadError
from agent.integrity import safe_relpath
from agent.sources.kinds import SKIP_DIRS, SKIP_PATHS

_O_NOATIME = getattr(os, "O_NOATIME", 0)
_O_DIRECT = getattr(os, "O_DIRECT", 0)
DIRECT_MIN = 4 << 20  # smaller files are read through the page cache: one request either way


def _set_direct(fd: int, on: bool) -> bool:
    """Switch O_DIRECT on or off for an open file; False where the filesystem refuses it."""
    if not _O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
    except OSError:
        return False
    return True


def inside(real_root: str, path: str) -> bool:
    return os.path.commonpath([real_root, path]) == real_root


def check_file(real_root: str, path: str, rel: str, size: int | None = None) -> str:
    """The real path of a source file after the safety rules, or a clear error."""
    real = os.path.realpath(path)
    if not inside(real_root, real):
        raise IntegrityError(f"source file {rel!r} is a symlink leading out of {real_root}: refusing it")
    try:
        st = os.stat(real)
    except FileNotFoundError as exc:
        raise NotFoundError(f"source file {rel!r} is missing ({path})") from exc
    except OSError as exc:
        raise PreloadError(f"cannot read source file {rel!r}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise IntegrityError(f"source file {rel!r} is {_kind(st.st_mode)}, not a regular file: refusing it")
    if not os.access(real, os.R_OK):
        raise PreloadError(f"source file {rel!r} is not readable ({real}): check its permissions")
    if size is not None and st.st_size != size:
        raise IntegrityError(f"source file {rel!r} has {st.st_size} bytes, its manifest says {size}")
    return real


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "a special file"


def walk(real_root: str, top: str) -> Iterator[tuple[str, str]]:
    """(relative path, real path) of every file under `top`, applying the safety rules."""
    seen: set[str] = set()

    def walk(directory: str, prefix: str) -> Iterator[tuple[str, str]]:
        real_dir = os.path.realpath(directory)
        if not inside(real_root, real_dir):
            raise IntegrityError(f"source directory {prefix!r} is a symlink leading out of {real_root}")
        if real_dir in seen:
            raise IntegrityError(f"source directory {prefix!r} is a symlink loop")
        seen.add(real_dir)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise PreloadError(f"cannot list source directory {directory}: {exc.strerror}") from exc
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            if entry.name in SKIP_DIRS or rel in SKIP_PATHS:
                continue
            safe_relpath(rel)
            if entry.is_dir(follow_symlinks=True) and inside(real_root, os.path.realpath(entry.path)):
                yield from walk(entry.path, rel + "/")
            else:
                yield rel, check_file(real_root, entry.path, rel)

    return walk(top, "")


def open_regular(path: str, rel: str) -> int:
    # O_NONBLOCK: a file swapped for a FIFO after listing must not hang us in open().
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags | _O_NOATIME)
        except PermissionError:
            fd = os.open(path, flags)  # O_NOATIME needs ownership; atime is not worth failing for
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IntegrityError(f"source file {rel!r} became a symlink while copying") from exc
        raise PreloadError(f"cannot open source file {rel!r}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IntegrityError(f"source file {rel!r} is not a regular file: refusing it")
    return fd


def read_blocks(fd: int, path: str, start: int, end: int, drop_cache: bool) -> Iterator[memoryview]:
    """Read [start, end) into one buffer, refilled in place (the consumer writes and hashes
    each block before asking for the next).

    Large files are read with O_DIRECT where the filesystem allows it: the disk (or NFS
    server) fills our buffer directly, which saves the kernel's copy out of the page cache
    (a third of a copy's system time) and leaves the page cache, which counts against the
    pod's memory limit, to the model's readers. Buffered reads are the fallback.
    """
    # Page-aligned, as O_DIRECT needs; reads start on an aligned offset.
    with READS.lend() as buf:
        direct = end - start >= DIRECT_MIN and _set_direct(fd, True)
        pos = start - start % DIRECT_ALIGN if direct else start
        skip = start - pos
        while pos < end:
            want = min(len(buf), end - pos)
            if direct:
                want = min(len(buf), -(-want // DIRECT_ALIGN) * DIRECT_ALIGN)
            try:
                n = os.preadv(fd, [buf[:want]], pos)
            except OSError as exc:
                if direct and exc.errno == errno.EINVAL and _set_direct(fd, False):
                    # Accepted by fcntl, refused at read: go on through the page cache.
                    direct = False
                    pos, skip = pos + skip, 0
                    continue
                raise PreloadError(f"cannot read {path}: {exc.strerror}") from exc
            n = min(n, end - pos)
            if n <= skip:
                raise IntegrityError(f"{path} ended at byte {pos}, expected {end}: changed while copied?")
            if drop_cache and not direct:
                # Pages read from a shared volume count against the pod's memory limit too.
                os.posix_fadvise(fd, pos, n, os.POSIX_FADV_DONTNEED)
            block = buf[skip:n]
            pos, skip = pos + n, 0
            yield block
