"""Files being assembled, as other nodes may read them: by content hash, while bytes arrive.

A transfer given a `Shelf` puts each file it assembles there for its round. The agent's peer
server (agent/node/peerserve.py) finds a file by its expected hash and reads the part file
only where the transfer has written (a chunk's `written` count grows only after the bytes
are in the file). A peer asking for a chunk nobody has taken makes the transfer fetch it
from the origin now (`request`): the owner of a piece fetches it once, whoever asks first.
"""

from __future__ import annotations

import bisect
import os
import queue
import threading
from collections.abc import Callable, Iterator

from agent.engine.job import Job

Pull = Callable[[Job, int], bool]


class Shared:
    """One file of a running transfer, readable where written."""

    def __init__(self, job: Job, pull: Pull) -> None:
        self._job = job
        self._pull = pull
        self._starts = [s for s, _ in job.chunks]
        self.size = job.file.size
        self.active = True  # false once its round ended: nothing more will be written

    def open(self) -> int:
        """A read-only descriptor of the file: the part file, or where it was published since."""
        for path in (self._job.part, *self._job.ingest.finals):
            try:
                return os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
        raise FileNotFoundError(self._job.part)

    @property
    def complete(self) -> bool:
        """All of it is here and verified."""
        return self._job.committed

    def _index(self, pos: int) -> int:
        return bisect.bisect_right(self._starts, pos) - 1

    def available(self, pos: int) -> int:
        """Bytes readable from `pos` on, up to the end of its chunk (0: none yet)."""
        if self._job.finished:
            return self.size - pos
        idx = self._index(pos)
        if idx < 0:
            return 0
        start, _ = self._job.chunks[idx]
        return max(0, start + self._job.written[idx] - pos)

    def request(self, pos: int) -> bool:
        """Make sure someone is fetching the chunk holding `pos`; False if nobody will."""
        idx = self._index(pos)
        if not self.active or idx < 0:
            return False
        return self._pull(self._job, idx)


class Requests:
    """Chunks peers asked a transfer for, waiting for its round's loop to start them; open while
    the round runs (a request after that is refused: nothing more will be fetched)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Job, int, bool]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._open = False

    def share(self, shelf: Shelf | None, jobs: list[Job]) -> list[tuple[str, Shared]]:
        """Open for requests and put the round's files where peers find them (when the caller
        serves peers)."""
        if shelf is None:
            return []
        with self._lock:
            self._open = True
        out = [(job.file.digest.hex, Shared(job, self.pull)) for job in jobs]
        for key, item in out:
            shelf.put(key, item)
        return out

    def unshare(self, shelf: Shelf | None, shared: list[tuple[str, Shared]]) -> None:
        self.close()
        if shelf is not None:
            for key, item in shared:
                shelf.remove(key, item)

    def pull(self, job: Job, idx: int) -> bool:
        """A peer wants chunk `idx`: queue it for the origin unless someone is at it. False if
        the round is over."""
        with self._lock:
            if not self._open:
                return False
            if job.claim(idx):
                self._queue.put((job, idx, True))
            return True

    def give_back(self, job: Job, idx: int) -> None:
        """A pulled chunk the origin failed: queued for a worker of the transfer's own."""
        self._queue.put((job, idx, False))

    def drain(self) -> Iterator[tuple[Job, int, bool]]:
        """What is queued now: (job, chunk, from the origin for a peer)."""
        while not self._queue.empty():
            yield self._queue.get()

    def close_if_idle(self) -> bool:
        """Stop taking requests, unless one is queued (True: closed)."""
        with self._lock:
            if not self._queue.empty():
                return False
            self._open = False
            return True

    def close(self) -> None:
        with self._lock:
            self._open = False


class Shelf:
    """The shared files of every running transfer in this process, by content hash."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, Shared] = {}

    def put(self, key: str, shared: Shared) -> None:
        with self._lock:
            self._files[key] = shared

    def remove(self, key: str, shared: Shared) -> None:
        shared.active = False
        with self._lock:
            if self._files.get(key) is shared:
                del self._files[key]

    def get(self, key: str) -> Shared | None:
        with self._lock:
            return self._files.get(key)
