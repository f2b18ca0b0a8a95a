"""Fixtures of the integration tests: agent processes, and the helm and checkov tools.

Each comes from its scripts/install-*.sh; when a script cannot provide its tool the test
skips, or fails when MODEL_CACHE_TEST_REQUIRE names the tool (tests/conftest.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import tool_unavailable
from tests.integration.agentproc import AgentProc

REPO = Path(__file__).resolve().parents[2]


def _tool_dir(script: str, tool: str) -> str:
    """Run a scripts/install-*.sh and return the path it prints (skip or fail when it cannot)."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / script)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        tool_unavailable(tool, f"scripts/{script} could not provide {tool}: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of a working helm binary."""
    return str(Path(_tool_dir("install-helm.sh", "helm")) / "helm")


@pytest.fixture(scope="session")
def checkov() -> str:
    """Path of a working checkov executable."""
    return _tool_dir("install-checkov.sh", "checkov")


@pytest.fixture
def agents() -> Iterator[list[AgentProc]]:
    """Agents started by a test (`agentproc.start_agent`); all stopped afterwards."""
    started: list[AgentProc] = []
    yield started
    for agent in started:
        agent.stop()
