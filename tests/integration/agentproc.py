"""A real `preload agent` process on loopback, and helpers to poll it with bounded waits."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from agent.devhub import HubFile, HubRepo, HubServer
from agent.integrity import SHA256, Digest
from agent.manifest import Manifest, RemoteFile
from agent.spec import ModelSpec
from agent.store import Store
from tests.conftest import base_env, free_port

T = TypeVar("T")
DEMO = "demo-org/tiny-model"
BIG = "test-org/big-model"
BIG_SIZE = 4 << 20


def big_repo() -> HubRepo:
    """A model with one 4 MiB LFS file: big enough to be caught mid-transfer when trickled."""
    weights = b"".join(i.to_bytes(4, "little") for i in range(BIG_SIZE // 4))
    return HubRepo(
        BIG, [HubFile("config.json", b'{"model_type": "big"}\n'), HubFile("model.safetensors", weights)]
    )


def small_repo(repo_id: str, salt: bytes = b"") -> HubRepo:
    """A small two-file model whose content depends on its id (and `salt`, for new commits)."""
    body = (repo_id.encode() + salt) * 2000
    return HubRepo(repo_id, [HubFile("config.json", b"{}\n" + salt), HubFile("model.safetensors", body)])


def publish_sparse(dest: Path, repo: str, sizes: Mapping[str, int], true_hashes: bool = True) -> Manifest:
    """Publish a model of zero-filled sparse files straight into the cache, as a preload would.

    Every file's mtime is an hour ahead, so the agent's fast check re-hashes them at each pass
    (a large model costs seconds of hashing but no disk). Without `true_hashes` the recorded
    hashes are wrong (a check that finishes finds the model damaged) and cost nothing to make.
    """
    store = Store(dest)
    store.prepare()
    spec = ModelSpec(repo)
    commit = hashlib.sha1(repo.encode()).hexdigest()
    files = tuple(
        RemoteFile(path, size, Digest(SHA256, _zeros_sha256(size) if true_hashes else "0" * 64))
        for path, size in sizes.items()
    )
    now = time.time()
    m = Manifest(repo, "main", commit, "dir", "hf", files, now, now)
    ahead = now + 3600
    for f in files:
        path = store.version_dir(spec, commit) / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            out.truncate(f.size)
        os.utime(path, (ahead, ahead))
    store.publish(spec, m)
    return m


def _zeros_sha256(size: int) -> str:
    h, block = hashlib.sha256(), bytes(min(size, 8 << 20))
    while size > 0:
        h.update(block[: min(size, len(block))])
        size -= len(block)
    return h.hexdigest()


def eventually(fn: Callable[[], T | None], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll `fn` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class AgentProc:
    """`python -m agent agent ...` with its log in a file."""

    def __init__(
        self, tmp_path: Path, hub_url: str, config: Path, dest: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"agent-{self.port}.log"
        self.args = [
            "agent",
            "--config",
            str(config),
            "--dest",
            str(dest),
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        self.env = {"HF_ENDPOINT": hub_url, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProc:
        """Spawn the process and wait until its API answers."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", *self.args],
                env=base_env(self.tmp_path, self.env),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        eventually(lambda: self.get("/livez")[0] == 200, 15, "the agent's /livez")
        return self

    def get(self, path: str) -> tuple[int, Any]:
        """GET a path; (status, parsed JSON or text)."""
        r = httpx.get(self.url + path, timeout=5)
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text

    def model(self, repo: str) -> dict[str, Any]:
        """The agent's view of one model."""
        status, view = self.get(f"/v1/models/{repo}")
        assert status == 200, view
        assert isinstance(view, dict)
        return view

    def model_when(
        self, repo: str, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll the model's view until `pred` holds for it."""

        def check() -> dict[str, Any] | None:
            status, view = self.get(f"/v1/models/{repo}")
            return view if status == 200 and pred(view) else None

        return eventually(check, timeout, what)

    def wait_state(self, repo: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll until the model reaches `state`."""
        return self.model_when(repo, lambda v: v["state"] == state, timeout, f"{repo} {state}")

    def metric(self, name: str) -> float:
        """Sum of every sample of a metric in /metrics."""
        text = self.get("/metrics")[1]
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " ")
        )

    def event(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        """The first log event with this name, waiting for it to be logged."""
        return eventually(
            lambda: next((e for e in self.events() if e.get("event") == name), None), timeout, name
        )

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line so far."""
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the agent."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end; its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """End the process if it still runs (SIGKILL after a grace period)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def configmap(dir_: Path, text: str, generation: int) -> Path:
    """Write config.yaml the way the kubelet updates a ConfigMap volume: a `..data` symlink swap."""
    dir_.mkdir(exist_ok=True)
    data = dir_ / f"..{generation}"
    data.mkdir()
    (data / "config.yaml").write_text(text)
    tmp = dir_ / "..data_tmp"
    os.symlink(data.name, tmp)
    os.replace(tmp, dir_ / "..data")
    link = dir_ / "config.yaml"
    if not link.is_symlink():
        os.symlink("..data/config.yaml", link)
    return link


def start_agent(
    agents: list[AgentProc], tmp_path: Path, hub: HubServer, config: Path, dest: Path, **env: str
) -> AgentProc:
    """Start one agent process and remember it (in the `agents` fixture) for clean-up."""
    agent = AgentProc(tmp_path, hub.url, config, dest, env)
    agents.append(agent)
    return agent.start()
