"""Sleep until a file may have appeared or changed: inotify where it works, else a stat poll.

The file (a completion marker) and even its directories may not exist yet, so inotify watches
the nearest existing ancestor directory and moves down as directories appear. Any event there
wakes the caller, which then checks for itself: a wake-up is a hint, never a verdict. Where
inotify is missing (not Linux) or refuses (watch limits), the file is stat-ed every POLL
seconds instead. inotify sees nothing of writes made by other hosts on network filesystems,
so callers keep a slow periodic check of their own as well.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import time
from pathlib import Path
from types import TracebackType

POLL = 0.25
# Entries created, renamed in or out, written, deleted; the directory itself deleted or moved.
_IN_MODIFY = 0x2
_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_ONLYDIR = 0x1000000
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
)
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)


class PathWatch:
    """Wakes `wait()` early when `path` may have changed; `mode` says how ("inotify" or "poll")."""

    def __init__(self, path: Path, use_inotify: bool = True) -> None:
        self.path = path
        self.mode = "poll"
        self._fd = -1
        self._wd = -1
        self._watched: Path | None = None
        self._libc: ctypes.CDLL | None = None
        self._seen = self._signature()
        if use_inotify:
            self._start_inotify()

    def __enter__(self) -> PathWatch:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the inotify descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds; True as soon as something may have changed."""
        if self.mode == "inotify":
            return self._wait_inotify(timeout)
        deadline = time.monotonic() + timeout
        while True:
            signature = self._signature()
            if signature != self._seen:
                self._seen = signature
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL, left))

    # -- inotify ---------------------------------------------------------------------------

    def _start_inotify(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            return  # not Linux
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return
        self._libc, self._fd, self.mode = libc, fd, "inotify"
        self._follow()

    def _follow(self) -> None:
        """Watch the nearest existing ancestor of the path, moving down (or up) as needed."""
        while self.mode == "inotify":
            target = _nearest_dir(self.path.parent)
            if target == self._watched:
                return
            assert self._libc is not None
            # The same directory gives back the same watch: nothing is missed while re-adding.
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(target), _MASK)
            if wd < 0:
                if ctypes.get_errno() in (errno.ENOENT, errno.ENOTDIR):
                    continue  # removed under us: look again
                self.close()  # out of watches or not allowed: fall back to polling
                self.mode = "poll"
                return
            if self._wd >= 0 and self._wd != wd:
                self._libc.inotify_rm_watch(self._fd, self._wd)  # fails harmlessly if already gone
            # A directory created before this watch existed is found by the next pass.
            self._wd, self._watched = wd, target

    def _wait_inotify(self, timeout: float) -> bool:
        try:
            ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
        except InterruptedError:
            return True
        if not ready:
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 65536):
                pass
        self._watched = None  # re-add: the directory may have been replaced
        self._follow()
        return True

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino, st.st_size


def _nearest_dir(path: Path) -> Path:
    """`path` itself if it is a directory, else its nearest ancestor that is."""
    path = path.absolute()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path
