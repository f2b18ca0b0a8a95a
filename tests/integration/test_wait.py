"""`preload wait` as an init container runs it: watching the cache, or asking the agent."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from agent.devhub import Fault, HubServer
from agent.errors import ExitCode
from tests.conftest import RunPreload, base_env
from tests.integration.agentproc import BIG, DEMO, AgentProc, big_repo, free_port


def spawn_wait(tmp_path: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `preload wait ARGS` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "wait", *args],
        env=base_env(tmp_path, env),
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
    assert time.monotonic() - published < 3.5  # the periodic full check alone comes every 5 s
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


def test_dest_mode_wakes_on_the_marker_not_a_poll(
    tmp_path: Path, hub: HubServer, run_preload: RunPreload
) -> None:
    """A complete cache moved into place: the inotify waiter exits before any periodic check."""
    built = tmp_path / "built"
    assert run_preload("--model", DEMO, "--dest", str(built), env={"HF_ENDPOINT": hub.url}).code == 0
    dest = tmp_path / "cache"
    waiter = spawn_wait(tmp_path, "--model", DEMO, "--dest", str(dest), "--timeout", "60")
    assert waiter.stderr is not None
    first = json.loads(waiter.stderr.readline())  # logged once the watch is set up
    assert first["event"] == "waiting" and first["watch"] == "inotify"
    built.rename(dest)
    moved = time.monotonic()
    _, err = waiter.communicate(timeout=15)
    assert waiter.returncode == 0, err
    assert time.monotonic() - moved < 3.5  # the periodic full check alone comes every 5 s


def test_explicit_mode_beats_the_other_modes_env_twin(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc], run_preload: RunPreload
) -> None:
    """--agent on the command line wins over PRELOAD_DEST, and --dest over PRELOAD_AGENT."""
    dest = tmp_path / "cache"
    agent = AgentProc(tmp_path, hub.url, config_for(tmp_path, DEMO), dest)
    agents.append(agent.start())
    agent.wait_state(DEMO, "ready")
    by_agent = run_preload(
        "wait", "--model", DEMO, "--agent", agent.url, env={"PRELOAD_DEST": str(tmp_path / "elsewhere")}
    )
    assert by_agent.code == 0, by_agent.stderr
    assert by_agent.event("model_ready")["path"] == str(dest / DEMO)
    by_dest = run_preload(
        "wait", "--model", DEMO, "--dest", str(dest), env={"PRELOAD_AGENT": f"http://127.0.0.1:{free_port()}"}
    )
    assert by_dest.code == 0, by_dest.stderr
    both_env = run_preload(
        "wait", "--model", DEMO, env={"PRELOAD_DEST": str(dest), "PRELOAD_AGENT": agent.url}
    )
    assert both_env.code == ExitCode.USAGE


def test_agent_mode_accepts_the_commit_being_downloaded(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """--revision COMMIT waits for a branch that resolves to it; another commit is refused early."""
    hub.add_repo(big_repo())
    hub.add_fault(Fault(kind="cdn", trickle_bps=400_000, times=1))
    agent = AgentProc(tmp_path, hub.url, config_for(tmp_path, BIG), tmp_path / "cache")
    agents.append(agent.start())
    head = hub.repo(BIG).head()
    view = agent.model_when(BIG, lambda v: v["state"] == "downloading" and v["commit"], 20, "the commit")
    assert view["commit"] == head
    right = spawn_wait(tmp_path, "--model", BIG, "--agent", agent.url, "--revision", head, "--timeout", "60")
    wrong = spawn_wait(tmp_path, "--model", BIG, "--agent", agent.url, "--revision", "0" * 40)
    _, err = wrong.communicate(timeout=20)
    assert wrong.returncode == ExitCode.NOT_FOUND and f"(commit {head})" in err
    assert agent.model(BIG)["state"] == "downloading"
    _, err = right.communicate(timeout=60)
    assert right.returncode == 0, err


def test_agent_mode_prints_progress_and_survives_an_agent_restart(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """The waiter logs percentages while the model downloads, and rides out an agent restart."""
    hub.add_repo(big_repo())
    hub.add_fault(Fault(kind="cdn", trickle_bps=300_000, times=1))
    config = config_for(tmp_path, BIG)
    first = AgentProc(tmp_path, hub.url, config, tmp_path / "cache")
    agents.append(first.start())
    waiter = spawn_wait(tmp_path, "--model", BIG, "--agent", first.url, "--timeout", "90")
    began = time.monotonic()
    first.model_when(BIG, lambda v: v["bytes_done"] >= 1 << 20, 20, "1 MiB transferred")
    time.sleep(max(0.0, 6 - (time.monotonic() - began)))  # at least one progress line after the first
    first.signal(signal.SIGTERM)
    assert first.wait_exit(10) == 0
    second = AgentProc(tmp_path, hub.url, config, tmp_path / "cache")
    second.port, second.url = first.port, first.url
    second.args[-1] = f"127.0.0.1:{first.port}"
    agents.append(second.start())
    _, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    statuses = [json.loads(line).get("status", "") for line in err.splitlines() if '"waiting"' in line]
    assert any(re.match(r"downloading \d+\.\d% \(", s) for s in statuses), statuses
    assert '"model_ready"' in err
