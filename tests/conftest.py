"""Shared fixtures: the loopback test hub and a runner for the real `preload` process."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

pytest_plugins = ["tests.hubfixtures", "tests.s3fixtures"]

# Tools some tests need and skip without. CI sets MODEL_CACHE_TEST_REQUIRE (see .ci/run) to a
# comma-separated list of them, or `all`, so that a missing tool fails instead of skipping.
REQUIRE_ENV = "MODEL_CACHE_TEST_REQUIRE"
REQUIRABLE = ("helm", "podman", "checkov", "kubernetes-validate", "cluster", "netns")
# What `all` stands for. `cluster` is the real Kubernetes of scripts/cluster.sh (tests/cluster/);
# `netns` the multi-node lab of tests/netlab.py (root, iproute2, dnsmasq).
ALL = REQUIRABLE


def _required_names() -> set[str]:
    return {n.strip() for n in os.environ.get(REQUIRE_ENV, "").split(",") if n.strip()}


def required_tools() -> set[str]:
    """The tools MODEL_CACHE_TEST_REQUIRE names (`all`: every one of ALL)."""
    names = _required_names()
    return names - {"all"} | set(ALL) if "all" in names else names


def tool_unavailable(tool: str, reason: str) -> NoReturn:
    """Skip the test because `tool` cannot run here, or fail it when MODEL_CACHE_TEST_REQUIRE names it."""
    assert tool in REQUIRABLE, tool
    if tool in required_tools():
        pytest.fail(f"{tool} is required ({REQUIRE_ENV}={os.environ[REQUIRE_ENV]}) but unavailable: {reason}")
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    """Reject a misspelt MODEL_CACHE_TEST_REQUIRE rather than silently requiring nothing."""
    unknown = _required_names() - {*REQUIRABLE, "all"}
    if unknown:
        raise pytest.UsageError(
            f"{REQUIRE_ENV}: unknown tool(s) {sorted(unknown)}; known: {', '.join(REQUIRABLE)}, all"
        )


@dataclass
class Run:
    """A finished `preload` process."""

    code: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines it wrote to stderr."""
        out = []
        for line in self.stderr.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def event(self, name: str) -> dict[str, Any]:
        """The last log event with this name."""
        matches = [e for e in self.events() if e.get("event") == name]
        assert matches, f"no {name!r} event in:\n{self.stderr}"
        return matches[-1]


def base_env(tmp_path: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: no user token, instant retries, JSON logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PRELOAD_"))}
    env.update(
        HF_HOME=str(tmp_path / "hf-home"),
        PRELOAD_RETRY_SCALE="0",
        PRELOAD_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


# A test's files of this size or more are deleted after it, passed or failed (prune_big_files).
BIG_FILE = 16 << 20


def prune_big(root: Path, threshold: int = BIG_FILE) -> int:
    """Delete regular files under `root` of `threshold` bytes or more (apparent or allocated); bytes freed.

    Symlinks are not followed; unreadable directories and vanished files are passed over.
    """
    freed = 0
    for top, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and max(st.st_size, st.st_blocks * 512) >= threshold:
                    os.unlink(path)
                    freed += st.st_blocks * 512
            except OSError:
                continue
    return freed


@pytest.fixture
def prune_big_files(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, with its big files deleted after the test even when it fails (logs, journals stay)."""
    yield tmp_path
    prune_big(tmp_path)


RunPreload = Callable[..., Run]


@pytest.fixture
def run_preload(tmp_path: Path) -> RunPreload:
    """Run `python -m agent ARGS` as a real process and collect its output."""

    def run(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> Run:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", *args],
            env=base_env(tmp_path, env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    return run


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str) -> int | None:
    """GET url; the status code, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """Mount a small tmpfs at `path` for the block (skip the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
    if subprocess.run(command, check=False, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def spawn_preload(tmp_path: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `python -m agent ARGS` without waiting."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        env=base_env(tmp_path, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
