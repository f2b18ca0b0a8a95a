"""How files are cut into ranges, and when the lean body reader may be used."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.engine.job import Job
from agent.engine.splitter import MIN_CHUNK, auto_chunk_size
from agent.integrity import SHA256, Digest
from agent.manifest import RemoteFile
from agent.sources.ranged import proxied
from agent.store.ingest import JOURNAL_SUFFIX

GIB = 1 << 30


def _ranges(size: int, total: int, workers: int = 16) -> int:
    return -(-size // auto_chunk_size(size, total, workers))


def test_connections_are_spread_over_files_by_size() -> None:
    """Three equal shards share 16 connections (5 each); one big file takes them all."""
    assert [_ranges(GIB, 3 * GIB)] * 3 == [5, 5, 5]
    assert _ranges(GIB, GIB) == 16
    assert _ranges(10 * GIB, 11 * GIB) == 14 and _ranges(GIB, 11 * GIB) == 1


def test_many_files_stream_whole_and_small_files_are_not_split() -> None:
    """More files than connections: each file is one stream; nothing is cut below MIN_CHUNK."""
    assert _ranges(5 * GIB, 30 * 5 * GIB) == 1
    assert _ranges(40 << 20, 40 << 20) == 2
    assert auto_chunk_size(MIN_CHUNK // 2, MIN_CHUNK // 2, 16) >= MIN_CHUNK // 2
    assert auto_chunk_size(0, 0, 16) > 0


def test_a_resumed_file_keeps_the_layout_of_its_journal(tmp_path: Path) -> None:
    """A journal written with another range size (e.g. other --max-workers) is still honoured."""
    f = RemoteFile("w.safetensors", 100 << 20, Digest(SHA256, "a" * 64))
    part = tmp_path / "x.part"
    part.with_name(part.name + JOURNAL_SUFFIX).write_text(f"v1 {f.size} {8 << 20} {'a' * 64}\n0 123\n")
    assert len(Job(f, part, [tmp_path / "out"], 50 << 20).chunks) == 13
    other = RemoteFile("w.safetensors", 100 << 20, Digest(SHA256, "b" * 64))
    assert len(Job(other, part, [tmp_path / "out"], 50 << 20).chunks) == 2


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({}, "https://cdn.example/x", False),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://cdn.example/x", True),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "http://cdn.example/x", False),
        ({"ALL_PROXY": "http://proxy:3128"}, "http://cdn.example/x", True),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "cdn.example"}, "https://cdn.example/x", False),
        ({"https_proxy": "http://proxy:3128", "no_proxy": ".example"}, "https://cdn.example/x", False),
    ],
)
def test_proxied_urls_are_left_to_httpx(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, expected: bool
) -> None:
    """The lean reader is used only when no proxy applies to the URL."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert proxied(url) is expected
