"""The agent and the disk: watermark GC, a model that cannot fit, and use recorded for LRU order."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.devhub import HubFile, HubRepo, HubServer
from agent.spec import Layout
from agent.store import usage
from tests.conftest import RunPreload, tmpfs
from tests.hubfixtures import HubFactory
from tests.integration.agentproc import DEMO, AgentProc, eventually, small_repo, start_agent


def preload(run_preload: RunPreload, hub: HubServer, dest: Path, *repos: str) -> None:
    """Preload each repo with the CLI (which records its use)."""
    for repo in repos:
        run = run_preload("--model", repo, "--dest", str(dest), env={"HF_ENDPOINT": hub.url})
        assert run.code == 0, run.stderr


def test_high_watermark_triggers_gc_inside_the_agent(
    tmp_path: Path, hub_factory: HubFactory, agents: list[AgentProc], run_preload: RunPreload
) -> None:
    """Disk fuller than highWatermarkPercent: unconfigured models go, configured ones stay."""
    hub = hub_factory([small_repo("a/filler"), small_repo(DEMO)])
    dest = tmp_path / "cache"
    preload(run_preload, hub, dest, "a/filler")
    config = tmp_path / "c.yaml"
    # Any real disk is more than 1% used: the agent must collect at its first disk check.
    config.write_text(f"models: [{DEMO}]\ngc: {{highWatermarkPercent: 1, lowWatermarkPercent: 0.5}}\n")
    agent = start_agent(agents, tmp_path, hub, config, dest)
    agent.wait_state(DEMO, "ready")
    removed = agent.event("gc_removed")
    assert removed["repo"] == "a/filler" and "not configured" in removed["reason"]
    done = agent.event("gc_done")
    assert done["short"] is True and done["removed"] == 1
    assert not (dest / "a" / "filler").exists() and (dest / DEMO / "config.json").is_file()
    assert agent.metric('model_cache_gc_evicted_bytes_total{kind="model"}') > 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB tmpfs, for running out of space on purpose (needs root)."""
    with tmpfs(tmp_path / "small", "size=96m") as mount:
        yield mount


def test_model_still_short_after_gc_fails_clearly(
    tmp_path: Path, small_fs: Path, hub_factory: HubFactory, agents: list[AgentProc]
) -> None:
    """A model bigger than the whole disk: one GC pass, then failed with both figures in the error."""
    weights = tmp_path / "huge.bin"
    with open(weights, "wb") as f:
        f.truncate(128 << 20)
    hub = hub_factory([HubRepo("test-org/huge", [HubFile("model.safetensors", source=weights)])])
    config = tmp_path / "c.yaml"
    config.write_text("models: [test-org/huge]\n")
    agent = start_agent(agents, tmp_path, hub, config, small_fs)
    view = agent.wait_state("test-org/huge", "failed", 30)
    assert "not enough space" in view["last_error"] and "need 128.0 MiB" in view["last_error"]
    assert "free" in view["last_error"] and view["retry_in_seconds"] is not None
    names = [e.get("event") for e in agent.events()]
    assert names.index("disk_full_before_download") < names.index("gc_done") < names.index("model_failed")
    assert agent.get("/readyz")[1]["missing"] == ["test-org/huge"]


def test_agent_records_use_for_lru_gc(
    tmp_path: Path, hub_factory: HubFactory, agents: list[AgentProc], run_preload: RunPreload
) -> None:
    """A preload the agent completes and a `wait --agent` for a model both count as use for GC."""
    hub = hub_factory([small_repo(r) for r in ("a/one", "a/two", "a/three")])
    dest = tmp_path / "cache"
    preload(run_preload, hub, dest, "a/one", "a/two")
    for repo, when in (("a/one", 1000.0), ("a/two", 2000.0)):  # a/one is the least recently used
        os.utime(usage.record_path(dest, repo, Layout.DIR), (when, when))
    config = tmp_path / "c.yaml"
    config.write_text("models: [a/one, a/three]\n")
    agent = start_agent(agents, tmp_path, hub, config, dest)

    def states() -> dict[str, str]:  # the listing: asking for one model by id would record use
        return {m["id"]: m["state"] for m in agent.get("/v1/models")[1]["models"]}

    eventually(lambda: states()["a/three"] == "ready", 20, "a/three ready")
    three = usage.record_path(dest, "a/three", Layout.DIR)
    assert three.exists(), "the agent records the preload it completed"
    assert three.stat().st_mtime > time.time() - 60
    assert usage.record_path(dest, "a/one", Layout.DIR).stat().st_mtime == 1000.0  # ready from disk
    time.sleep(0.05)
    assert run_preload("wait", "--model", "a/one", "--agent", agent.url).code == 0
    assert usage.record_path(dest, "a/one", Layout.DIR).stat().st_mtime > three.stat().st_mtime
    agent.stop()
    dry = run_preload("gc", "--dest", str(dest), "--keep-free", "100", "--dry-run")
    order = [line.split()[3] for line in dry.stdout.splitlines() if line.startswith("would remove model")]
    assert order == ["a/two", "a/three", "a/one"], dry.stdout
