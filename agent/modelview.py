"""What the agent's API says about a model and its config: one typed shape for both ends.

The agent (agent.node) builds these views and serves `to_dict()` as JSON; `preload wait --agent`
(agent.ops.wait) reads the JSON back with `from_dict()`. A value module: it imports no layer.
Field order is the JSON's key order, which docs/agent.md shows and clients may print.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from agent.spec import Layout

T = TypeVar("T")


class ModelState(StrEnum):
    """A configured model's state, as the API reports it."""

    PENDING = "pending"  # waiting for a slot or the start-up jitter, or found damaged
    DOWNLOADING = "downloading"  # a preload runs: listing, fetching, hashing
    VERIFYING = "verifying"  # a preload has every byte: last hash checks, then publish
    READY = "ready"
    FAILED = "failed"  # last_error says why, retry_in_seconds when the next attempt starts


class ViewError(ValueError):
    """A JSON object that is not a view this version understands (a field missing or mistyped)."""


@dataclass(frozen=True)
class ModelView:
    """One configured model: `GET /v1/models/ORG/NAME`, and each entry of `GET /v1/models`."""

    id: str
    revision: str
    layout: Layout
    required: bool
    pinned: bool
    sources: tuple[str, ...]
    state: ModelState
    commit: str | None  # known once the source resolved the revision, or from the marker
    path: str | None  # where readers open it; for hf-cache only once ready
    bytes_done: int | None
    bytes_total: int | None
    rate_bytes_per_second: float
    eta_seconds: float | None
    ready_since: str | None  # ISO 8601, seconds
    last_error: str | None
    retry_in_seconds: float | None  # only while failed
    checking: bool  # a periodic verification runs; the state stays ready meanwhile

    def to_dict(self) -> dict[str, Any]:
        """The JSON object the API serves."""
        return {
            "id": self.id,
            "revision": self.revision,
            "layout": self.layout.value,
            "required": self.required,
            "pinned": self.pinned,
            "sources": list(self.sources),
            "state": self.state.value,
            "commit": self.commit,
            "path": self.path,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "rate_bytes_per_second": self.rate_bytes_per_second,
            "eta_seconds": self.eta_seconds,
            "ready_since": self.ready_since,
            "last_error": self.last_error,
            "retry_in_seconds": self.retry_in_seconds,
            "checking": self.checking,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelView:
        """Parse the API's JSON object; raise ViewError if it is not one. Unknown keys are ignored
        (a newer agent may add some)."""
        try:
            layout, state = Layout(_get(data, "layout", str)), ModelState(_get(data, "state", str))
        except ValueError as exc:
            raise ViewError(str(exc)) from None
        sources = _get(data, "sources", list)
        if not all(isinstance(s, str) for s in sources):
            raise ViewError("sources: expected a list of strings")
        return cls(
            id=_get(data, "id", str),
            revision=_get(data, "revision", str),
            layout=layout,
            required=_get(data, "required", bool),
            pinned=_get(data, "pinned", bool),
            sources=tuple(sources),
            state=state,
            commit=_opt(data, "commit", str),
            path=_opt(data, "path", str),
            bytes_done=_opt(data, "bytes_done", int),
            bytes_total=_opt(data, "bytes_total", int),
            rate_bytes_per_second=_number(data, "rate_bytes_per_second"),
            eta_seconds=_opt_number(data, "eta_seconds"),
            ready_since=_opt(data, "ready_since", str),
            last_error=_opt(data, "last_error", str),
            retry_in_seconds=_opt_number(data, "retry_in_seconds"),
            checking=_get(data, "checking", bool),
        )


@dataclass(frozen=True)
class ConfigView:
    """Where the agent's config came from and whether the last change to it was rejected."""

    path: str
    loaded_at: str  # ISO 8601, seconds
    reload_error: str | None
    max_concurrent: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON object the API serves under `config` in `GET /v1/models`."""
        return {
            "path": self.path,
            "loaded_at": self.loaded_at,
            "reload_error": self.reload_error,
            "max_concurrent": self.max_concurrent,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfigView:
        """Parse the API's JSON object; raise ViewError if it is not one."""
        return cls(
            path=_get(data, "path", str),
            loaded_at=_get(data, "loaded_at", str),
            reload_error=_opt(data, "reload_error", str),
            max_concurrent=_get(data, "max_concurrent", int),
        )


def _get(data: Mapping[str, Any], key: str, kind: type[T]) -> T:
    value = data.get(key)
    # bool is an int to Python, never to JSON: a flag where a count belongs is a wrong view.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ViewError(f"{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _opt(data: Mapping[str, Any], key: str, kind: type[T]) -> T | None:
    if key not in data:
        raise ViewError(f"{key}: missing")
    return None if data[key] is None else _get(data, key, kind)


def _number(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ViewError(f"{key}: expected a number, got {type(value).__name__}")
    return float(value)


def _opt_number(data: Mapping[str, Any], key: str) -> float | None:
    if key not in data:
        raise ViewError(f"{key}: missing")
    return None if data[key] is None else _number(data, key)
