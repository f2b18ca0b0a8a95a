"""Shared plumbing of the reliability suite: rows, trial context, process runners, content checks.

Everything runs against real `preload` / `preload agent` processes and the loopback test hub;
every wait is bounded in count and time, and all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.devhub import HubFile, HubRepo, HubServer
from agent.spec import Layout, ModelSpec
from agent.store import Store
from tests.conftest import Run, base_env

PY = sys.executable


@dataclass
class Row:
    """One line of docs/reliability.md."""

    scenario: str
    trials: int = 0
    passed: int = 0
    data_lost: str = "0"
    corrupt_ready: int = 0
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def trial(self, ok: bool, why: str = "") -> None:
        """Count one trial; remember why it failed."""
        self.trials += 1
        if ok:
            self.passed += 1
        elif len(self.failures) < 5:
            self.failures.append(why[:400])

    @property
    def ok(self) -> bool:
        """Every trial passed and nothing corrupt was ever reported ready."""
        return self.trials > 0 and self.passed == self.trials and self.corrupt_ready == 0


@dataclass
class Ctx:
    """What every scenario gets: a work dir, the quick flag, a seeded RNG."""

    work: Path
    quick: bool
    trials: int  # the "N" of --trials (full mode); quick mode uses its own small counts
    rng: random.Random

    def n(self, quick: int, full: int | None = None) -> int:
        """Trials for this scenario in the current mode."""
        return quick if self.quick else max(full if full is not None else self.trials, quick)

    def dir(self, name: str) -> Path:
        """A fresh directory under the work dir."""
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def env(ctx: Ctx, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The clean environment of the existing tests (no user token, JSON logs, instant retries)."""
    return base_env(ctx.work, extra)


