"""The API's model and config views: the JSON the agent serves, and `wait --agent` reading it back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.modelview import ConfigView, ModelState, ModelView, ViewError
from agent.spec import Layout

# docs/agent.md's example answer of GET /v1/models/ORG/NAME, key order included.
DOCUMENTED = {
    "id": "meta-llama/Llama-3.1-8B-Instruct",
    "revision": "main",
    "layout": "dir",
    "required": True,
    "pinned": True,
    "sources": ["hf"],
    "state": "downloading",
    "commit": "0e9e39f249a16976918f6564b8830bc894c89659",
    "path": "/data/models/meta-llama/Llama-3.1-8B-Instruct",
    "bytes_done": 5368709120,
    "bytes_total": 16060522240,
    "rate_bytes_per_second": 412000000.0,
    "eta_seconds": 25.9,
    "ready_since": None,
    "last_error": None,
    "retry_in_seconds": None,
    "checking": False,
}


def test_the_documented_answer_round_trips_byte_for_byte() -> None:
    """from_dict then to_dict gives the same JSON text, keys in the same order."""
    view = ModelView.from_dict(DOCUMENTED)
    assert view.state is ModelState.DOWNLOADING and view.layout is Layout.DIR
    assert view.sources == ("hf",) and view.bytes_total == 16060522240
    assert json.dumps(view.to_dict(), indent=1) == json.dumps(DOCUMENTED, indent=1)
    assert ModelView.from_dict(json.loads(json.dumps(view.to_dict()))) == view


@pytest.mark.parametrize("state", list(ModelState))
def test_every_state_and_layout_round_trips(state: ModelState) -> None:
    """Every state, both layouts, numbers and nulls: view -> JSON -> view is the identity."""
    for layout in Layout:
        view = ModelView(
            id="org/name",
            revision="v1",
            layout=layout,
            required=False,
            pinned=True,
            sources=("/nfs", "hf"),
            state=state,
            commit=None,
            path=None,
            bytes_done=None,
            bytes_total=None,
            rate_bytes_per_second=0.0,
            eta_seconds=None,
            ready_since="2026-01-01T00:00:00Z",
            last_error="x" if state is ModelState.FAILED else None,
            retry_in_seconds=3.5 if state is ModelState.FAILED else None,
            checking=state is ModelState.READY,
        )
        data = json.loads(json.dumps(view.to_dict()))
        assert list(data) == list(DOCUMENTED)
        assert ModelView.from_dict(data) == view


def test_whole_numbers_from_json_are_floats_where_the_view_says_so() -> None:
    """JSON may spell 0.0 as 0: rate, eta and retry are read as floats all the same."""
    data = {**DOCUMENTED, "rate_bytes_per_second": 0, "eta_seconds": 26, "retry_in_seconds": 1}
    view = ModelView.from_dict(data)
    assert (view.rate_bytes_per_second, view.eta_seconds, view.retry_in_seconds) == (0.0, 26.0, 1.0)
    assert isinstance(view.eta_seconds, float)


def test_unknown_keys_are_ignored() -> None:
    """A newer agent may add fields; an older waiter still reads the ones it knows."""
    assert ModelView.from_dict({**DOCUMENTED, "new_field": 1}) == ModelView.from_dict(DOCUMENTED)


@pytest.mark.parametrize(
    "change",
    [
        {"state": "unknown"},
        {"layout": "flat"},
        {"bytes_done": "5"},
        {"bytes_done": True},
        {"required": 1},
        {"sources": "hf"},
        {"sources": [1]},
        {"rate_bytes_per_second": None},
        {"eta_seconds": "soon"},
        {"commit": 5},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_malformed_view_is_a_view_error(change: dict[str, Any]) -> None:
    """A field of the wrong type or value is one ViewError naming it, never a half-read view."""
    with pytest.raises(ViewError):
        ModelView.from_dict({**DOCUMENTED, **change})


@pytest.mark.parametrize("key", list(DOCUMENTED))
def test_a_missing_key_is_a_view_error(key: str) -> None:
    """Every key the agent serves is required, the nullable ones too."""
    with pytest.raises(ViewError, match=key):
        ModelView.from_dict({k: v for k, v in DOCUMENTED.items() if k != key})


def test_the_config_view_round_trips() -> None:
    """GET /v1/models' `config` object: path, loaded_at, reload_error, max_concurrent."""
    data = {
        "path": "/etc/agent.yaml",
        "loaded_at": "2026-01-01T00:00:00Z",
        "reload_error": None,
        "max_concurrent": 2,
    }
    view = ConfigView.from_dict(data)
    assert json.dumps(view.to_dict()) == json.dumps(data)
    with pytest.raises(ViewError):
        ConfigView.from_dict({**data, "max_concurrent": "2"})
