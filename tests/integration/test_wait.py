"""`preload wait` as an init container runs it: watching the cache, or asking the agent."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import ExitCode
from agent.hubserver import HubServer
from tests.conftest import RunPreload, base_env
from tests.integration.agentproc import DEMO, AgentProc, free_port


@pytest.fixture
def agents() -> Iterator[list[AgentProc]]:
    """Agents started by a test; all stopped afterwards."""
    started: list[AgentProc] = []
    yield started
    for agent in started:
        agent.stop()


def spawn_wait(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """Start `preload wait ARGS` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "wait", *args],
        env=base_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def config_for(tmp_path: Path, *models: str) -> Path:
    """An agent config listing `models`."""
    path = tmp_path / "agent.yaml"
    path.write_text("models: [" + ", ".join(models) + "]\n")
    return path


def test_dest_mode_returns_once_a_preload_publishes(
    tmp_path: Path, hub: HubServer, run_preload: RunPreload
) -> None:
    """A waiter started on an empty cache exits 0 right after a preload finishes, with no network."""
    dest = tmp_path / "cache"
    waiter = spawn_wait(tmp_path, "--model", DEMO, "--dest", str(dest), "--timeout", "60")
    time.sleep(1)
    assert waiter.poll() is None
    assert run_preload("--model", DEMO, "--dest", str(dest), env={"HF_ENDPOINT": hub.url}).code == 0
    published = time.monotonic()
    _, err = waiter.communicate(timeout=15)
    assert waiter.returncode == 0, err
    assert time.monotonic() - published < 2
    assert '"model_ready"' in err
    assert (dest / ".preload" / "used" / "dir" / DEMO).exists(), "a successful wait records use for GC"


def test_dest_mode_times_out_clearly(tmp_path: Path, run_preload: RunPreload) -> None:
    """Nothing published: exit 7 with a line naming the model."""
    run = run_preload(
        "wait", "--model", DEMO, "--dest", str(tmp_path / "empty"), "--timeout", "1s", timeout=20
    )
    assert run.code == ExitCode.TIMEOUT
    assert "timed out" in run.event("failed")["error"] and DEMO in run.stderr


def test_dest_mode_checks_a_requested_revision(
    tmp_path: Path, hub: HubServer, run_preload: RunPreload
) -> None:
    """--revision other than the published one is not ready; without it any published revision is."""
    dest = str(tmp_path / "cache")
    assert run_preload("--model", DEMO, "--dest", dest, env={"HF_ENDPOINT": hub.url}).code == 0
    assert run_preload("wait", "--model", DEMO, "--dest", dest).code == 0
    other = run_preload("wait", "--model", DEMO, "--dest", dest, "--revision", "v2", "--timeout", "1")
    assert other.code == ExitCode.TIMEOUT


def test_agent_mode_rides_out_an_agent_that_is_not_up_yet(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """Connection refused at first, then the agent starts and preloads: the waiter exits 0."""
    agent = AgentProc(tmp_path, hub.url, config_for(tmp_path, DEMO), tmp_path / "cache")
    agents.append(agent)
    waiter = spawn_wait(tmp_path, "--model", DEMO, "--agent", agent.url, "--timeout", "60")
    time.sleep(2)
    assert waiter.poll() is None
    agent.start()
    _, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert "agent not reachable" in err


def test_agent_mode_reports_a_failed_model(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc], run_preload: RunPreload
) -> None:
    """A model the hub does not have: exit 1 with the agent's error."""
    agent = AgentProc(tmp_path, hub.url, config_for(tmp_path, "test-org/missing"), tmp_path / "cache")
    agents.append(agent.start())
    run = run_preload("wait", "--model", "test-org/missing", "--agent", agent.url, "--timeout", "30")
    assert run.code == ExitCode.FAILURE
    error = run.event("failed")["error"]
    assert "failed on the agent" in error and "test-org/missing" in error


def test_agent_mode_model_not_configured(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc], run_preload: RunPreload
) -> None:
    """Asking for a model the agent does not keep: exit 3 at once."""
    agent = AgentProc(tmp_path, hub.url, config_for(tmp_path, DEMO), tmp_path / "cache")
    agents.append(agent.start())
    run = run_preload("wait", "--model", "other-org/other", "--agent", agent.url, "--timeout", "30")
    assert run.code == ExitCode.NOT_FOUND
    assert "not configured" in run.event("failed")["error"]


def test_agent_mode_times_out_when_no_agent_answers(tmp_path: Path, run_preload: RunPreload) -> None:
    """No agent at all: keep trying until --timeout, then exit 7."""
    url = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    run = run_preload("wait", "--model", DEMO, "--agent", url, "--timeout", "2s", timeout=30)
    assert run.code == ExitCode.TIMEOUT
    assert "agent not reachable" in run.event("failed")["error"]
    assert time.monotonic() - began < 10


def test_wait_needs_exactly_one_mode(tmp_path: Path, run_preload: RunPreload) -> None:
    """Neither or both of --dest and --agent is a usage error."""
    assert run_preload("wait", "--model", DEMO).code == ExitCode.USAGE
    both = run_preload("wait", "--model", DEMO, "--dest", str(tmp_path), "--agent", "http://x:1")
    assert both.code == ExitCode.USAGE
