"""Scenarios 1, 2, 4: kill -9 at random moments, kill at each crash point, disk full mid-transfer."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from agent.crashpoints import POINTS
from agent.demo_model import DEMO_REPO_ID, demo_repo
from agent.hubserver import HubFile, HubRepo, HubServer
from tests.conftest import Run
from tests.reliability.common import (
    Ctx,
    Row,
    cli,
    events,
    expected_hashes,
    failed_error,
    kill9,
    marker_exists,
    mib,
    random_blob,
    ready_state,
    served,
    spawn,
)

CRASH_REPO = "rel-org/crash-model"


def crash_hub(ctx: Ctx) -> Row:
    """kill -9 a hub preload at a random moment, rerun; count corrupt-ready and refetched bytes."""
    row = Row("1a. kill -9 at a random moment of a hub preload, rerun")
    shard = 64 << 20
    blobs = {
        f"model-0000{i}-of-00002.safetensors": random_blob(ctx.work / f"crash-shard{i}", shard, i)
        for i in (1, 2)
    }
    files = [HubFile(p, source=b) for p, b in blobs.items()]
    files.append(HubFile("config.json", data=b'{"model_type": "crash"}\n'))
    repo = HubRepo(CRASH_REPO, files)
    size = sum(f.size for f in files)
    want = expected_hashes(repo)
    worst = 0.0
    lost_total = 0
    mid = 0
    # 4 connections x 16 MiB/s: a transfer takes ~2 s after the process starts.
    with HubServer([repo], cdn_rate_limit_bps=16 << 20) as hub:
        for t in range(ctx.n(4, 20)):
            dest = ctx.work / f"crash-hub-{t}"
            args = ("--model", CRASH_REPO, "--dest", str(dest), "--max-workers", "4", "--chunk-size", "8MiB")
            hub.reset_log()
            proc = spawn(ctx, *args, extra_env={"HF_ENDPOINT": hub.url})
            delay = ctx.rng.uniform(0.2, 2.6)
            time.sleep(delay)
            kill9(proc)
            ready, bad = ready_state(dest, CRASH_REPO, want)
            row.corrupt_ready += bad
            mid += int(not ready and served(hub) > 0)
            r = cli(ctx, *args, extra_env={"HF_ENDPOINT": hub.url})
            ready, bad = ready_state(dest, CRASH_REPO, want)
            row.corrupt_ready += bad
            extra = max(0, served(hub) - size)
            lost_total += extra
            worst = max(worst, extra / size)
            ok = r.code == 0 and ready and not bad and extra <= 0.05 * size
            row.trial(ok, f"kill at {delay:.2f}s: rerun exit {r.code}, ready {ready}, extra {mib(extra)}")
            shutil.rmtree(dest, ignore_errors=True)
    row.data_lost = f"{mib(lost_total)} refetched in all; worst {worst:.1%}"
    row.notes.append(
        f"{mib(size)} model, 4 ranged connections, kill uniformly in 0.2-2.6 s "
        f"({mid} kills landed mid-transfer); budget 5% per kill"
    )
    return row


def _sparse_hub_cache(root: Path, repo_id: str, size: int) -> tuple[Path, dict[str, str]]:
    """A hub-cache directory source holding one big sparse blob (fast to read) and a config."""
    org, name = repo_id.split("/")
    cache = root / f"models--{org}--{name}"
    commit = "d" * 40
    blob_tmp = root / "blob.tmp"
    with open(blob_tmp, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 8 << 20):
            f.seek(off)
            f.write(os.urandom(64 << 10))
    h = hashlib.sha256()
    with open(blob_tmp, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    (cache / "blobs").mkdir(parents=True)
    blob = cache / "blobs" / h.hexdigest()
    blob_tmp.rename(blob)
    snap = cache / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(f"../../blobs/{blob.name}")
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(commit)
    return root, {"model.safetensors": h.hexdigest()}


def _wchar(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def crash_dir(ctx: Ctx) -> Row:
    """kill -9 a directory-source copy at a random moment, rerun; bytes written twice are the loss."""
    row = Row("1b. kill -9 at a random moment of a directory copy, rerun")
    repo_id = "rel-org/dir-model"
    size = 256 << 20
    src, want = _sparse_hub_cache(ctx.dir("crash-dir-src"), repo_id, size)
    mid = 0
    worst = 0.0
    lost_total = 0
    for t in range(ctx.n(4, 20)):
        dest = ctx.work / f"crash-dir-{t}"
        args = ("--model", repo_id, "--dest", str(dest), "--source", str(src), "--max-workers", "2")
        proc = spawn(ctx, *args)
        delay = ctx.rng.uniform(0.3, 1.3)
        deadline = time.monotonic() + delay
        written = 0
        while time.monotonic() < deadline and proc.poll() is None:
            written = _wchar(proc.pid) or written
            time.sleep(0.005)
        written = _wchar(proc.pid) or written
        finished_first = proc.poll() is not None
        kill9(proc)
        mid += int(not finished_first and written > 0 and not marker_exists(dest, repo_id))
        ready, bad = ready_state(dest, repo_id, want)
        row.corrupt_ready += bad
        r = cli(ctx, *args)
        ready, bad = ready_state(dest, repo_id, want)
        row.corrupt_ready += bad
        fetched = 0
        for e in events(r.stderr):
            if e.get("event") == "preload_complete":
                fetched = int(e.get("fetched_bytes", 0))
        extra = 0 if finished_first else max(0, min(written, size) + fetched - size)
        lost_total += extra
        worst = max(worst, extra / size)
        ok = r.code == 0 and ready and not bad and extra <= 0.05 * size
        row.trial(ok, f"kill at {delay:.2f}s: rerun exit {r.code}, ready {ready}, recopied {mib(extra)}")
        shutil.rmtree(dest, ignore_errors=True)
    row.data_lost = f"{mib(lost_total)} recopied in all; worst {worst:.1%}"
    row.notes.append(
        f"{mib(size)} hub-cache source, 2 workers, kill uniformly in 0.3-1.3 s ({mid} mid-copy); "
        "loss = bytes written before the kill (/proc/PID/io wchar) + rerun's fetched_bytes - size"
    )
    return row


def crash_points(ctx: Ctx) -> Row:
    """PRELOAD_CRASH_AT at every point, both layouts (and a directory source in full mode)."""
    row = Row("2. kill -9 at each crash point between durable steps (PRELOAD_CRASH_AT)")
    repo = demo_repo()
    want = expected_hashes(repo)
    early = 0
    with HubServer([repo]) as hub:
        seed = ctx.work / "points-seed"
        cli(ctx, "--model", DEMO_REPO_ID, "--dest", str(seed), "--endpoint", hub.url)
        sources = [("hf", ["--endpoint", hub.url])]
        if not ctx.quick:
            sources.append(("dir", ["--source", str(seed)]))
        for src_name, src_args in sources:
            for layout in ("dir", "hf-cache"):
                for point in POINTS:
                    dest = ctx.work / f"points-{src_name}-{layout}-{point}"
                    args = ("--model", DEMO_REPO_ID, "--dest", str(dest), "--layout", layout, *src_args)
                    r = cli(ctx, *args, extra_env={"PRELOAD_CRASH_AT": point})
                    ready, bad = ready_state(dest, DEMO_REPO_ID, want, layout)
                    row.corrupt_ready += bad
                    early += int(ready and point != "after_marker")
                    r2 = cli(ctx, *args)
                    ready2, bad2 = ready_state(dest, DEMO_REPO_ID, want, layout)
                    row.corrupt_ready += bad2
                    ok = (
                        r.code == -signal.SIGKILL
                        and ready == (point == "after_marker")
                        and r2.code == 0
                        and ready2
                        and not bad2
                    )
                    row.trial(
                        ok,
                        f"{src_name}/{layout}/{point}: crash exit {r.code}, ready {ready}, rerun {r2.code}",
                    )
                    shutil.rmtree(dest, ignore_errors=True)
    row.notes.append(
        f"points {', '.join(POINTS)}; layouts dir, hf-cache; sources: hub"
        + ("" if ctx.quick else ", directory")
        + f"; ready before the marker: {early}"
    )
    return row


def _mount(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    return subprocess.run(cmd, check=False, capture_output=True).returncode == 0


def disk_full(ctx: Ctx) -> Row:
    """Another writer fills a small tmpfs after the space check: exit 5, no marker, resume after freeing."""
    row = Row("4. disk full mid-transfer (tmpfs filled by another writer), free, rerun")
    repo_id = "rel-org/two-shards"
    blobs = [
        HubFile(f"{c}.safetensors", source=random_blob(ctx.work / f"df-{c}", 24 << 20, ord(c))) for c in "ab"
    ]
    repo = HubRepo(repo_id, blobs)
    want = expected_hashes(repo)
    size = sum(f.size for f in blobs)
    lost_total = 0
    with HubServer([repo], cdn_rate_limit_bps=12 << 20) as hub:
        for t in range(ctx.n(1, 3)):
            mnt = ctx.work / f"df-mnt-{t}"
            if not _mount(mnt, "140m"):
                row.notes.append("SKIPPED: cannot mount a tmpfs (needs root)")
                return row
            try:
                dest = mnt / "cache"
                args = ("--model", repo_id, "--dest", str(dest), "--max-workers", "1")
                hub.reset_log()
                proc = spawn(ctx, *args, extra_env={"HF_ENDPOINT": hub.url})
                at = ctx.rng.randint(1 << 20, 16 << 20)
                deadline = time.monotonic() + 30
                while hub.bytes_served() < at and time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.01)
                filler = mnt / "filler"
                subprocess.run(
                    ["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True, check=False
                )
                try:
                    _, err = proc.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    kill9(proc)
                    row.trial(False, "hang after the disk filled")
                    continue
                _, bad = ready_state(dest, repo_id, want)
                row.corrupt_ready += bad
                error = failed_error(Run(proc.returncode, "", err))
                clear = (
                    proc.returncode == 5 and ("space" in error or "full" in error) and "Traceback" not in err
                )
                no_marker = not marker_exists(dest, repo_id)
                filler.unlink()
                r = cli(ctx, *args, extra_env={"HF_ENDPOINT": hub.url})
                ready2, bad2 = ready_state(dest, repo_id, want)
                row.corrupt_ready += bad2
                extra = max(0, served(hub) - size)
                lost_total += extra
                ok = clear and no_marker and r.code == 0 and ready2 and not bad2 and extra <= 0.05 * size
                row.trial(
                    ok,
                    f"fill at {mib(at)}: exit {proc.returncode} ({error[:120]!r}), marker {not no_marker}, "
                    f"rerun {r.code}, refetched {mib(extra)}",
                )
            finally:
                subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
    row.data_lost = f"{mib(lost_total)} refetched"
    row.notes.append(
        "140 MiB tmpfs, 2 x 24 MiB shards, one connection; filled at a random byte in the first shard"
    )
    return row
