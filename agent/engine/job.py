"""One file (by content) being assembled: its chunks, who has claimed them, how far each got.

The part file, its journal and the commit belong to the store's `Ingest`; a job cuts the file
into chunks, hands them to workers and keeps the hash frontier's state (see hashing.py).
"""

from __future__ import annotations

import threading
from pathlib import Path

from agent.integrity import Hasher
from agent.manifest import RemoteFile
from agent.store.fs import PendingDirs
from agent.store.ingest import Ingest

JOURNAL_EVERY = 256 << 10  # an append without fsync: cheap, and a kill -9 loses less per connection
DIRECT_MIN = 4 << 20  # files from this size are written with O_DIRECT (their own stream, at least)


class Job:
    """One file (by content) being assembled in staging."""

    def __init__(self, file: RemoteFile, part: Path, finals: list[Path], chunk_size: int) -> None:
        self.file = file
        self.ingest = Ingest(file, part, finals)
        size = file.size
        # An earlier run's cut wins, so its journal stays valid (e.g. after another --max-workers).
        chunk_size = self.ingest.journaled_range() or chunk_size
        self.chunks = [(s, min(s + chunk_size, size)) for s in range(0, size, chunk_size)]
        self.written = [0] * len(self.chunks)
        self.hasher: Hasher = self.ingest.hasher
        self.hash_pos = 0  # bytes folded into the hasher, in order
        self.claimed = [False] * len(self.chunks)  # chunks a worker has taken
        self.cached = [False] * len(self.chunks)  # written through the page cache by this run
        self.finished = False  # every byte written and hashed
        self.committed = False  # ... and the hash matched: published
        self.lock = threading.Lock()
        self.hash_lock = threading.Lock()
        self.resumed = 0

    @property
    def part(self) -> Path:
        return self.ingest.part

    @property
    def journaled(self) -> bool:
        return self.file.size > JOURNAL_EVERY

    def open(self) -> bool:
        """Open (or resume) the part file; idempotent. False once the file is finished (published):
        a worker arriving late must not recreate it."""
        with self.lock:
            if self.finished:
                return False
            if self.ingest.fd is not None:
                return True
            first = self.chunks[0][1] if self.chunks else 0
            records = self.ingest.open(first, journaled=self.journaled, direct=self.file.size >= DIRECT_MIN)
            for idx, n in records:
                if 0 <= idx < len(self.chunks):
                    start, end = self.chunks[idx]
                    self.written[idx] = max(self.written[idx], min(n, end - start))
            self.resumed = sum(self.written)
            return True

    def claim_next(self) -> int | None:
        """The first chunk nobody has taken (the file's sequential stream)."""
        with self.lock:
            idx = next((i for i, taken in enumerate(self.claimed) if not taken), None)
            if idx is not None:
                self.claimed[idx] = True
            return idx

    def claim(self, idx: int) -> bool:
        """Take chunk `idx` if nobody has and it is not complete (a peer asked for it first)."""
        with self.lock:
            if self.claimed[idx] or self._complete(idx) or self.finished:
                return False
            self.claimed[idx] = True
            return True

    def _complete(self, idx: int) -> bool:
        start, end = self.chunks[idx]
        return self.written[idx] >= end - start

    def claim_last(self) -> int | None:
        """The last chunk nobody has taken, if the sequential stream has already started
        (a helper works from the far end so the stream keeps hashing in memory)."""
        with self.lock:
            if not self.claimed or not self.claimed[0]:
                return None
            free = [i for i, taken in enumerate(self.claimed) if not taken and not self._complete(i)]
            idx = free[-1] if free else None
            if idx is not None:
                self.claimed[idx] = True
            return idx

    def unclaimed_bytes(self) -> int:
        """Bytes in chunks nobody has taken yet."""
        with self.lock:
            return sum(e - s - self.written[i] for i, (s, e) in enumerate(self.chunks) if not self.claimed[i])

    def record(self, idx: int) -> None:
        """Journal how far chunk `idx` has got."""
        self.ingest.record(idx, self.written[idx])

    def commit(self, dirs: PendingDirs, drop_cache: bool) -> bool:
        """Verify and publish the file (see `Ingest.commit`); an empty file is created here.
        False if another worker already did."""
        if self.ingest.fd is None and not self.open():
            return False
        self.ingest.commit(dirs, drop_cache=drop_cache)
        self.committed = True
        return True

    def close(self) -> None:
        self.ingest.close()

    def discard(self) -> None:
        """Delete the part file and journal (after a hash mismatch)."""
        self.ingest.discard()
