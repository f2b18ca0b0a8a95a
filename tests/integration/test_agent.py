"""The real `preload agent` process against the loopback test hub: API, reload, signals, repair."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.devhub import Fault, HubFile, HubRepo, HubServer
from agent.devhub.demo_model import demo_repo
from tests.conftest import RunPreload, tmpfs
from tests.hubfixtures import HubFactory
from tests.integration.agentproc import (
    BIG,
    BIG_SIZE,
    DEMO,
    AgentProc,
    big_repo,
    configmap,
    eventually,
    small_repo,
    start_agent,
)

SECOND = "test-org/second"


def write(path: Path, text: str) -> Path:
    """Write a config file and return its path."""
    path.write_text(text)
    return path


def test_cold_start_reaches_readyz(tmp_path: Path, hub: HubServer, agents: list[AgentProc]) -> None:
    """An empty cache becomes warm: /readyz goes from 503 to 200 and the model is on disk."""
    hub.add_fault(Fault(kind="cdn", trickle_bps=200_000, times=1))
    config = write(tmp_path / "c.yaml", f"models:\n  - id: {DEMO}\n  - id: {BIG}\n    required: false\n")
    hub.add_repo(big_repo())
    agent = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    status, body = agent.get("/readyz")
    assert status == 503 and body["missing"] == [DEMO]
    eventually(lambda: agent.get("/readyz")[0] == 200, 30, "/readyz 200")
    view = agent.model(DEMO)
    assert view["state"] == "ready" and len(view["commit"]) == 40
    assert Path(view["path"], "config.json").is_file()
    assert view["path"] == str(tmp_path / "cache" / DEMO)


def test_progress_is_visible_during_a_download(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """While a trickled download runs, /v1 shows bytes, rate and ETA, and /metrics the state."""
    hub.add_repo(big_repo())
    hub.add_fault(Fault(kind="cdn", trickle_bps=500_000, times=1))
    config = write(tmp_path / "c.yaml", f"models: [{BIG}]\n")
    agent = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    view = agent.model_when(
        BIG, lambda v: v["state"] == "downloading" and v["bytes_done"] > 0, 20, "download progress"
    )
    assert view["bytes_total"] >= BIG_SIZE
    assert view["rate_bytes_per_second"] > 0 and view["eta_seconds"] is not None
    listing = agent.get("/v1/models")[1]
    assert [m["id"] for m in listing["models"]] == [BIG]
    assert (
        agent.metric(
            'model_cache_model_state{model="test-org/big-model",model_cache_model_state="downloading"}'
        )
        == 1
    )
    assert agent.get("/readyz")[0] == 503
    counted = eventually(
        lambda: agent.metric('model_cache_transferred_bytes_total{source="hf"}'), 5, "bytes counted"
    )
    assert 0 < counted < BIG_SIZE and agent.model(BIG)["state"] == "downloading"
    agent.wait_state(BIG, "ready", 30)
    assert agent.metric("model_cache_transferred_bytes_total") >= BIG_SIZE


def test_api_rejects_bad_requests_without_tracebacks(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """Unknown paths 404, bad ids 400, unknown models 404, writes 405, garbage 400: all JSON."""
    config = write(tmp_path / "c.yaml", f"models: [{DEMO}]\n")
    agent = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    assert agent.get("/nope")[0] == 404
    assert agent.get("/v1/models/a..b/c")[0] == 400
    assert agent.get("/v1/models/only-one-part")[0] == 400
    assert agent.get("/v1/models/other/model")[0] == 404
    import httpx

    r = httpx.post(agent.url + "/v1/models", timeout=5)
    assert r.status_code == 405 and r.json()["error"]
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as s:
        s.sendall(b"NOT-HTTP\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n", 1)[0]
    assert b"Traceback" not in reply
    for probe in ("/livez", "/readyz", "/metrics"):
        assert agent.get(probe)[0] in (200, 503)
    assert agent.get("/nope")[0] == 404  # logged after the probes: their lines would be in by now
    logged = [e.get("path") for e in agent.events() if e.get("event") == "api_request"]
    assert logged.count("/nope") == 2
    assert not {"/livez", "/readyz", "/metrics"} & set(logged)


def test_config_reload_add_remove_and_invalid(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """A ConfigMap-style symlink swap adds and removes models; an invalid file keeps the last good one."""
    hub.add_repo(small_repo(SECOND))
    cm = tmp_path / "cm"
    config = configmap(cm, f"models: [{DEMO}]\n", 1)
    agent = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    agent.wait_state(DEMO, "ready")

    configmap(cm, f"models: [{DEMO}, {SECOND}]\n", 2)
    agent.wait_state(SECOND, "ready", 20)

    configmap(cm, f"models: [{SECOND}]\n", 3)
    eventually(lambda: agent.get(f"/v1/models/{DEMO}")[0] == 404, 10, "removal of the demo model")
    assert (tmp_path / "cache" / DEMO / "config.json").is_file(), "a removed model is left for GC"

    configmap(cm, f"models: [{SECOND}]\nbogus: 1\n", 4)
    listing = eventually(
        lambda: (lambda body: body if body["config"]["reload_error"] else None)(agent.get("/v1/models")[1]),
        10,
        "the reload error",
    )
    assert "bogus" in listing["config"]["reload_error"]
    assert [m["id"] for m in listing["models"]] == [SECOND]
    assert agent.get("/readyz")[0] == 200
    assert agent.metric("model_cache_config_reload_errors_total") == 1
    assert any(e.get("event") == "config_reload_failed" for e in agent.events())

    configmap(cm, f"models: [{SECOND}, {DEMO}]\n", 5)
    agent.wait_state(DEMO, "ready", 10)
    assert agent.get("/v1/models")[1]["config"]["reload_error"] is None


def test_killed_agent_resumes_on_restart(tmp_path: Path, hub: HubServer, agents: list[AgentProc]) -> None:
    """SIGKILL mid-download, then restart: the transfer continues with a Range request, not from zero."""
    hub.add_repo(big_repo())
    hub.add_fault(Fault(kind="cdn", trickle_bps=400_000, times=1))
    config = write(tmp_path / "c.yaml", f"models: [{BIG}]\n")
    first = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    first.model_when(BIG, lambda v: v["bytes_done"] >= (3 << 19), 20, "1.5 MiB transferred")
    first.signal(signal.SIGKILL)
    assert first.wait_exit(5) == -signal.SIGKILL
    restarted = time.monotonic()  # the hub's request log uses the monotonic clock
    second = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    second.wait_state(BIG, "ready", 30)
    after = [r for r in hub.requests(kind="cdn") if r.started >= restarted]
    starts = [int(r.range.split("=")[1].split("-")[0]) for r in after if r.range]
    assert starts and min(starts) >= 1 << 20, [r.range for r in after]
    assert sum(r.bytes_sent for r in after) <= BIG_SIZE - (1 << 20)


def test_sigterm_exits_zero_quickly_and_leaves_a_resumable_transfer(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """SIGTERM during a download: exit 0 within 10 s; the staged bytes are reused by the next run."""
    hub.add_repo(big_repo())
    hub.add_fault(Fault(kind="cdn", trickle_bps=300_000, times=1))
    config = write(tmp_path / "c.yaml", f"models: [{BIG}]\n")
    agent = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    agent.model_when(BIG, lambda v: v["bytes_done"] >= (3 << 19), 20, "1.5 MiB transferred")
    began = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(10) == 0
    assert time.monotonic() - began < 10
    staged = list((tmp_path / "cache" / ".preload" / "staging").rglob("*.part"))
    assert staged and staged[0].stat().st_size > 0
    assert any(e.get("event") == "agent_stopped" for e in agent.events())
    restarted = time.monotonic()
    again = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    again.wait_state(BIG, "ready", 30)
    after = [r for r in hub.requests(kind="cdn") if r.started >= restarted]
    assert sum(r.bytes_sent for r in after) <= BIG_SIZE - (1 << 20)


def test_damaged_model_is_detected_and_repaired(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """Periodic verification notices a deleted file, reports not ready, refetches only that file."""
    config = write(tmp_path / "c.yaml", f"models: [{DEMO}]\nverifyInterval: 1s\n")
    agent = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    view = agent.wait_state(DEMO, "ready")
    hub.reset_log()
    hub.add_fault(Fault(kind="resolve", path="config.json", trickle_bps=150, times=1))
    os.unlink(Path(os.path.realpath(view["path"])) / "config.json")
    eventually(lambda: agent.get("/readyz")[0] == 503, 10, "/readyz 503 after damage")
    agent.wait_state(DEMO, "ready", 30)
    assert (Path(view["path"]) / "config.json").is_file()
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub.requests(kind="resolve", method="GET")}
    assert fetched == {"config.json"}
    assert hub.requests(kind="cdn") == []
    assert agent.metric("model_cache_verification_failures_total") == 1


def test_failing_model_backs_off_without_blocking_others(
    tmp_path: Path, hub_factory: HubFactory, agents: list[AgentProc]
) -> None:
    """A model missing from the hub is failed with its error while the next one still gets ready."""
    hub = hub_factory([demo_repo()])
    config = write(tmp_path / "c.yaml", f"maxConcurrent: 1\nmodels: [test-org/missing, {DEMO}]\n")
    agent = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    agent.wait_state(DEMO, "ready", 20)
    failed = agent.wait_state("test-org/missing", "failed", 10)
    assert failed["last_error"] and failed["retry_in_seconds"] is not None
    assert agent.get("/readyz")[1]["missing"] == ["test-org/missing"]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 160 MiB tmpfs, for running out of space on purpose (needs root)."""
    with tmpfs(tmp_path / "small", "size=160m") as mount:
        yield mount


