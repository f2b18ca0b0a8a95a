"""Scenarios 3, 9, 10: concurrency, corruption at rest (verify --deep, agent repair), memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx

from agent.devhub import HubFile, HubRepo, HubServer
from tests.conftest import free_port
from tests.integration.agentproc import AgentProc
from tests.reliability.common import (
    HWM_POLL,
    PY,
    Ctx,
    Row,
    bounded_poll,
    cli,
    env,
    events,
    expected_hashes,
    kill9,
    mib,
    random_blob,
    ready_state,
    run_peak_rss,
    spawn,
)


def _repo(ctx: Ctx, repo_id: str, shards: int, shard_size: int, smalls: int = 3) -> HubRepo:
    files = [
        HubFile(
            f"model-{i:05d}.safetensors",
            source=random_blob(ctx.work / f"{repo_id.replace('/', '_')}-{i}", shard_size, i),
        )
        for i in range(shards)
    ]
    files += [
        HubFile(f"small-{i}.json", data=json.dumps({"i": i, "pad": "x" * 1000 * i}).encode())
        for i in range(smalls)
    ]
    return HubRepo(repo_id, files)


def _ts(event: dict[str, object]) -> float:
    """A log event's timestamp (epoch seconds)."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def _race_once(
    ctx: Ctx, hub: HubServer, repo_id: str, dest: Path, agent_first: bool
) -> tuple[list[int], bool, dict[str, list[dict[str, object]]], str]:
    """Start 1 agent and 7 CLIs of one model at (almost) once, without waiting for the agent's API.

    The agent gets a head start of 0.4-0.8 s when `agent_first` (its start-up is ~0.2 s slower),
    else it is launched among the CLIs at a random place. Returns (CLI exit codes, agent reported
    the model ready, JSON log events per process, launch order).
    """
    cfg = dest.with_suffix(".yaml")
    cfg.write_text(f"models: [{repo_id}]\nverifyInterval: 0\n")
    port = free_port()
    agent_log = dest.with_suffix(".agent.log")
    names = [f"cli{i}" for i in range(7)]
    ctx.rng.shuffle(names)
    if agent_first:
        names.insert(0, "agent")
    else:
        names.insert(ctx.rng.randint(1, len(names)), "agent")
    procs: dict[str, subprocess.Popen[str]] = {}
    with open(agent_log, "w") as alog:
        try:
            for i, name in enumerate(names):
                if name == "agent":
                    argv = [
                        "agent",
                        "--config",
                        str(cfg),
                        "--dest",
                        str(dest),
                        "--listen",
                        f"127.0.0.1:{port}",
                    ]
                    procs[name] = subprocess.Popen(
                        [PY, "-m", "agent", *argv],
                        env=env(ctx, {"HF_ENDPOINT": hub.url}),
                        stdout=subprocess.DEVNULL,
                        stderr=alog,
                        text=True,
                    )
                    time.sleep(ctx.rng.uniform(0.4, 0.8) if agent_first and i == 0 else 0)
                else:
                    procs[name] = spawn(
                        ctx, "--model", repo_id, "--dest", str(dest), extra_env={"HF_ENDPOINT": hub.url}
                    )
                time.sleep(ctx.rng.uniform(0, 0.04))
            codes, logs = [], {}
            for name, p in procs.items():
                if name == "agent":
                    continue
                try:
                    _, err = p.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    kill9(p)
                    err = ""
                codes.append(p.returncode)
                logs[name] = events(err)

            def agent_ready() -> bool:
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/v1/models/{repo_id}", timeout=2)
                    return r.status_code == 200 and r.json().get("state") == "ready"
                except (httpx.HTTPError, ValueError):
                    return False

            ready = bounded_poll(agent_ready, 60, 0.1)
        finally:
            agent = procs.get("agent")
            if agent is not None and agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(15)
                except subprocess.TimeoutExpired:
                    kill9(agent)
            for p in procs.values():
                if p.poll() is None:
                    kill9(p)
    logs["agent"] = events(agent_log.read_text())
    return codes, ready, logs, " ".join("A" if n == "agent" else "c" for n in names)


