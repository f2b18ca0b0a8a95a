"""The README's first command: `preload demo` shows preload -> verify -> ready offline."""

from __future__ import annotations

from pathlib import Path

from agent.errors import ExitCode
from tests.conftest import RunPreload

DEMO = "demo-org/tiny-model"


def test_demo_runs_the_real_flow(tmp_path: Path, run_preload: RunPreload) -> None:
    """Preload from the loopback hub, verify every file (recorded), reread with zero requests: a
    summary that fits a screen, with the manifest's path instead of its 70 lines."""
    dest = tmp_path / "demo"
    r = run_preload("demo", "--dest", str(dest))
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) <= 10 and "{" not in r.stdout, r.stdout
    assert "1. preload" in r.stdout and "every file hashed while it arrived" in r.stdout
    assert "2. verify   8/8" in r.stdout and "3. ready" in r.stdout
    assert "with 0 hub requests" in r.stdout
    manifest = next(line for line in lines if line.startswith("manifest"))
    assert Path(manifest.split()[1]).is_file()
    assert (dest / "demo-org" / "tiny-model" / "model.safetensors").is_file()
    status = run_preload("status", "--dest", str(dest))
    assert status.code == 0 and "never" not in status.stdout and "deep" in status.stdout, status.stdout


def test_a_second_demo_says_the_model_was_already_there(tmp_path: Path, run_preload: RunPreload) -> None:
    """Run twice: the second first step is warm and says so; no log line claims a fresh transfer."""
    dest = tmp_path / "demo"
    assert run_preload("demo", "--dest", str(dest)).code == 0
    again = run_preload("demo", "--dest", str(dest))
    assert again.code == 0, again.stderr
    assert "already complete" in again.stdout and "nothing fetched" in again.stdout
    assert "hashed while it arrived" not in again.stdout
    done = [e for e in again.events() if e.get("event") == "preload_complete"]
    assert done and all(e["already_complete"] is True for e in done)
    assert not [e for e in again.events() if e.get("event") == "transfer_start"]


def test_demo_never_reads_preload_dest(tmp_path: Path, run_preload: RunPreload) -> None:
    """A pod sets PRELOAD_DEST for every container: the demo has its own twin, PRELOAD_DEMO_DEST."""
    real, demo = tmp_path / "real-cache", tmp_path / "demo"
    r = run_preload("demo", env={"PRELOAD_DEST": str(real), "PRELOAD_DEMO_DEST": str(demo)})
    assert r.code == 0, r.stderr
    assert not real.exists() and (demo / "demo-org" / "tiny-model").is_dir()


def test_verify_revision_and_wait_reasons_on_the_demo_cache(tmp_path: Path, run_preload: RunPreload) -> None:
    """verify --revision agrees with the published one or says which; wait's timeout says why."""
    dest = tmp_path / "demo"
    assert run_preload("demo", "--dest", str(dest)).code == 0
    ok = run_preload("verify", "--model", DEMO, "--dest", str(dest), "--revision", "main")
    assert ok.code == 0, ok.stdout + ok.stderr
    other = run_preload("verify", "--model", DEMO, "--dest", str(dest), "--revision", "v2")
    assert other.code == ExitCode.NOT_READY and "not v2" in other.stdout
    clash = run_preload("verify", "--model", f"{DEMO}@main", "--dest", str(dest), "--revision", "v2")
    assert clash.code == ExitCode.USAGE
    cases = [
        ((str(dest), "--revision", "v2"), "published revision is main"),
        ((str(dest), "--layout", "hf-cache"), "published in the dir layout, not hf-cache"),
        ((str(tmp_path),), "no valid completion marker"),
    ]
    for (where, *more), why in cases:
        w = run_preload("wait", "--model", DEMO, "--dest", where, "--timeout", "0.3", *more)
        assert w.code == ExitCode.TIMEOUT, w.stderr
        assert why in w.event("failed")["error"], w.stderr
