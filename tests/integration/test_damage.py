"""What a check finds bad stays bad for every reader until a repair; repairs go where the model came from.

A flipped byte that keeps size and mtime is only visible to a re-hash (`verify --deep`); once one
finds it, the store records it, and `preload`, `wait`, `status`, `verify` and the agent all see
the model as damaged until a preload (or `verify --repair`) refetches the bad files.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from agent.crashpoints import REPAIR_POINTS
from agent.devhub import HubServer
from agent.devhub.demo_model import DEMO_REPO_ID
from agent.errors import ExitCode
from agent.spec import Layout, ModelSpec
from agent.store import Store
from tests.conftest import RunPreload, free_port
from tests.hubfixtures import HubFactory
from tests.integration.agentproc import AgentProc, eventually, start_agent

WEIGHTS = "model.safetensors"
# Anything that would leave the machine for https://huggingface.co goes to a closed local port.
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"}


def flip_byte(path: Path) -> None:
    """Invert one byte in the middle of a file, keeping its size and mtime."""
    st = path.stat()
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.chmod(path, st.st_mode & 0o777)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def weights_of(dest: Path, layout: str) -> Path:
    """The weight file's bytes on disk (the blob, in hf-cache)."""
    store = Store(dest)
    spec = ModelSpec(DEMO_REPO_ID, layout=Layout(layout))
    m = store.read_marker(spec)
    assert m is not None
    return (store.model_path(spec, m.commit) / WEIGHTS).resolve()


def seed(run_preload: RunPreload, hub: HubServer, dest: Path, layout: str = "dir") -> Path:
    """Preload the demo model from `hub` (named on the command line), flip a weight byte; the file."""
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), "--layout", layout, "--endpoint", hub.url)
    assert r.code == 0, r.stderr
    path = weights_of(dest, layout)
    flip_byte(path)
    return path


