"""The shared pool of page-aligned I/O buffers."""

from __future__ import annotations

import ctypes
import threading

import pytest

from agent.buffers import DIRECT_ALIGN, BufferPool


def _address(buf: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def test_buffers_are_page_aligned_and_sized() -> None:
    """A lent buffer has the pool's size and an O_DIRECT-aligned address."""
    pool = BufferPool(64 << 10)
    with pool.lend() as buf:
        assert len(buf) == 64 << 10
        assert _address(buf) % DIRECT_ALIGN == 0


def test_returned_buffer_is_reused() -> None:
    """Sequential uses share one buffer: memory follows concurrent uses, not uses in all."""
    pool = BufferPool(DIRECT_ALIGN)
    for _ in range(5):
        with pool.lend() as buf:
            first = _address(buf)
    with pool.lend() as buf:
        assert _address(buf) == first
    assert pool.created == 1


def test_concurrent_uses_get_distinct_buffers() -> None:
    """Buffers lent at the same time never alias; the pool grows to the peak in use."""
    pool = BufferPool(DIRECT_ALIGN)
    held = threading.Barrier(4)
    seen: list[int] = []
    lock = threading.Lock()

    def use() -> None:
        with pool.lend() as buf:
            with lock:
                seen.append(_address(buf))
            held.wait(timeout=10)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 4
    assert pool.created == 4


def test_buffer_returns_to_pool_on_error() -> None:
    """A use that raises still gives its buffer back."""
    pool = BufferPool(DIRECT_ALIGN)
    with pytest.raises(RuntimeError), pool.lend():
        raise RuntimeError("boom")
    with pool.lend():
        pass
    assert pool.created == 1


@pytest.mark.parametrize("size", [0, -4096, 1000])
def test_unaligned_sizes_are_refused(size: int) -> None:
    """Sizes that O_DIRECT could not use are a programming error."""
    with pytest.raises(ValueError, match="multiple of 4096"):
        BufferPool(size)
