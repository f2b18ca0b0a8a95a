"""The container image: built by scripts/build-image.sh, run the way Kubernetes runs it.

Every run uses `--user 10001:10001 --read-only --tmpfs /tmp`, as the chart's security
context does. The test hub listens on loopback and the container shares the host network.
The chart-driven run takes the rendered DaemonSet pod and the examples' init containers as
they are and translates them to podman flags (tests/integration/podrun.py).
Without podman these tests skip, or fail when MODEL_CACHE_TEST_REQUIRE names podman.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.devhub import HubServer
from tests.conftest import free_port, http_status, tool_unavailable
from tests.integration import podrun

REPO = Path(__file__).resolve().parents[2]
TAG = os.environ.get("MODEL_CACHE_TEST_IMAGE", "localhost/model-cache:dev")
PODMAN = ["podman", "--runtime", "runc"]
UID = 10001
MODEL = "demo-org/tiny-model"

pytestmark = [pytest.mark.container, pytest.mark.slow]


def _podman_problem() -> str | None:
    """Why podman cannot run containers here, or None when it can."""
    if shutil.which("podman") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            return "podman is not installed and cannot be installed (needs root and apt-get)"
        return None  # scripts/build-image.sh installs it
    proc = subprocess.run([*PODMAN, "info"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"`podman info` fails: {proc.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="session")
def image() -> str:
    """Build the image with scripts/build-image.sh once per session; skip if podman cannot run."""
    problem = _podman_problem()
    if problem:
        tool_unavailable("podman", problem)
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-image.sh"), TAG],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        problem = _podman_problem()
        if problem:
            tool_unavailable("podman", problem)
        pytest.fail(f"scripts/build-image.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    size = int(_podman("image", "inspect", "--format", "{{.Size}}", TAG).stdout)
    sys.stderr.write(f"\nimage {TAG}: {size / 1e6:.0f} MB, build script took {elapsed:.0f}s\n")
    return TAG


def _podman(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a podman command with runc; never raises on a non-zero exit."""
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, check=False, timeout=timeout)


@pytest.fixture
def node_cache(tmp_path: Path) -> Path:
    """A host directory standing in for the hostPath, owned by the agent's UID (as the chown init does)."""
    cache = tmp_path / "node-cache"
    cache.mkdir()
    if os.geteuid() == 0:
        os.chown(cache, UID, UID)
    else:
        cache.chmod(0o777)
    return cache


def run_args(image: str, cache: Path, *extra: str) -> list[str]:
    """`podman run` arguments matching the chart's pod security settings."""
    return [
        "run",
        "--rm",
        "--user",
        f"{UID}:{UID}",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--network",
        "host",
        "--security-opt",
        "no-new-privileges",
        "--cap-drop",
        "ALL",
        "-v",
        f"{cache}:/data/models",
        *extra,
        image,
    ]


