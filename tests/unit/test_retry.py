"""The retry policy: transient only, bounded, Retry-After honoured."""

from __future__ import annotations

import time

import pytest

from agent import retry
from agent.errors import DeadlineExceeded, NotFoundError, TransientError


def test_retries_transient_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Transient errors are retried until the call works."""
    monkeypatch.setenv("PRELOAD_RETRY_SCALE", "0")
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("503")
        return "ok"

    assert retry.call(flaky, retry.RetryPolicy(), "x") == "ok" and len(calls) == 3


def test_permanent_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A not-found error fails on the first attempt."""
    monkeypatch.setenv("PRELOAD_RETRY_SCALE", "0")
    calls = []

    def missing() -> None:
        calls.append(1)
        raise NotFoundError("gone")

    with pytest.raises(NotFoundError):
        retry.call(missing, retry.RetryPolicy(), "x")
    assert len(calls) == 1


def test_attempts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the last attempt the transient error surfaces."""
    monkeypatch.setenv("PRELOAD_RETRY_SCALE", "0")
    calls = []

    def down() -> None:
        calls.append(1)
        raise TransientError("502")

    with pytest.raises(TransientError):
        retry.call(down, retry.RetryPolicy(attempts=4), "x")
    assert len(calls) == 4


def test_retry_after_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Retry-After of 0.3 s makes the next attempt wait that long (not the jittered default)."""
    monkeypatch.setenv("PRELOAD_RETRY_SCALE", "1")
    stamps: list[float] = []

    def limited() -> str:
        stamps.append(time.monotonic())
        if len(stamps) == 1:
            raise TransientError("429", retry_after=0.3)
        return "ok"

    retry.call(limited, retry.RetryPolicy(initial_wait=10), "x")
    assert 0.25 <= stamps[1] - stamps[0] < 5


def test_deadline_stops_retrying(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait that would pass the deadline ends in DeadlineExceeded instead of sleeping."""
    monkeypatch.setenv("PRELOAD_RETRY_SCALE", "1")

    def down() -> None:
        raise TransientError("503", retry_after=60)

    with pytest.raises(DeadlineExceeded):
        retry.call(down, retry.RetryPolicy(deadline=time.monotonic() + 1), "x")
