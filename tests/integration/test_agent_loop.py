"""The agent's loop under long work: periodic checks, start-up jitter, reloads, SIGTERM, bad config."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from agent.devhub import HubServer
from agent.errors import ExitCode
from tests.conftest import RunPreload
from tests.integration.agentproc import DEMO, AgentProc, eventually, publish_sparse, small_repo, start_agent

LOCAL = "local/sparse"
SECOND = "test-org/second"


@pytest.mark.usefixtures("prune_big_files")
def test_ready_model_stays_ready_while_it_is_rechecked(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """/readyz never flaps to 503 while periodic checks re-hash a ready model; the API shows them."""
    sizes = {f"shard-{i:03d}.json": 1024 for i in range(200)} | {"model.safetensors": 768 << 20}
    publish_sparse(tmp_path / "cache", LOCAL, sizes)
    config = tmp_path / "c.yaml"
    config.write_text(f"models: [{LOCAL}]\nverifyInterval: 1s\n")
    agent = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    assert agent.get("/readyz")[0] == 200
    statuses, checking = set(), set()
    with httpx.Client(timeout=5) as client:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            statuses.add(client.get(agent.url + "/readyz").status_code)
            view = client.get(f"{agent.url}/v1/models/{LOCAL}").json()
            checking.add((view["state"], view["checking"]))
            time.sleep(0.05)
    assert statuses == {200}
    assert ("ready", True) in checking and {s for s, _ in checking} == {"ready"}
    verified = [e for e in agent.events() if e.get("event") == "model_verified"]
    assert len(verified) >= 2 and not any(e.get("event") == "model_damaged" for e in agent.events())


@pytest.mark.usefixtures("prune_big_files")
def test_sigterm_during_a_long_verification_exits_zero_quickly(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """A check that would hash 32 GiB for many seconds stops between reads: exit 0 well within 10 s."""
    publish_sparse(tmp_path / "cache", LOCAL, {f"w{i}.safetensors": 8 << 30 for i in range(4)}, False)
    config = tmp_path / "c.yaml"
    config.write_text(f"models: [{LOCAL}]\nverifyInterval: 1s\n")
    agent = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    agent.model_when(LOCAL, lambda v: v["checking"], 10, "the periodic check to start")
    time.sleep(1)
    began = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(10) == 0
    assert time.monotonic() - began < 5
    names = [e.get("event") for e in agent.events()]
    assert "agent_stopped" in names and "model_damaged" not in names and "model_verified" not in names


def test_startup_jitter_keeps_the_loop_turning(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """During a long start-up jitter /livez stays fresh and reloads apply, but nothing downloads."""
    hub.add_repo(small_repo(SECOND))
    config = tmp_path / "c.yaml"
    config.write_text(f"models: [{DEMO}]\nstartupJitter: 1h\n")
    for _ in range(3):  # the jitter is drawn at random: start again on a (rare) short one
        agent = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
        if agent.event("startup_jitter")["seconds"] >= 8:
            break
        agent.stop()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        status, body = agent.get("/livez")
        assert status == 200 and body["loop_age_seconds"] < 2, body
        time.sleep(0.2)
    config.write_text(f"models: [{DEMO}, {SECOND}]\nstartupJitter: 1h\n")
    listing = eventually(
        lambda: (lambda b: b if len(b["models"]) == 2 else None)(agent.get("/v1/models")[1]),
        5,
        "the reloaded config",
    )
    assert {m["state"] for m in listing["models"]} == {"pending"}
    assert agent.get("/livez")[1]["loop_age_seconds"] < 2
    assert hub.requests() == []


def test_every_rejected_config_change_is_counted(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """Two broken edits with the same error count twice; polling the same broken file counts once."""
    config = tmp_path / "c.yaml"
    config.write_text(f"models: [{DEMO}]\n")
    agent = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    errors = "model_cache_config_reload_errors_total"
    config.write_text(f"models: [{DEMO}]\nbogus: 1\n")
    eventually(lambda: agent.metric(errors) == 1, 10, "the first rejected reload")
    time.sleep(2.5)  # several polls of the same broken file
    assert agent.metric(errors) == 1
    config.write_text(f"models: [{DEMO}]\nbogus: 2\n")
    eventually(lambda: agent.metric(errors) == 2, 10, "the second rejected reload")
    failed = [e for e in agent.events() if e.get("event") == "config_reload_failed"]
    assert len(failed) == 2 and all("bogus" in e["error"] for e in failed)


def test_invalid_config_at_start_is_one_clear_line(tmp_path: Path, run_preload: RunPreload) -> None:
    """An invalid config file at start: exit 2 with a single log line naming the key."""
    config = tmp_path / "c.yaml"
    config.write_text("models:\n  - id: a/b\n    layout: flat\n")
    run = run_preload(
        "agent", "--config", str(config), "--dest", str(tmp_path / "cache"), "--listen", "127.0.0.1:0"
    )
    assert run.code == ExitCode.USAGE
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert "models[0].layout: unknown layout 'flat'" in run.event("failed")["error"]
