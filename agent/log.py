"""structlog configuration, done once per process; secrets are scrubbed from every event."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

Logger = FilteringBoundLogger  # what `get` returns: typed log calls everywhere

_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Never let `value` reach a log line, whatever field it hides in."""
    if value and len(value) >= 4:
        _secrets.add(value)


def scrub(text: str) -> str:
    """Replace every registered secret in `text`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _scrub_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _secrets:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = scrub(value)
            elif value is not None and not isinstance(value, int | float | bool):
                event[key] = scrub(str(value))
    return event


def _isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, AttributeError):  # closed, or replaced by something that is not a file
        return False


def wants_json(log_format: str) -> bool:
    """json -> True, console -> False; auto: console only when stdout and stderr are both terminals.

    The issue asks for JSON whenever stdout is not a terminal; the lines go to stderr, so `auto`
    looks at both: a person at a terminal gets console lines, `preload ... | tee` and pods get JSON.
    """
    if log_format != "auto":
        return log_format == "json"
    return not (_isatty(sys.stdout) and _isatty(sys.stderr))


def configure(log_format: str = "auto", level: str = "info") -> None:
    """Log to stderr, as JSON lines or console lines (see `wants_json`); secrets scrubbed."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if wants_json(log_format)
        else structlog.dev.ConsoleRenderer(colors=_isatty(sys.stderr))
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get(name: str = "preload") -> Logger:
    """A bound logger."""
    logger: Logger = structlog.get_logger(name)
    return logger