def concurrency(ctx: Ctx) -> Row:
    """An agent and 7 CLI preloaders started at once: one transfers, the rest wait; bytes once."""
    row = Row("3. concurrency: 7 CLI preloaders + 1 agent, one model, started at once")
    repo_id = "rel-org/shared"
    repo = _repo(ctx, repo_id, 2, 16 << 20)
    want = expected_hashes(repo)
    sizes = {f.path: f.size for f in repo.files().values()}
    sha_to_path = {f.sha256: f.path for f in repo.files().values()}
    wins: Counter[str] = Counter()
    overlaps = []
    for t in range(ctx.n(2, 6)):
        agent_first = t % 2 == 0
        # 4 MiB/s per connection: the transfer takes ~4 s, far longer than the launches' spread.
        with HubServer([repo], cdn_rate_limit_bps=4 << 20) as hub:
            dest = ctx.work / f"conc-{t}"
            codes, agent_ready, logs, order = _race_once(ctx, hub, repo_id, dest, agent_first)
            per_file: Counter[str] = Counter()
            for r in hub.requests():
                if r.kind in ("cdn", "resolve") and r.method == "GET":
                    per_file[r.path.rsplit("/", 1)[-1]] += r.bytes_sent
        got = {sha_to_path.get(k, k): v for k, v in per_file.items()}
        once = all(got.get(p, 0) == s for p, s in sizes.items())
        movers = [n for n, evs in logs.items() if any(e.get("event") == "transfer_start" for e in evs)]
        winner = movers[0] if len(movers) == 1 else "?"
        done_at = [_ts(e) for e in logs.get(winner, []) if e.get("event") == "preload_complete"]
        # Waited while the winner held the lock: a waiting_for_lock line before the winner finished.
        waited = sorted(
            n
            for n, evs in logs.items()
            if n != winner
            and done_at
            and any(e.get("event") == "waiting_for_lock" and _ts(e) < done_at[0] for e in evs)
        )
        kind = "agent" if winner == "agent" else "CLI" if winner.startswith("cli") else "?"
        wins[kind] += 1
        overlaps.append(len(waited))
        ready, bad = ready_state(dest, repo_id, want)
        row.corrupt_ready += bad
        ok = (
            codes == [0] * 7
            and agent_ready
            and once
            and ready
            and not bad
            and len(movers) == 1
            and bool(waited)
        )
        row.trial(
            ok,
            f"trial {t} (order {order}): exit codes {codes}, agent ready {agent_ready}, transferred by "
            f"{movers}, waited on the lock {waited}, bytes per file {got} vs {sizes}",
        )
        shutil.rmtree(dest, ignore_errors=True)
    if row.trials >= 2:
        row.trial(
            wins["agent"] > 0 and wins["CLI"] > 0,
            f"the lock went to the same kind of process every time: {dict(wins)}",
        )
    row.notes.append(
        "2 x 16 MiB shards + 3 small files, CDN 4 MiB/s per connection; agent and CLIs launched together "
        "(no wait for the API), order varied (agent first with a 0.4-0.8 s head start, or among the CLIs); "
        f"lock won by the agent {wins['agent']}x, by a CLI {wins['CLI']}x; processes that waited on the "
        f"lock while the winner transferred: {', '.join(map(str, overlaps))} (required >= 1); exactly one "
        "transfer_start per trial; bytes served per file == its size"
    )
    return row


def _flip(path: Path, offset: int, keep_mtime: bool) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def corruption_verify(ctx: Ctx) -> Row:
    """Flip a byte in a random file (mtime kept): verify --deep finds it every time; --repair fixes it."""
    row = Row("9a. corruption at rest: one flipped byte, `preload verify --deep` (+ --repair)")
    repo_id = "rel-org/at-rest"
    repo = _repo(ctx, repo_id, 3, 2 << 20, smalls=4)
    want = expected_hashes(repo)
    detected = 0
    with HubServer([repo]) as hub:
        dest = ctx.work / "at-rest"
        base = ["--model", repo_id, "--dest", str(dest), "--endpoint", hub.url]
        cli(ctx, *base)
        spec_root = dest / repo_id
        for _ in range(ctx.n(4, 20)):
            path = ctx.rng.choice(sorted(repo.files()))
            target = (spec_root / path).resolve()
            size = target.stat().st_size
            _flip(target, ctx.rng.randrange(size), keep_mtime=True)
            r = cli(ctx, "verify", "--model", repo_id, "--dest", str(dest), "--deep", "--json")
            try:
                report = json.loads(r.stdout)
            except ValueError:
                report = {}
            found = r.code == 4 and report.get("corrupt") == [path]
            detected += int(found)
            fix = cli(ctx, "verify", *base[:4], "--endpoint", hub.url, "--deep", "--repair")
            ready2, bad2 = ready_state(dest, repo_id, want)
            row.corrupt_ready += bad2
            row.trial(
                found and fix.code == 0 and ready2 and not bad2,
                f"{path}: verify exit {r.code} {report.get('corrupt')}, repair {fix.code}",
            )
    row.notes.append(
        f"deep verify detected {detected}/{row.trials} (mtime kept, so the stat check cannot); "
        "repaired with --repair"
    )
    return row


