"""Log rendering: `auto` is console only when stdout and stderr are both terminals."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import TextIO

import pytest
import structlog

from agent import log

Stream = tuple[TextIO, Callable[[], str]]


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test configures structlog afresh; leave it as we found it."""
    yield
    structlog.reset_defaults()


def _stream(kind: str, opened: list[int]) -> Stream:
    """A writable text stream on a pseudo-terminal ("tty") or a pipe ("pipe"), and a reader of it."""
    if kind == "tty":
        read_fd, write_fd = os.openpty()
    else:
        read_fd, write_fd = os.pipe()
    opened.append(read_fd)
    writer = open(write_fd, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by the test
    return writer, lambda: os.read(read_fd, 65536).decode()


@pytest.mark.parametrize(
    ("log_format", "stdout", "stderr", "as_json"),
    [
        ("auto", "tty", "tty", False),
        ("auto", "pipe", "tty", True),
        ("auto", "tty", "pipe", True),
        ("auto", "pipe", "pipe", True),
        ("json", "tty", "tty", True),
        ("console", "pipe", "pipe", False),
    ],
)
def test_log_format_follows_both_streams(
    monkeypatch: pytest.MonkeyPatch, log_format: str, stdout: str, stderr: str, as_json: bool
) -> None:
    """The line written to stderr is JSON exactly when `wants_json` says so, for real ttys and pipes."""
    opened: list[int] = []
    out, _ = _stream(stdout, opened)
    err, read_err = _stream(stderr, opened)
    try:
        monkeypatch.setattr("sys.stdout", out)
        monkeypatch.setattr("sys.stderr", err)
        assert log.wants_json(log_format) is as_json
        log.configure(log_format)
        log.get().info("hello", answer=42)
        line = read_err().strip()
    finally:
        for f in (out, err):
            f.close()
        for fd in opened:
            os.close(fd)
    if as_json:
        assert json.loads(line)["event"] == "hello" and json.loads(line)["answer"] == 42
    else:
        with pytest.raises(ValueError):
            json.loads(line)
        assert "hello" in line and "answer" in line


def test_closed_or_missing_streams_count_as_not_terminals(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing stdout (None) or a closed one means JSON under `auto`, never an exception."""
    monkeypatch.setattr("sys.stdout", None)
    assert log.wants_json("auto") is True
    r, w = os.pipe()
    os.close(r)
    closed = open(w, "w")  # noqa: SIM115 - closed on the next line on purpose
    closed.close()
    monkeypatch.setattr("sys.stdout", closed)
    assert log.wants_json("auto") is True
