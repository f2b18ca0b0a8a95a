"""Ingest: one file written into the store, then committed (after containerd's content writer).

The engine decides what goes where in the part file and feeds the hasher; this object owns the
part file and its journal from creation to commit or discard, and the commit itself:

    part file + journal + hash state
      -> verify (the digest the bytes hashed to against the listing's)
      -> fchmod FILE_MODE, fdatasync
      -> rename part -> first final, remove the journal
      -> link (or copy) the other finals with the same content
      -> directory fsync (batched: see PendingDirs)

A file is in its final place only once its bytes matched its digest and are on disk, so a
final path either does not exist or holds the verified content.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from agent import crashpoints, log
from agent.errors import DiskSpaceError, IntegrityError
from agent.integrity import PENDING_SHA256, SHA256, Digest, Hasher
from agent.manifest import RemoteFile
from agent.store.fs import FILE_MODE, PendingDirs, is_no_space, make_dirs, tmp_sibling

JOURNAL_SUFFIX = ".journal"
COMPUTED_SUFFIX = ".sha256"  # next to a committed file whose digest was pending: what it hashed to
JOURNAL_VERSION = "v1"
PART_MODE = 0o644
_O_DIRECT = getattr(os, "O_DIRECT", 0)


class Ingest:
    """One file (by content) being assembled in staging, then committed to its final paths.

    The journal is a header (`v1 SIZE FIRST_RANGE DIGEST`) then `INDEX BYTES` lines: how far
    each range of the part file has been written. What a range is belongs to the writer; the
    store keeps the records and drops them when the header does not match.
    """

    def __init__(self, file: RemoteFile, part: Path, finals: Sequence[Path]) -> None:
        if not finals:
            raise ValueError(f"{file.path}: an ingest needs at least one final path")
        self.file = file
        self.part = part
        self.journal = part.with_name(part.name + JOURNAL_SUFFIX)
        self.finals = tuple(finals)
        self.hasher: Hasher = file.digest.hasher(file.size)
        self.fd: int | None = None
        self.dfd: int | None = None  # the same part file opened with O_DIRECT, where allowed
        self.direct_ok = True  # cleared when a filesystem accepts O_DIRECT at open, refuses at write
        self.jfd: int | None = None

    def journaled_range(self) -> int | None:
        """The first range size an earlier run journaled for this content, so the writer can cut
        the file the same way and the journal stays valid."""
        try:
            with open(self.journal, encoding="ascii", errors="replace") as f:
                header = f.readline().split()
        except OSError:
            return None
        if header[:2] != [JOURNAL_VERSION, str(self.file.size)] or header[3:] != [self.file.digest.hex]:
            return None
        with contextlib.suppress(ValueError):
            first = int(header[2])
            return first if first > 0 else None
        return None

    def open(self, first_range: int, *, journaled: bool, direct: bool) -> list[tuple[int, int]]:
        """Create the part file, or resume it: the journal's `(index, bytes)` records when an
        earlier run's journal matches (`journaled` files only), else none and an empty part file.

        The whole size is allocated up front, so a full disk fails here rather than mid-write.
        `direct` also opens the part with O_DIRECT where the filesystem allows it.
        """
        make_dirs(self.part.parent)  # staging: not fsynced, a lost part file is only refetched
        header = f"{JOURNAL_VERSION} {self.file.size} {first_range} {self.file.digest.hex}\n"
        records = self._load_journal(header) if journaled and self.part.exists() else None
        if records is None:
            with contextlib.suppress(FileNotFoundError):
                self.journal.unlink()
        flags = os.O_RDWR | os.O_CREAT | (0 if records is not None else os.O_TRUNC)
        try:
            self.fd = os.open(self.part, flags, PART_MODE)
        except PermissionError:
            # Killed between the commit's fchmod and its rename: the part is read-only.
            os.chmod(self.part, PART_MODE)
            self.fd = os.open(self.part, flags, PART_MODE)
        try:
            if self.file.size:
                os.posix_fallocate(self.fd, 0, self.file.size)
        except OSError as exc:
            self.close()
            if is_no_space(exc):
                raise DiskSpaceError(f"no space left for {self.file.path} on {self.part.parent}") from exc
            raise
        if direct and _O_DIRECT:
            with contextlib.suppress(OSError):  # EINVAL: the filesystem has no direct I/O
                self.dfd = os.open(self.part, os.O_RDWR | _O_DIRECT)
        if journaled:
            self.jfd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PART_MODE)
            if records is None:
                os.write(self.jfd, header.encode())
        return records or []

    def _load_journal(self, header: str) -> list[tuple[int, int]] | None:
        try:
            lines = self.journal.read_text().splitlines()
        except OSError:
            return None
        if not lines or lines[0] + "\n" != header:
            return None
        records: list[tuple[int, int]] = []
        for line in lines[1:]:
            try:
                idx_s, n_s = line.split()
                records.append((int(idx_s), int(n_s)))
            except ValueError:
                continue  # a torn last line from a kill mid-write
        return records

    def record(self, idx: int, written: int) -> None:
        """Journal that range `idx` has `written` bytes (an append without fsync: cheap, and a
        kill -9 loses only what the page cache had not written back)."""
        if self.jfd is not None:
            os.write(self.jfd, f"{idx} {written}\n".encode())

    def close(self) -> None:
        """Close descriptors."""
        for fd in (self.fd, self.dfd, self.jfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.dfd = self.jfd = None

    def discard(self) -> None:
        """Delete the part file and journal (after a hash mismatch)."""
        self.close()
        for p in (self.part, self.journal):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def commit(self, dirs: PendingDirs, *, drop_cache: bool = False) -> None:
        """Verify, then publish the part at every final path (the part must be open).

        A mismatch raises IntegrityError and commits nothing; the caller discards or retries.
        The directories that gained entries are added to `dirs` for the caller to fsync once
        its batch is done.
        """
        got = self.hasher.hexdigest()
        want = self.file.digest.hex
        pending = self.file.digest.algo == PENDING_SHA256
        if pending:
            want = got  # nothing to compare with: the digest is the one computed now
        if got != want:
            log.get().warning(
                "hash_mismatch", file=self.file.path, algo=self.file.digest.algo, expected=want, got=got
            )
            raise IntegrityError(f"{self.file.path}: {self.file.digest.algo} mismatch")
        assert self.fd is not None, "commit of an ingest that was never opened"
        # Mode before data sync and rename: a crash never leaves a writable final file.
        os.fchmod(self.fd, FILE_MODE)
        os.fdatasync(self.fd)
        if drop_cache:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self.close()
        first = self.finals[0]
        dirs.add(*make_dirs(first.parent))
        if pending:
            # Kept beside the file for the engine (engine/computed.py). Not synced: one lost to
            # a crash is computed again from the file.
            computed_path(first).write_text(got, encoding="ascii")
        os.replace(self.part, first)
        crashpoints.reached("file_renamed")
        with contextlib.suppress(FileNotFoundError):
            self.journal.unlink()
        dirs.add(first.parent)
        for other in self.finals[1:]:
            link(first, other, dirs)


def computed_path(final: Path) -> Path:
    """Where the digest computed for a file committed with a pending one is kept."""
    return final.with_name(final.name + COMPUTED_SUFFIX)


def computed_digest(final: Path) -> Digest | None:
    """The sha256 recorded by the commit of a file whose digest was pending, if it is there."""
    try:
        return Digest(SHA256, computed_path(final).read_text(encoding="ascii").strip())
    except (OSError, ValueError, IntegrityError):
        return None


def link(src: Path, dst: Path, dirs: PendingDirs) -> None:
    """Publish the committed file `src` at `dst` too: a hard link (one inode, so also FILE_MODE),
    else a durable read-only copy. Replaces whatever `dst` was; `dirs` as in `Ingest.commit`."""
    dirs.add(*make_dirs(dst.parent))
    tmp = tmp_sibling(dst)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:  # a filesystem without hard links: a durable copy
        shutil.copyfile(src, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fchmod(fd, FILE_MODE)
            os.fdatasync(fd)
        finally:
            os.close(fd)
    else:
        # A file published before modes were enforced is writable; the inode is shared, so this
        # fixes every name of it. Not ours to change (another uid's): leave it as it is.
        if os.stat(tmp).st_mode & 0o777 != FILE_MODE:
            with contextlib.suppress(PermissionError):
                os.chmod(tmp, FILE_MODE)
    os.replace(tmp, dst)
    dirs.add(dst.parent)
