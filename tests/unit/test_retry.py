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


def test_jittered_waits_differ_and_stay_within_the_documented_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempt n waits uniformly in [cap/2, cap], cap = min(max_wait, initial_wait * 2**(n-1)); draws vary."""
    monkeypatch.setenv("PRELOAD_RETRY_SCALE", "1")
    policy = retry.RetryPolicy(initial_wait=0.5, max_wait=30.0)
    for attempt in range(1, 11):
        cap = min(30.0, 0.5 * 2 ** (attempt - 1))
        waits = [retry.backoff(policy, attempt) for _ in range(200)]
        assert all(cap / 2 <= w <= cap for w in waits), (attempt, min(waits), max(waits))
        assert len(set(waits)) > 150, f"attempt {attempt}: the waits are not jittered"
        assert max(waits) - min(waits) > cap / 4, "the draws should spread over the interval"


def test_server_waits_are_used_as_given_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Retry-After/RateLimit wait replaces the jitter (no randomness), capped at MAX_RETRY_AFTER."""
    monkeypatch.setenv("PRELOAD_RETRY_SCALE", "1")
    policy = retry.RetryPolicy()
    assert {retry.backoff(policy, 3, retry_after=1.0) for _ in range(20)} == {1.0}
    assert retry.backoff(policy, 1, retry_after=10_000) == retry.MAX_RETRY_AFTER
    monkeypatch.setenv("PRELOAD_RETRY_SCALE", "0")
    assert retry.backoff(policy, 5) == 0 and retry.backoff(policy, 1, retry_after=7) == 0


def test_total_time_bounds_endless_transient_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Endless transient errors stop once the next wait would pass total_seconds, with the transient error."""
    monkeypatch.setenv("PRELOAD_RETRY_SCALE", "1")
    stamps: list[float] = []

    def down() -> None:
        stamps.append(time.monotonic())
        raise TransientError("503")

    policy = retry.RetryPolicy(attempts=100, total_seconds=1.0, initial_wait=0.2, max_wait=0.4)
    started = time.monotonic()
    with pytest.raises(TransientError):
        retry.call(down, policy, "x")
    assert time.monotonic() - started < 1.0 + 0.5, "no wait may run past the bound"
    assert 3 <= len(stamps) < 100, "the time bound, not the attempt bound, ended it"


def test_total_time_bound_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """PRELOAD_RETRY_MAX_TIME sets the default total-time bound (600 s without it or when invalid)."""
    monkeypatch.delenv("PRELOAD_RETRY_MAX_TIME", raising=False)
    assert retry.RetryPolicy().total_seconds == 600.0
    monkeypatch.setenv("PRELOAD_RETRY_MAX_TIME", "2.5")
    assert retry.RetryPolicy().total_seconds == 2.5
    monkeypatch.setenv("PRELOAD_RETRY_MAX_TIME", "soon")
    assert retry.RetryPolicy().total_seconds == 600.0


def test_refused_connections_have_their_own_smaller_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """With refused_attempts, a refused connection stops early; other transient errors keep the
    whole budget; the error says it was refused and names the host."""
    import httpx

    from agent.errors import ConnectionRefused, transport_error

    monkeypatch.setenv("PRELOAD_RETRY_SCALE", "0")
    with pytest.raises(httpx.ConnectError) as caught:
        httpx.get("http://127.0.0.1:9/", timeout=2)
    refused = transport_error("listing x", "127.0.0.1:9", caught.value)
    assert isinstance(refused, ConnectionRefused) and "127.0.0.1:9" in str(refused)
    policy = retry.RetryPolicy(refused_attempts=3)
    for error, attempts in ((refused, 3), (TransientError("503"), 8)):
        calls: list[int] = []

        def fail(error: TransientError = error, calls: list[int] = calls) -> None:
            calls.append(1)
            raise error

        with pytest.raises(TransientError):
            retry.call(fail, policy, "x")
        assert len(calls) == attempts
    assert not isinstance(transport_error("x", "h", OSError("reset")), ConnectionRefused)
