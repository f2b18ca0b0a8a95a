"""Page-aligned I/O buffers, lent for one use and given back.

A transfer's memory is its buffers. Lending them from a pool, rather than keeping one per
thread, makes the total follow the uses running at once (connections, read-backs), not
every thread that ever ran one; a returned buffer is reused warm instead of being mapped
and faulted in afresh. Buffers are anonymous mmaps: page-aligned, as O_DIRECT needs, and
only the pages actually touched count against the process's memory.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from agent.integrity import STREAM_BLOCK

DIRECT_ALIGN = 4096  # offsets, lengths and buffer addresses of O_DIRECT I/O


class BufferPool:
    """Buffers of one size; `lend()` hands one out for the duration of a `with` block."""

    def __init__(self, size: int) -> None:
        if size <= 0 or size % DIRECT_ALIGN:
            raise ValueError(f"buffer size {size} is not a positive multiple of {DIRECT_ALIGN}")
        self.size = size
        self._free: list[memoryview] = []
        self._lock = threading.Lock()
        self.created = 0  # high-water mark of buffers lent at once: the pool never shrinks

    @contextmanager
    def lend(self) -> Iterator[memoryview]:
        with self._lock:
            buf = self._free.pop() if self._free else None
            if buf is None:
                self.created += 1
        if buf is None:
            buf = memoryview(mmap.mmap(-1, self.size))
        try:
            yield buf
        finally:
            with self._lock:
                self._free.append(buf)


# Read buffers shared by every reader in the process (hash read-backs, directory-source reads).
READS = BufferPool(STREAM_BLOCK)