def test_image_metadata(image: str) -> None:
    """The image runs as numeric 10001:10001 with `preload` as its entrypoint."""
    (info,) = json.loads(_podman("image", "inspect", image).stdout)
    config = info["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["preload"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HOME"] == "/tmp"
    assert env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_help_runs_read_only(image: str, node_cache: Path) -> None:
    """`preload --help` works as UID 10001 on a read-only root filesystem."""
    proc = _podman(*run_args(image, node_cache), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage: preload" in proc.stdout


def test_runtime_has_no_build_tools(image: str, node_cache: Path) -> None:
    """The runtime holds the virtualenv only: no pip, no compiler; everything is byte-compiled."""
    script = (
        "for t in pip pip3 gcc cc make; do command -v $t && exit 1; done; "
        "test -d /opt/venv && test ! -e /opt/venv/bin/pip && "
        "python3 -c 'import agent, pathlib, sys; "
        "root = pathlib.Path(agent.__file__).parent; "
        'missing = [str(p) for p in root.rglob("*.py") '
        'if not list((p.parent / "__pycache__").glob(p.stem + ".*.pyc"))]; '
        'sys.exit("not byte-compiled: " + " ".join(missing) if missing else 0)\''
    )
    proc = _podman(*run_args(image, node_cache, "--entrypoint", "/bin/sh"), "-c", script)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dev_hub_left_out(image: str, node_cache: Path) -> None:
    """agent/devhub (the loopback test hub and demo model) is not in the image, the product is,
    and `preload demo` says in one line that the demo hub is missing instead of a traceback."""

    def python(code: str) -> subprocess.CompletedProcess[str]:
        return _podman(*run_args(image, node_cache, "--entrypoint", "python"), "-c", code)

    missing = python("import agent.devhub")
    assert missing.returncode != 0
    assert "ModuleNotFoundError: No module named 'agent.devhub'" in missing.stderr, missing.stderr
    present = python("import agent.engine.preload")
    assert present.returncode == 0, present.stderr
    demo = _podman(*run_args(image, node_cache), "demo", "--dest", "/tmp/demo")
    assert demo.returncode != 0
    assert "the demo hub is not installed in this image" in demo.stderr, demo.stderr
    assert "Traceback" not in demo.stderr
    assert len(demo.stderr.strip().splitlines()) == 1, demo.stderr


def test_preload_demo_model(image: str, node_cache: Path, hub: Any) -> None:
    """A real preload of demo-org/tiny-model from the loopback hub into the mounted cache."""
    proc = _podman(
        *run_args(image, node_cache, "-e", f"HF_ENDPOINT={hub.url}", "-e", "PRELOAD_LOG_FORMAT=json"),
        "--model",
        MODEL,
        "--dest",
        "/data/models",
        "--timeout",
        "2m",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    model_dir = node_cache / MODEL
    files = [p for p in model_dir.rglob("*") if p.is_file()]
    assert files, f"nothing under {model_dir}: {proc.stderr}"
    if os.geteuid() == 0:
        assert {p.stat().st_uid for p in files} == {UID}


def test_agent_becomes_ready_in_container(image: str, node_cache: Path, hub: Any, tmp_path: Path) -> None:
    """`preload agent`, run as the DaemonSet runs it, reports /readyz 200 once the model is cached."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.yaml").write_text(
        f"models:\n  - id: {MODEL}\ndefaults: {{sources: [hf], layout: dir}}\n"
        "maxConcurrent: 1\nverifyInterval: 1h\nstartupJitter: 0s\n"
        "gc: {highWatermarkPercent: 90, lowWatermarkPercent: 80}\n"
    )
    port = free_port()
    name = f"model-cache-test-{port}"
    extra = ["-d", "--name", name, "-e", f"HF_ENDPOINT={hub.url}", "-v", f"{config}:/etc/model-cache:ro"]
    started = _podman(
        *[a for a in run_args(image, node_cache, *extra) if a != "--rm"],
        "agent",
        "--config",
        "/etc/model-cache/config.yaml",
        "--dest",
        "/data/models",
        "--listen",
        f"127.0.0.1:{port}",
    )
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 120
        while http_status(f"http://127.0.0.1:{port}/readyz") != 200:
            state = _podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            assert state == "true", _podman("logs", name).stderr
            assert time.monotonic() < deadline, _podman("logs", name).stderr
            time.sleep(0.5)
        assert http_status(f"http://127.0.0.1:{port}/livez") == 200
        assert http_status(f"http://127.0.0.1:{port}/v1/models/{MODEL}") == 200
        assert (node_cache / MODEL).is_dir()
    finally:
        _podman("stop", "--time", "20", name, timeout=60)
        _podman("rm", "--force", name)


# --- the chart's pod and the examples' init containers, as rendered -----------------------


def _preloader_image() -> str:
    """The image the chart and the examples name: replaced by the locally built one."""
    chart = yaml.safe_load((podrun.CHART / "Chart.yaml").read_text())
    return f"ghcr.io/model-cache/preloader:{chart['appVersion']}"


@pytest.mark.parametrize("scenario", sorted(podrun.SCENARIOS))
def test_chart_runs_in_podman_as_rendered(
    image: str, helm: str, hub: HubServer, tmp_path: Path, scenario: str
) -> None:
    """The rendered DaemonSet pod under podman: the chown init container, then the agent, with
    command/args/env, securityContext, resources and volumes as rendered; the example's and the
    NOTES' `preload wait` init containers start before the model is ready (`--dest` with the
    cache mounted read-only, `--agent` through the Service address), block, then return 0.

    `default` is the dir layout with examples/vllm-deployment.yaml; `hf-cache` is
    ci/hf-cache-values.yaml (recursive chown, token from a Secret) with
    examples/vllm-deployment-hf-cache.yaml.
    """
    as_root = os.geteuid() == 0
    leftover = Path("leftover") / "old-model" / "weights.bin"

    def before_pod(cache: Path) -> None:
        # A cache left by another user, which only the recursive chown can hand over.
        if scenario == "hf-cache" and as_root:
            (cache / leftover).parent.mkdir(parents=True, mode=0o700)
            (cache / leftover).write_bytes(b"old")
            for path in (cache / leftover, cache / leftover.parent, cache / leftover.parent.parent):
                os.chown(path, 4242, 4242)
            (cache / leftover).chmod(0o600)

    outcome = podrun.run_chart_and_waiters(
        helm,
        hub,
        tmp_path,
        podrun.SCENARIOS[scenario],
        lambda cluster: podrun.PodmanRunner(cluster, image, {_preloader_image()}),
        before_pod,
    )
    assert outcome.skipped_init == []
    assert f"owned by {UID}:{UID}" in outcome.init_output["chown-cache"]
    assert len(outcome.waiters) == 3, outcome.waiters
    if as_root:
        owners = dict(podrun.node_tree_owners(outcome.cache))
        assert set(owners.values()) == {UID}, {str(p): u for p, u in owners.items() if u != UID}
        if scenario == "hf-cache":
            assert outcome.cache / leftover in owners
