"""Agents on the netlab (issue 14): one `preload agent` per node against the lab's hub, and what they report.

Shared by tests/integration/test_peers_netns.py and bench/bench_peers.py: a `Fleet` starts agents in
node namespaces (each with its own cache directory), polls their API from the harness, and reads
what a scenario measures: time until ready, bytes by link (hub sent, node uploads), bytes by
source (the agents' metrics) and whether every ready node's files hash-check against the model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.netlab import HUB, NetLab

REPO = "lab/model"
API_PORT = 8080
PEER_PORT = 8472
ROOT = Path(__file__).resolve().parent.parent
LIAR = ROOT / "tests" / "liarpeer.py"
# The peer metrics: the names the brief gave, and the agent's own prefix, whichever exists.
SOURCE_BYTES = ("preload_source_bytes_total", "model_cache_source_bytes_total")
SERVED_BYTES = ("preload_peer_served_bytes_total", "model_cache_peer_served_bytes_total")
PEER_ERRORS = ("preload_peer_errors_total", "model_cache_peer_errors_total")
PEERS_EXCLUDED = ("preload_peer_excluded", "model_cache_peers_excluded")


@functools.cache
def peers_built() -> bool:
    """Whether this checkout's `preload` has `--peers` (the peer fan-out of issue 14)."""
    done = subprocess.run(
        [sys.executable, "-m", "agent", "--help"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    return re.search(r"^\s+--peers\s", done.stdout, re.MULTILINE) is not None


def agent_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for an agent: no user token or PRELOAD_* settings, JSON logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PRELOAD_"))}
    env.update(HF_HOME=str(home / "hf-home"), PRELOAD_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value} (comments dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with_labels = key.strip()
            try:
                out[with_labels] = float(value)
            except ValueError:
                continue
    return out


def metric(samples: Mapping[str, float], name: str | Sequence[str], **labels: str) -> float:
    """Sum of the samples of `name` (or of any of several names) whose labels include `labels`."""
    names = {name} if isinstance(name, str) else set(name)
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base not in names:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def make_model(directory: Path, files: int = 4, file_size: int = 16 << 20, seed: int = 14) -> dict[str, str]:
    """Write a model of `files` safetensors-named files of random bytes; {name: sha256} of every file."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    digests = {}
    (directory / "config.json").write_text('{"model_type": "netlab"}\n')
    digests["config.json"] = hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()
    for i in range(files):
        name = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        h, left = hashlib.sha256(), file_size
        with open(directory / name, "wb") as out:
            while left:
                block = rng.randbytes(min(left, 8 << 20))
                h.update(block)
                out.write(block)
                left -= len(block)
        digests[name] = h.hexdigest()
    return digests


def hash_tree(directory: Path, names: Sequence[str]) -> dict[str, str | None]:
    """sha256 of each named file under `directory` (None where it is missing)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            with open(directory / name, "rb") as f:
                out[name] = hashlib.file_digest(f, "sha256").hexdigest()
        except FileNotFoundError:
            out[name] = None
    return out


@dataclass(frozen=True)
class Model:
    """The model the lab's hub serves: {file name: sha256} and {file name: size}."""

    directory: Path
    digests: Mapping[str, str]
    sizes: Mapping[str, int]

    @classmethod
    def make(cls, directory: Path, files: int, file_size: int) -> Model:
        """Write `files` random safetensors-named files of `file_size` bytes (plus a config.json)."""
        digests = make_model(directory, files, file_size)
        return cls(directory, digests, {n: (directory / n).stat().st_size for n in digests})

    @property
    def size(self) -> int:
        return sum(self.sizes.values())

    def size_by_digest(self) -> dict[str, int]:
        """{content hash: size}: every file's sha256, and the git blob sha1 of the small ones."""
        out = {self.digests[n]: self.sizes[n] for n in self.digests}
        for name, size in self.sizes.items():
            if size < 10 << 20:
                data = (self.directory / name).read_bytes()
                out[hashlib.sha1(b"blob %d\0" % size + data, usedforsecurity=False).hexdigest()] = size
        return out


@dataclass
class LabAgent:
    """One agent process in a node namespace."""

    node: str
    ip: str
    dest: Path
    log: Path
    proc: subprocess.Popen[bytes]
    started: float
    ready_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{API_PORT}"

    def events(self) -> list[dict[str, Any]]:
        """Its JSON log lines so far."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


@dataclass
class Fleet:
    """Agents of one scenario: fresh cache directories under `workdir`, the lab's hub as origin."""

    lab: NetLab
    workdir: Path
    model: Model
    repo: str = REPO
    agents: dict[str, LabAgent] = field(default_factory=dict)
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def config(self) -> Path:
        path = self.workdir / "config.yaml"
        if not path.exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            path.write_text(f"models:\n  - id: {self.repo}\nverifyInterval: 0\nstartupJitter: 0\n")
        return path

    def start(self, node: str, *, peers: str | None = None, extra: Sequence[str] = ()) -> LabAgent:
        """Start `preload agent` in a node's namespace; `peers`: its --peers SPEC (None: no peers)."""
        assert self.lab.hub_url, "start the lab's hub first"
        ip, home = self.lab.ip(node), self.workdir / node
        dest = home / "cache"
        dest.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "agent", "--endpoint", self.lab.hub_url, "agent", "--config",
                str(self.config()), "--dest", str(dest), "--listen", f"{ip}:{API_PORT}"]  # fmt: skip
        env = dict(self.extra_env)
        if peers is not None:
            # --peers is a transfer option of `preload` (before `agent`): its env twin reaches both.
            env["PRELOAD_PEERS"] = peers
            argv += ["--peer-listen", f"{ip}:{PEER_PORT}"]
        log = home / "agent.log"
        proc = self.lab.spawn(node, [*argv, *extra], env=agent_env(home, env), log_path=log)
        agent = LabAgent(node, ip, dest, log, proc, time.monotonic())
        self.agents[node] = agent
        return agent

    def start_many(self, nodes: Iterable[str], *, peers: str | None = None) -> list[LabAgent]:
        return [self.start(n, peers=peers) for n in nodes]

    def get(self, agent: LabAgent, path: str) -> tuple[int, bytes]:
        return self.lab.get(agent.node, agent.url + path, timeout=5)

    def is_ready(self, agent: LabAgent) -> bool:
        return self.get(agent, "/readyz")[0] == 200

    def view(self, agent: LabAgent) -> dict[str, Any]:
        """The agent's /v1/models view of the model ({} while it does not answer)."""
        status, body = self.get(agent, f"/v1/models/{self.repo}")
        return json.loads(body) if status == 200 else {}

    def metrics(self, agent: LabAgent) -> dict[str, float]:
        status, body = self.get(agent, "/metrics")
        return parse_metrics(body.decode()) if status == 200 else {}

    def wait_ready(self, agents: Sequence[LabAgent], timeout: float, poll: float = 0.2) -> float:
        """Poll until every agent is ready (each one's `ready_at` set); seconds from the first start.

        An agent that dies fails the wait at once, with the end of its log.
        """
        deadline = time.monotonic() + timeout
        while True:
            for agent in agents:
                if agent.ready_at is None and self.is_ready(agent):
                    agent.ready_at = time.monotonic()
                if agent.proc.poll() is not None and agent.ready_at is None:
                    tail = agent.log.read_text(errors="replace")[-3000:]
                    raise AssertionError(f"agent on {agent.node} exited {agent.proc.returncode}:\n{tail}")
            waiting = [a.node for a in agents if a.ready_at is None]
            if not waiting:
                start = min(a.started for a in agents)
                return max(a.ready_at or 0 for a in agents) - start
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready after {timeout} s: {waiting}; logs under {self.workdir}")
            time.sleep(poll)

    def corrupt(self, agent: LabAgent) -> list[str]:
        """The files of a ready agent's model that are missing or differ from the hub's."""
        path = self.view(agent).get("path")
        assert path, f"{agent.node}: no path in its view"
        got = hash_tree(Path(path), list(self.model.digests))
        return [name for name, digest in self.model.digests.items() if got[name] != digest]

    def bytes_by_source(self, agent: LabAgent) -> dict[str, float]:
        """What the agent fetched, by source, from its metrics (peer fan-out's counters)."""
        samples = self.metrics(agent)
        return {
            "origin": metric(samples, SOURCE_BYTES, source="origin"),
            "peer": metric(samples, SOURCE_BYTES, source="peer"),
            "served": metric(samples, SERVED_BYTES),
            "peer_errors": metric(samples, PEER_ERRORS),
            "excluded": metric(samples, PEERS_EXCLUDED),
        }

    def summary(self) -> dict[str, dict[str, float]]:
        """Each live agent's bytes by source (for failure messages and the benchmark's JSON)."""
        return {n: self.bytes_by_source(a) for n, a in self.agents.items() if a.proc.poll() is None}

    def kill(self, node: str, sig: signal.Signals = signal.SIGKILL) -> None:
        agent = self.agents[node]
        if agent.proc.poll() is None:
            agent.proc.send_signal(sig)
            agent.proc.wait(15)

    def stop(self) -> None:
        """End every agent (SIGTERM, then SIGKILL), then delete their caches."""
        for agent in self.agents.values():
            if agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGTERM)
        for agent in self.agents.values():
            try:
                agent.proc.wait(15)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
                agent.proc.wait(5)
        for agent in self.agents.values():
            shutil.rmtree(agent.dest, ignore_errors=True)


def link_sent(lab: NetLab, names: Iterable[str]) -> dict[str, int]:
    """Bytes each member has sent so far (for deltas around a scenario)."""
    return {n: lab.link_bytes(n).sent for n in names}


def start_liar(lab: NetLab, node: str, model: Model, workdir: Path) -> subprocess.Popen[bytes]:
    """Run tests/liarpeer.py in `node` on the peer port: wrong bytes of the right length to every request."""
    sizes = workdir / "liar-sizes.json"
    sizes.write_text(json.dumps(model.size_by_digest()))
    argv = [sys.executable, str(LIAR), "--listen", f"{lab.ip(node)}:{PEER_PORT}", "--sizes", str(sizes)]
    proc = lab.spawn(node, argv, log_path=workdir / "liar.log")
    deadline = time.monotonic() + 15
    while lab.get(node, f"http://{lab.ip(node)}:{PEER_PORT}/liar/alive")[0] != 200:
        assert proc.poll() is None and time.monotonic() < deadline, (workdir / "liar.log").read_text()
        time.sleep(0.05)
    return proc


__all__ = ["HUB", "REPO", "Fleet", "LabAgent", "Model", "link_sent", "peers_built", "start_liar"]
