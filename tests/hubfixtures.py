"""Fixtures for tests that talk to the loopback test hub (agent.devhub).

Import the ones you use into a test module, or list this module in `pytest_plugins`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.devhub import HubRepo, HubServer
from agent.devhub.demo_model import demo_repo

HubFactory = Callable[..., HubServer]


@pytest.fixture
def hub_factory() -> Iterator[HubFactory]:
    """Start HubServers (default: the demo repo) and stop them all after the test."""
    servers: list[HubServer] = []

    def start(repos: Iterable[HubRepo] | None = None, **kwargs: Any) -> HubServer:
        server = HubServer([demo_repo()] if repos is None else repos, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def hub(hub_factory: HubFactory) -> HubServer:
    """A running test hub serving the demo model."""
    return hub_factory()


@pytest.fixture
def hf_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Isolate the real huggingface_hub client: plain HTTP, no user token; returns a cache dir."""
    from huggingface_hub import constants

    # The client reads these at import time, so patch the constants as well as the environment.
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    return cache