def test_full_disk_runs_gc_once_before_the_download(
    tmp_path: Path, small_fs: Path, hub: HubServer, agents: list[AgentProc], run_preload: RunPreload
) -> None:
    """A configured model that does not fit evicts an unconfigured one, then downloads."""
    hub.add_repo(big_repo())
    # The store keeps a 64 MiB margin: 94 MiB fits alone, but leaves too little for BIG after it.
    hub.add_repo(HubRepo("a/filler", [HubFile("model.safetensors", b"\1" * (94 << 20))]))
    assert run_preload("--model", "a/filler", "--dest", str(small_fs), env={"HF_ENDPOINT": hub.url}).code == 0
    config = write(tmp_path / "c.yaml", f"models: [{BIG}]\n")
    agent = start_agent(agents, tmp_path, hub, config, small_fs)
    agent.wait_state(BIG, "ready", 30)
    assert not (small_fs / "a" / "filler").exists()
    removed = [e for e in agent.events() if e.get("event") == "gc_removed"]
    assert [e["repo"] for e in removed] == ["a/filler"]
    assert agent.metric("model_cache_gc_evicted_bytes_total") >= 94 << 20


def test_metrics_count_retries_durations_and_disk(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """A 503 retried, a finished transfer and the disk all show in /metrics with their units."""
    hub.add_repo(big_repo())
    hub.add_fault(Fault(kind="cdn", status=503, times=1))
    config = write(tmp_path / "c.yaml", f"models: [{BIG}]\n")
    agent = start_agent(agents, tmp_path, hub, config, tmp_path / "cache")
    agent.wait_state(BIG, "ready", 30)
    assert agent.metric("model_cache_retries_total") >= 1
    assert agent.metric('model_cache_transfer_duration_seconds_count{outcome="ok"}') == 1
    assert agent.metric("model_cache_disk_free_bytes") > 0
    assert agent.metric("model_cache_disk_total_bytes") >= agent.metric("model_cache_disk_free_bytes")


def test_agent_uses_the_root_read_timeout_and_drop_cache(
    tmp_path: Path, hub: HubServer, agents: list[AgentProc]
) -> None:
    """PRELOAD_READ_TIMEOUT=1s turns a 5 s stall into a retry; PRELOAD_DROP_CACHE reaches the agent."""
    hub.add_repo(big_repo())
    hub.add_fault(Fault(kind="cdn", stall=5, stall_after=4096, times=1))
    config = write(tmp_path / "c.yaml", f"models: [{BIG}]\n")
    began = time.monotonic()
    agent = start_agent(
        agents, tmp_path, hub, config, tmp_path / "cache", PRELOAD_READ_TIMEOUT="1s", PRELOAD_DROP_CACHE="1"
    )
    agent.wait_state(BIG, "ready", 30)
    assert agent.metric("model_cache_retries_total") >= 1  # with the default 30 s it just waits
    assert time.monotonic() - began < 15
    start = agent.event("agent_start")
    assert start["drop_cache"] is True
