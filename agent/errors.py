"""Exception hierarchy; every error the CLI reports maps to one documented exit code."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    NOT_FOUND = 3
    INTEGRITY = 4
    DISK_SPACE = 5
    TRANSIENT = 6
    TIMEOUT = 7
    NOT_READY = 8


class PreloadError(Exception):
    """Base of every error we report as one clear line."""

    exit_code = ExitCode.FAILURE


class UsageError(PreloadError):
    """Bad input from the user: invalid id, revision, path or option."""

    exit_code = ExitCode.USAGE


class NotFoundError(PreloadError):
    """The repo, revision or file does not exist, or we have no access to it."""

    exit_code = ExitCode.NOT_FOUND


class GatedRepoError(NotFoundError):
    """The repo is gated and the token (if any) has not been granted access."""


class AuthError(NotFoundError):
    """The token was rejected."""


class IntegrityError(PreloadError):
    """Bytes did not match their expected hash or size, or a listing was hostile."""

    exit_code = ExitCode.INTEGRITY


class DiskSpaceError(PreloadError):
    """Not enough free space on the destination for what is still needed."""

    exit_code = ExitCode.DISK_SPACE

    def __init__(self, message: str, free_wanted: int | None = None) -> None:
        super().__init__(message)
        self.free_wanted = free_wanted  # bytes that must be free to go ahead, when known


class TransientError(PreloadError):
    """A failure worth retrying: connection trouble, 5xx, 408, 429."""

    exit_code = ExitCode.TRANSIENT

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Throttled(TransientError):
    """The server asked us to slow down (HTTP 429, 503): retried, and a transfer opens fewer
    connections to it from then on."""


class ConnectionRefused(TransientError):
    """Nothing accepts connections at the address: the server is down, or it is the wrong one.

    Retried like any transient error, but a caller may give it a smaller budget
    (`RetryPolicy.refused_attempts`): waiting a minute for a host that is not there helps nobody.
    """


def transport_error(what: str, host: str, exc: BaseException) -> TransientError:
    """The error for a connection-level failure talking to `host`, which the message names (the
    exception alone rarely does); a refused connection is a ConnectionRefused."""
    cls = ConnectionRefused if _refused(exc) else TransientError
    return cls(f"{what}: {host}: {type(exc).__name__}: {exc}")


def _refused(exc: BaseException) -> bool:
    """Whether ECONNREFUSED is anywhere in the chain (httpx wraps the OSError twice)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ConnectionRefusedError):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


class DeadlineExceeded(PreloadError):
    """The overall --timeout ran out."""

    exit_code = ExitCode.TIMEOUT


class NotReadyError(PreloadError):
    """A model checked by `verify` or `wait` is not complete."""

    exit_code = ExitCode.NOT_READY


class Interrupted(PreloadError):
    """Work stopped on request (the agent is shutting down); nothing is half-done on disk."""
