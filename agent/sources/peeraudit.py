"""Checking peers' bytes against the origin's, cheaply, so a liar is caught early and alone.

The file hash is what decides readiness; this only decides whom to stop asking. Two checks:

- a spot check: the first SAMPLE bytes of a piece from a peer are compared with the origin's
  (fetched at the same time, a few KiB). Every one of a peer's first FIRST_CHECKED pieces is
  checked, then one in CHECK_EVERY at random: a peer that sends garbage is excluded on its
  first piece instead of after whole files, and the origin sends a few KiB per piece checked;
- after a file fails its hash, each range a peer supplied is compared with the origin's: a
  leading sample first, then, if no sample differs, every byte (a subtle liar). Only peers whose
  bytes differ are blamed; a peer whose bytes cannot be compared (origin down) is blamed too.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent.errors import PreloadError
from agent.manifest import RemoteFile
from agent.sources.base import Block, Snapshot, Source
from agent.spec import ModelSpec

SAMPLE = 4096
FIRST_CHECKED = 4
CHECK_EVERY = 16
BLAME_SAMPLE = 64 << 10


@dataclass(frozen=True)
class Supplied:
    """Bytes [start, end) of a file came from `peer`."""

    peer: str
    start: int
    end: int


class Audit:
    """Spot checks and blame for one download; thread-safe."""

    def __init__(self, origin: Source) -> None:
        self._origin = origin
        self._lock = threading.Lock()
        self._passed: Counter[str] = Counter()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="peer-audit")

    def wants_check(self, peer: str) -> bool:
        """Whether this piece from `peer` gets a spot check: always until it has passed
        FIRST_CHECKED of them (however many pieces are asked of it at once), then at random."""
        with self._lock:
            early = self._passed[peer] < FIRST_CHECKED
        return early or random.randrange(CHECK_EVERY) == 0  # noqa: S311 - sampling, not crypto

    def sample(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Future[bytes | None]:
        """The origin's first bytes of [start, end), fetched in the background (None: unreachable)."""
        return self._pool.submit(self._read, spec, snap, file, start, min(end, start + SAMPLE))

    def _read(self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int) -> bytes | None:
        out = bytearray()
        try:
            with self._origin.open_range(spec, snap, file, start, end) as blocks:
                for block in blocks:
                    out += block
        except PreloadError:
            return None  # no origin to compare with: the file hash still decides
        return bytes(out)

    def matches(self, peer: str, sample: bytes | None, first: Block) -> bool:
        """Whether a peer's first block agrees with the origin's sample (True without a sample)."""
        if sample is None:
            return True
        n = min(len(sample), len(first))
        same = bytes(first[:n]) == sample[:n]
        if same:
            with self._lock:
                self._passed[peer] += 1
        return same

    def blame(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, part: Path, supplied: list[Supplied]
    ) -> dict[str, str]:
        """Peers whose bytes in `part` differ from the origin's, with why."""
        blamed: dict[str, str] = {}
        for limit in (BLAME_SAMPLE, None):
            for s in supplied:
                if s.peer in blamed:
                    continue
                end = s.end if limit is None else min(s.end, s.start + limit)
                try:
                    if not self._same(spec, snap, file, part, s.start, end):
                        blamed[s.peer] = "sent bytes that differ from the origin's"
                except (OSError, PreloadError) as exc:
                    blamed[s.peer] = f"its bytes could not be compared with the origin's: {exc}"
            if blamed:
                break  # found by the samples: no need to fetch every supplied byte again
        return blamed

    def _same(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, part: Path, start: int, end: int
    ) -> bool:
        fd = os.open(part, os.O_RDONLY)
        try:
            pos = start
            with self._origin.open_range(spec, snap, file, start, end) as blocks:
                for block in blocks:
                    if os.pread(fd, len(block), pos) != block:
                        return False
                    pos += len(block)
            return pos == end
        finally:
            os.close(fd)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
