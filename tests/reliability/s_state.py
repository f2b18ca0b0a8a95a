"""Scenarios 3, 9, 10: concurrency, corruption at rest (verify --deep, agent repair), memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

from agent.hubserver import HubFile, HubRepo, HubServer
from tests.integration.agentproc import AgentProc
from tests.reliability.common import (
    PY,
    Ctx,
    Row,
    bounded_poll,
    cli,
    env,
    expected_hashes,
    mib,
    random_blob,
    ready_state,
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


def concurrency(ctx: Ctx) -> Row:
    """7 CLI preloaders and an agent at once: every file fetched exactly once, all ready."""
    row = Row("3. concurrency: 7 CLI preloaders + 1 agent, one model, at once")
    repo_id = "rel-org/shared"
    repo = _repo(ctx, repo_id, 2, 8 << 20)
    want = expected_hashes(repo)
    for t in range(ctx.n(1, 3)):
        with HubServer([repo], cdn_rate_limit_bps=8 << 20) as hub:
            dest = ctx.work / f"conc-{t}"
            cfg = ctx.work / f"conc-{t}.yaml"
            cfg.write_text(f"models: [{repo_id}]\nverifyInterval: 0\n")
            agent = AgentProc(ctx.work, hub.url, cfg, dest)
            procs = []
            try:
                agent.start()
                procs = [
                    spawn(ctx, "--model", repo_id, "--dest", str(dest), extra_env={"HF_ENDPOINT": hub.url})
                    for _ in range(7)
                ]
                codes = []
                for p in procs:
                    try:
                        p.communicate(timeout=90)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.communicate()
                    codes.append(p.returncode)
                agent_ready = bounded_poll(
                    lambda agent=agent: agent.get(f"/v1/models/{repo_id}")[1].get("state") == "ready", 30, 0.1
                )
            finally:
                agent.stop()
            per_file: Counter[str] = Counter()
            for r in hub.requests():
                if r.kind in ("cdn", "resolve") and r.method == "GET":
                    per_file[r.path.rsplit("/", 1)[-1]] += r.bytes_sent
            sizes = {f.path: f.size for f in repo.files().values()}
            sha_to_path = {f.sha256: f.path for f in repo.files().values()}
            got = {sha_to_path.get(k, k): v for k, v in per_file.items()}
            once = all(got.get(p, 0) == s for p, s in sizes.items())
            ready, bad = ready_state(dest, repo_id, want)
            row.corrupt_ready += bad
            ok = codes == [0] * 7 and agent_ready and once and ready and not bad
            row.trial(
                ok,
                f"trial {t}: exit codes {codes}, agent ready {agent_ready}, bytes per file {got} vs {sizes}",
            )
            shutil.rmtree(dest, ignore_errors=True)
    row.notes.append(
        "2 x 8 MiB shards + 3 small files, CDN 8 MiB/s per connection; bytes served per file == its size"
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


def _peak_rss_kib(ctx: Ctx, *args: str, extra_env: dict[str, str] | None = None) -> tuple[int, int]:
    proc = subprocess.Popen(
        [PY, "-m", "agent", *args],
        env=env(ctx, extra_env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, int(usage.ru_maxrss)


def memory(ctx: Ctx) -> Row:
    """Peak RSS of a preload of S and of 4S: bounded buffers mean no growth with model size."""
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
                code, peak = _peak_rss_kib(ctx, "--model", repo_id, "--dest", str(dest), *src)
                peaks[size] = (code, peak)
                shutil.rmtree(dest, ignore_errors=True)
        (c1, p1), (c4, p4) = peaks[small], peaks[large]
        ok = c1 == 0 and c4 == 0 and p4 <= p1 * 1.25 + 16 * 1024
        row.trial(
            ok,
            f"{kind}: exit {c1}/{c4}, peak {p1 / 1024:.0f} MiB for {mib(small)}, "
            f"{p4 / 1024:.0f} MiB for {mib(large)}",
        )
        notes.append(
            f"{kind}: {p1 / 1024:.0f} MiB peak for {mib(small)}, {p4 / 1024:.0f} MiB for {mib(large)}"
        )
    row.notes.append("; ".join(notes) + " (limit: 1.25x + 16 MiB)")
    return row