def agent_repair(ctx: Ctx) -> Row:
    """Damage a stat can see (size, mtime, deletion): the agent reports it, refetches only that file."""
    row = Row("9b. corruption at rest: the agent's periodic check (size/mtime/missing) and repair")
    repo_id = "rel-org/agent-rest"
    repo = _repo(ctx, repo_id, 2, 1 << 20, smalls=3)
    want = expected_hashes(repo)
    kinds = ["truncate", "flip+mtime", "delete", "grow"]
    with HubServer([repo]) as hub:
        dest = ctx.work / "agent-rest"
        cfg = ctx.work / "agent-rest.yaml"
        cfg.write_text(f"models: [{repo_id}]\nverifyInterval: 1s\n")
        agent = AgentProc(ctx.work, hub.url, cfg, dest)
        try:
            agent.start()
            bounded_poll(lambda: agent.get(f"/v1/models/{repo_id}")[1].get("state") == "ready", 30, 0.1)
            for t in range(ctx.n(4, 12)):
                kind = kinds[t % len(kinds)]
                path = ctx.rng.choice(sorted(repo.files()))
                target = (dest / repo_id / path).resolve()
                hub.reset_log()
                before_failures = agent.metric("model_cache_verification_failures_total")
                if kind == "truncate":
                    os.truncate(target, target.stat().st_size // 2)
                elif kind == "grow":
                    with open(target, "ab") as f:
                        f.write(b"\0")
                elif kind == "delete":
                    target.unlink()
                else:
                    _flip(target, ctx.rng.randrange(target.stat().st_size), keep_mtime=False)
                    os.utime(target, (time.time() + 5, time.time() + 5))
                noticed = bounded_poll(
                    lambda b=before_failures: agent.metric("model_cache_verification_failures_total") > b,
                    15,
                    0.1,
                )
                repaired = bounded_poll(
                    lambda: (
                        agent.get(f"/v1/models/{repo_id}")[1].get("state") == "ready"
                        and ready_state(dest, repo_id, want)[0]
                    ),
                    30,
                    0.1,
                )
                ready, bad = ready_state(dest, repo_id, want)
                row.corrupt_ready += bad
                fetched = {
                    r.path.rsplit("/", 1)[-1]
                    for r in hub.requests()
                    if r.kind in ("cdn", "resolve") and r.method == "GET"
                }
                want_fetch = {path, repo.files()[path].sha256}
                only = bool(fetched) and fetched <= want_fetch
                row.trial(
                    noticed and repaired and ready and not bad and only,
                    f"{kind} {path}: noticed {noticed}, repaired {repaired}, fetched {sorted(fetched)}",
                )
        finally:
            agent.stop()
    row.notes.append("verifyInterval 1s; damage: " + ", ".join(kinds) + "; only the damaged file refetched")
    return row


MEM_GROWTH = 0.10  # the 4x model may peak at most 10% above the 1x one ...
MEM_NOISE_KIB = 4 << 10  # ... plus 4 MiB of allocator and import noise


def memory(ctx: Ctx) -> Row:
    """Peak RSS (the child's own VmHWM) of a preload of S and of 4S: bounded buffers, no growth."""
    row = Row("10. memory: peak RSS, model 4x larger (hub and directory copy)")
    small, large = (32 << 20, 128 << 20) if ctx.quick else (128 << 20, 512 << 20)
    notes = []
    for kind in ("hub", "dir"):
        peaks = {}
        for size in (small, large):
            repo_id = f"rel-org/mem-{size >> 20}"
            repo = HubRepo(
                repo_id,
                [
                    HubFile("model.safetensors", source=random_blob(ctx.work / f"mem-{size}", size, 99)),
                    HubFile("config.json", data=b"{}"),
                ],
            )
            with HubServer([repo]) as hub:
                seed = ctx.work / f"mem-seed-{size}"
                if kind == "dir":
                    cli(ctx, "--model", repo_id, "--dest", str(seed), "--endpoint", hub.url)
                dest = ctx.work / f"mem-{kind}-{size}"
                src = ["--endpoint", hub.url] if kind == "hub" else ["--source", str(seed)]
                code, peak = run_peak_rss(ctx, "--model", repo_id, "--dest", str(dest), *src)
                ready, bad = ready_state(dest, repo_id, expected_hashes(repo))
                row.corrupt_ready += bad
                peaks[size] = (code if ready else -1, peak)
                shutil.rmtree(dest, ignore_errors=True)
        (c1, p1), (c4, p4) = peaks[small], peaks[large]
        limit = p1 * (1 + MEM_GROWTH) + MEM_NOISE_KIB
        ok = c1 == 0 and c4 == 0 and p1 > 0 and p4 <= limit
        row.trial(
            ok,
            f"{kind}: exit {c1}/{c4}, peak {p1 / 1024:.1f} MiB for {mib(small)}, "
            f"{p4 / 1024:.1f} MiB for {mib(large)} (limit {limit / 1024:.1f} MiB)",
        )
        notes.append(
            f"{kind}: {p1 / 1024:.1f} MiB peak for {mib(small)}, {p4 / 1024:.1f} MiB for {mib(large)} "
            f"({(p4 - p1) / 1024:+.1f} MiB)"
        )
    row.notes.append(
        "; ".join(notes) + f" (the child's own VmHWM, read every {HWM_POLL * 1000:.0f} ms; pass: "
        f"4x peak <= 1x peak + {MEM_GROWTH:.0%} + {MEM_NOISE_KIB // 1024} MiB for noise)"
    )
    return row
