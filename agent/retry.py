"""The one retry policy: transient errors only, bounded by attempts and time, jittered.

Attempt n (1-based) is followed by a wait drawn uniformly from [cap/2, cap], where
cap = min(max_wait, initial_wait * 2**(n-1)); a server's Retry-After or RateLimit reset
replaces it (capped at MAX_RETRY_AFTER). `PRELOAD_RETRY_SCALE` multiplies every wait (0 makes
retries instant in tests); `PRELOAD_RETRY_MAX_TIME` (seconds) sets the total-time bound: no
retry starts whose wait would end past it. A refused connection may have a smaller attempt
budget of its own (`refused_attempts`), for callers that should not wait long for a host that
is not there.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import tenacity

from agent import log
from agent.errors import ConnectionRefused, DeadlineExceeded, TransientError

T = TypeVar("T")
MAX_RETRY_AFTER = 120.0
# Called with `what` before each retry; the agent counts retries here for its metrics.
_listeners: list[Callable[[str], None]] = []


def add_listener(fn: Callable[[str], None]) -> None:
    """Call `fn(what)` before every retry, once per registration of the same function."""
    if fn not in _listeners:
        _listeners.append(fn)


def _env_seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for retrying one operation."""

    attempts: int = 8
    total_seconds: float = field(default_factory=lambda: _env_seconds("PRELOAD_RETRY_MAX_TIME", 600.0))
    initial_wait: float = 0.5
    max_wait: float = 30.0
    deadline: float | None = None  # time.monotonic() after which nothing is retried
    refused_attempts: int | None = None  # attempts while connections are refused; None: `attempts`

    def scale(self) -> float:
        """Wait multiplier from the environment (tests set 0)."""
        try:
            return max(0.0, float(os.environ.get("PRELOAD_RETRY_SCALE", "1")))
        except ValueError:
            return 1.0


def backoff(policy: RetryPolicy, attempt: int, retry_after: float | None = None) -> float:
    """The wait after failed attempt `attempt` (1-based): the server's, else jittered exponential."""
    if retry_after is not None:
        wait = min(float(retry_after), MAX_RETRY_AFTER)
    else:
        cap = min(policy.max_wait, policy.initial_wait * 2 ** (attempt - 1))
        wait = random.uniform(cap / 2, cap)  # noqa: S311 - jitter, not crypto
    return wait * policy.scale()


def _wait(policy: RetryPolicy) -> Callable[[tenacity.RetryCallState], float]:
    def compute(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        wait = backoff(policy, state.attempt_number, getattr(exc, "retry_after", None))
        if policy.deadline is not None:
            left = policy.deadline - time.monotonic()
            if wait >= left:
                raise DeadlineExceeded("timed out while waiting to retry") from exc
        return wait

    return compute


def call(fn: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """Run `fn`, retrying TransientError under `policy`; log each retry with its cause."""
    import tenacity  # deferred: a warm start (model already complete) never retries anything

    logger = log.get()

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "retry", what=what, attempt=state.attempt_number, wait_s=round(wait, 2), cause=str(exc)
        )
        for listener in _listeners:
            listener(what)

    # stop_before_delay counts the coming wait: no retry is started past the time bound.
    bounds = tenacity.stop_after_attempt(policy.attempts) | tenacity.stop_before_delay(policy.total_seconds)

    def stop(state: tenacity.RetryCallState) -> bool:
        if bounds(state):
            return True
        exc = state.outcome.exception() if state.outcome else None
        refused = policy.refused_attempts
        return refused is not None and isinstance(exc, ConnectionRefused) and state.attempt_number >= refused

    retryer = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TransientError),
        stop=stop,
        wait=_wait(policy),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retryer(fn)