def cli(
    ctx: Ctx,
    *args: str,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 90,
    cwd: Path | None = None,
) -> Run:
    """Run `python -m agent ARGS`; a hang past `timeout` is reported as code -999."""
    try:
        proc = subprocess.run(
            [PY, "-m", "agent", *args],
            env=env(ctx, extra_env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return Run(-999, "", err + f"\nHANG: no exit within {timeout}s")
    return Run(proc.returncode, proc.stdout, proc.stderr)


def spawn(ctx: Ctx, *args: str, extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `python -m agent ARGS` without waiting."""
    return subprocess.Popen(
        [PY, "-m", "agent", *args],
        env=env(ctx, extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill9(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a process we started, and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def proc_counter(pid: int, name: str, key: str) -> int:
    """One counter from /proc/PID/NAME (0 once the process has gone or cannot be read)."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def wchar(pid: int) -> int:
    """Bytes the process has passed to write()/pwrite() so far (file data, journals, logs)."""
    return proc_counter(pid, "io", "wchar:")


def hwm_kib(pid: int) -> int:
    """Peak RSS of the process's own image (VmHWM, KiB).

    Not ru_maxrss from wait4: subprocess starts children with vfork, and the kernel carries the
    parent's high-water mark into the child's ru_maxrss, so every child would "peak" at least at
    the runner's own size. VmHWM starts afresh at exec.
    """
    return proc_counter(pid, "status", "VmHWM:")


HWM_POLL = 0.02


def run_peak_rss(
    ctx: Ctx, *args: str, extra_env: Mapping[str, str] | None = None, timeout: float = 300
) -> tuple[int, int]:
    """Run `python -m agent ARGS`, reading its VmHWM every 20 ms: (exit code, peak RSS KiB).

    The mark only grows, so polling loses at most the last 20 ms of a process's life. A hang past
    `timeout` is killed and reported as code -999.
    """
    proc = subprocess.Popen(
        [PY, "-m", "agent", *args],
        env=env(ctx, extra_env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak = 0
    deadline = time.monotonic() + timeout
    while proc.poll() is None:  # VmHWM stays readable until the process is reaped
        peak = max(peak, hwm_kib(proc.pid))
        if time.monotonic() > deadline:
            kill9(proc)
            return -999, peak
        time.sleep(HWM_POLL)
    return proc.returncode, peak


def kill_when_written(proc: subprocess.Popen[str], target: int, timeout: float = 120) -> tuple[bool, int]:
    """SIGKILL `proc` once it has written `target` bytes (wchar, polled every ~2 ms).

    (killed while still running, bytes written when the kill was sent). False: the process
    exited (or `timeout` passed) before writing that much.
    """
    deadline = time.monotonic() + timeout
    written = 0
    while proc.poll() is None and time.monotonic() < deadline:
        written = wchar(proc.pid) or written
        if written >= target:
            os.kill(proc.pid, signal.SIGKILL)  # still unreaped: the pid cannot have been reused
            proc.communicate(timeout=30)
            return proc.returncode == -signal.SIGKILL, written
        time.sleep(0.002)
    kill9(proc)
    return False, written


def drop_caches() -> bool:
    """Write dirty pages and drop the page cache (root only): the next read comes from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def random_blob(path: Path, size: int, seed: int) -> Path:
    """A file of pseudo-random bytes (cheap, reproducible), created once."""
    if not path.exists() or path.stat().st_size != size:
        rng = random.Random(seed)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            left = size
            while left:
                n = min(left, 1 << 20)
                f.write(rng.randbytes(n))
                left -= n
        tmp.rename(path)
    return path


def sha256_file(path: Path) -> str:
    """sha256 of a file on disk."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def expected_hashes(repo: HubRepo, commit: str | None = None) -> dict[str, str]:
    """Path -> sha256 of every file of a hub commit."""
    return {path: f.sha256 for path, f in repo.files(commit).items()}


def ready_state(
    dest: Path, repo_id: str, expected: Mapping[str, str], layout: str = "dir"
) -> tuple[bool, int]:
    """(reported ready?, files that are ready but do not match `expected`): the corrupt-ready count."""
    spec = ModelSpec(repo_id, layout=Layout(layout))
    store = Store(dest)
    m = store.ready(spec)
    if m is None:
        return False, 0
    base = store.model_path(spec, m.commit)
    bad = 0
    for f in m.files:
        try:
            if expected.get(f.path) != sha256_file(base / f.path):
                bad += 1
        except OSError:
            bad += 1
    return True, bad


def marker_exists(dest: Path, repo_id: str, layout: str = "dir") -> bool:
    """Whether the completion marker file exists at all."""
    return Store(dest).marker_path(ModelSpec(repo_id, layout=Layout(layout))).exists()


def served(hub: HubServer, paths: Iterable[str] | None = None) -> int:
    """File body bytes the hub and CDN sent (listings excluded)."""
    recs = [r for r in hub.requests() if r.kind in ("cdn", "resolve") and r.method == "GET"]
    return sum(r.bytes_sent for r in recs)


def events(text: str) -> list[dict[str, Any]]:
    """JSON log lines of a process's stderr."""
    out = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def failed_error(run: Run) -> str:
    """The error of the `failed` event, or ''."""
    errs = [e.get("error", "") for e in events(run.stderr) if e.get("event") == "failed"]
    return str(errs[-1]) if errs else ""


def snapshot_tree(root: Path) -> set[str]:
    """Every path under `root` (symlinks not followed)."""
    out = set()
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            out.add(os.path.join(dirpath, name))
    return out


def bounded_poll(fn: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll `fn` until true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(step)
    return fn()


def hub_repo_from_blobs(repo_id: str, blobs: Mapping[str, Path], small: Mapping[str, bytes]) -> HubRepo:
    """A repo of disk-backed shards plus small in-memory files."""
    files = [HubFile(p, source=b) for p, b in blobs.items()]
    files += [HubFile(p, data=d) for p, d in small.items()]
    return HubRepo(repo_id, files)


def mib(n: float) -> str:
    """Bytes as MiB text."""
    return f"{n / (1 << 20):.1f} MiB"