def verify(
    run_preload: RunPreload, dest: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    """`preload verify --json`: exit code and report."""
    r = run_preload("verify", "--model", DEMO_REPO_ID, "--dest", str(dest), "--json", *extra, env=env)
    assert r.stdout, r.stderr
    return r.code, json.loads(r.stdout)


def fetched(hub: HubServer) -> set[str]:
    """Repo files whose bytes the hub or its CDN sent since the log was reset."""
    out = set()
    files = hub.repo(DEMO_REPO_ID).files().values()
    for r in hub.requests(method="GET"):
        if r.kind == "resolve":
            out.add(r.path.rsplit("/", 1)[-1])
        elif r.kind == "cdn":
            out.update(f.path for f in files if f.sha256 == r.path.rsplit("/", 1)[-1])
    return out


def wait_dest(run_preload: RunPreload, dest: Path, layout: str) -> int:
    args = ("wait", "--model", DEMO_REPO_ID, "--dest", str(dest), "--layout", layout, "--timeout", "1s")
    return run_preload(*args).code


@pytest.mark.parametrize("layout", ["dir", "hf-cache"])
def test_a_deep_finding_holds_for_every_reader_until_a_preload_repairs_it(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload, layout: str
) -> None:
    """verify --deep finds a same-size, same-mtime flip: wait, status, fast verify and preload all see it;
    a plain preload refetches only that file."""
    dest = tmp_path / "cache"
    seed(run_preload, hub, dest, layout)
    code, report = verify(run_preload, dest, "--layout", layout, "--deep")
    assert code == ExitCode.INTEGRITY and report["corrupt"] == [WEIGHTS]
    status = json.loads(run_preload("status", "--dest", str(dest), "--json").stdout)
    assert [row["state"] for row in status] == ["corrupt"]
    args = ("wait", "--model", DEMO_REPO_ID, "--dest", str(dest), "--layout", layout, "--timeout", "1s")
    r = run_preload(*args)
    assert r.code == ExitCode.TIMEOUT and "damaged" in r.stderr, r.stderr
    code, report = verify(run_preload, dest, "--layout", layout)  # fast: the record, not the mtime
    assert code == ExitCode.INTEGRITY and report["corrupt"] == [WEIGHTS]
    hub.reset_log()
    args = ("--model", DEMO_REPO_ID, "--dest", str(dest), "--layout", layout, "--endpoint", hub.url)
    r = run_preload(*args)
    assert r.code == 0, r.stderr
    assert r.event("preload_complete")["already_complete"] is False
    assert fetched(hub) == {WEIGHTS}
    assert verify(run_preload, dest, "--layout", layout, "--deep")[0] == 0
    assert wait_dest(run_preload, dest, layout) == 0
    status = json.loads(run_preload("status", "--dest", str(dest), "--json").stdout)
    assert [row["state"] for row in status] == ["complete"]


def test_fast_repair_repairs_what_a_deep_check_found(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """verify --repair without --deep repairs the recorded file, and only it."""
    dest = tmp_path / "cache"
    seed(run_preload, hub, dest)
    assert verify(run_preload, dest, "--deep")[0] == ExitCode.INTEGRITY
    hub.reset_log()
    code, report = verify(run_preload, dest, "--repair", env=OFFLINE)
    assert code == 0, report
    assert report["repaired"] == [WEIGHTS]
    assert fetched(hub) == {WEIGHTS}
    assert verify(run_preload, dest, "--deep")[0] == 0


@pytest.mark.parametrize("point", REPAIR_POINTS)
def test_a_crash_during_repair_never_makes_the_model_ready(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload, point: str
) -> None:
    """Killed between the steps of a repair, the model stays not ready; the next preload finishes it."""
    dest = tmp_path / "cache"
    seed(run_preload, hub, dest)
    assert verify(run_preload, dest, "--deep")[0] == ExitCode.INTEGRITY
    args = ("--model", DEMO_REPO_ID, "--dest", str(dest), "--endpoint", hub.url)
    r = run_preload(*args, env={"PRELOAD_CRASH_AT": point})
    assert r.code == -9, f"the crash point {point} was not reached:\n{r.stderr}"
    assert Store(dest).ready(ModelSpec(DEMO_REPO_ID)) is None
    assert wait_dest(run_preload, dest, "dir") == ExitCode.TIMEOUT
    assert verify(run_preload, dest)[0] != 0
    r = run_preload(*args)
    assert r.code == 0, r.stderr
    assert verify(run_preload, dest, "--deep")[0] == 0


def test_the_agent_honours_a_finding_until_it_has_repaired_it(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload, agents: list[AgentProc]
) -> None:
    """verify --deep run beside the agent: /readyz and wait --agent say not ready, also after an
    agent restart, until the agent's own preload refetches the file."""
    port = free_port()
    hub = hub_factory(port=port)
    dest = tmp_path / "cache"
    config = tmp_path / "c.yaml"
    config.write_text(f"models: [{DEMO_REPO_ID}]\nverifyInterval: 0\n")
    agent = start_agent(agents, tmp_path, hub, config, dest)
    agent.wait_state(DEMO_REPO_ID, "ready")
    flip_byte(weights_of(dest, "dir"))
    hub.stop()  # the agent cannot repair it yet
    assert verify(run_preload, dest, "--deep")[0] == ExitCode.INTEGRITY
    eventually(lambda: agent.get("/readyz")[0] == 503, 10, "/readyz 503 after the finding")
    assert agent.model(DEMO_REPO_ID)["state"] != "ready"
    r = run_preload("wait", "--model", DEMO_REPO_ID, "--agent", agent.url, "--timeout", "2s")
    assert r.code != 0
    agent.stop()
    again = start_agent(agents, tmp_path, hub, config, dest)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert again.get("/readyz")[0] == 503
        assert again.model(DEMO_REPO_ID)["state"] != "ready"
        time.sleep(0.2)
    revived = hub_factory(port=port)
    again.wait_state(DEMO_REPO_ID, "ready", 30)
    assert fetched(revived) == {WEIGHTS}
    assert verify(run_preload, dest, "--deep")[0] == 0


def test_the_agents_own_finding_survives_a_restart(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload, agents: list[AgentProc]
) -> None:
    """A damage the agent's periodic check found (a changed file) is recorded: a restarted agent
    does not report the model ready before repairing it."""
    port = free_port()
    hub = hub_factory(port=port)
    dest = tmp_path / "cache"
    config = tmp_path / "c.yaml"
    config.write_text(f"models: [{DEMO_REPO_ID}]\nverifyInterval: 1s\n")
    agent = start_agent(agents, tmp_path, hub, config, dest)
    agent.wait_state(DEMO_REPO_ID, "ready")
    path = weights_of(dest, "dir")
    hub.stop()
    flip_byte(path)
    later = time.time() + 10
    os.utime(path, (later, later))  # changed after publish: what the agent's fast check re-hashes
    eventually(lambda: agent.get("/readyz")[0] == 503, 15, "/readyz 503 after the check")
    agent.stop()
    code, report = verify(run_preload, dest)  # recorded, not deleted: the file is still there, and bad
    assert code == ExitCode.INTEGRITY and report["corrupt"] == [WEIGHTS]
    again = start_agent(agents, tmp_path, hub, config, dest)
    time.sleep(2)
    assert again.get("/readyz")[0] == 503
    revived = hub_factory(port=port)
    again.wait_state(DEMO_REPO_ID, "ready", 30)
    assert fetched(revived) == {WEIGHTS}


# -- item: repair goes where the model came from ---------------------------------------------------


def test_repair_uses_the_recorded_endpoint(hub: HubServer, tmp_path: Path, run_preload: RunPreload) -> None:
    """Preloaded from a mirror: verify --repair refetches from it, not from huggingface.co; HF_ENDPOINT
    (ambient) does not override the record, PRELOAD_ENDPOINT (this tool's own) does."""
    dest = tmp_path / "cache"
    seed(run_preload, hub, dest)
    dead = f"http://127.0.0.1:{free_port()}"
    code, report = verify(run_preload, dest, "--deep", "--repair", env={**OFFLINE, "HF_ENDPOINT": dead})
    assert code == 0, report
    assert fetched(hub) >= {WEIGHTS}
    flip_byte(weights_of(dest, "dir"))
    r = run_preload(
        "verify",
        "--model",
        DEMO_REPO_ID,
        "--dest",
        str(dest),
        "--deep",
        "--repair",
        env={**OFFLINE, "PRELOAD_ENDPOINT": dead},
    )
    assert r.code != 0
    assert dead.removeprefix("http://") in r.stderr


def test_repair_with_the_hub_gone_names_it_and_fails_fast(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """The recorded hub refuses connections: the error names host:port, within a few seconds, with
    real retry waits."""
    dest = tmp_path / "cache"
    seed(run_preload, hub, dest)
    host = hub.url.removeprefix("http://")
    hub.stop()
    started = time.monotonic()
    r = run_preload(
        "verify",
        "--model",
        DEMO_REPO_ID,
        "--dest",
        str(dest),
        "--deep",
        "--repair",
        env={**OFFLINE, "PRELOAD_RETRY_SCALE": "1"},
    )
    elapsed = time.monotonic() - started
    assert r.code != 0
    assert host in r.stderr, r.stderr
    assert elapsed < 10, f"took {elapsed:.1f}s"


def test_repair_uses_the_recorded_directory_source(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """Preloaded from a directory only: verify --repair refetches from that directory, offline."""
    src, dest = tmp_path / "nfs", tmp_path / "cache"
    assert run_preload("--model", DEMO_REPO_ID, "--dest", str(src), "--endpoint", hub.url).code == 0
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), "--source", str(src))
    assert r.code == 0, r.stderr
    flip_byte(weights_of(dest, "dir"))
    hub.stop()
    code, report = verify(run_preload, dest, "--deep", "--repair", env=OFFLINE)
    assert code == 0, report
    assert verify(run_preload, dest, "--deep")[0] == 0
