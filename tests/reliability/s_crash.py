"""Scenarios 1, 2, 4: kill -9 at random moments, kill at each crash point, disk full mid-transfer."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from agent.crashpoints import POINTS
from agent.devhub import HubFile, HubRepo, HubServer
from agent.devhub.demo_model import DEMO_REPO_ID, demo_repo
from agent.spec import ModelSpec
from agent.store import Store
from tests.conftest import Run
from tests.reliability.common import (
    Ctx,
    Row,
    cli,
    drop_caches,
    events,
    expected_hashes,
    failed_error,
    kill9,
    kill_when_written,
    marker_exists,
    mib,
    random_blob,
    ready_state,
    served,
    sha256_file,
    spawn,
)

CRASH_REPO = "rel-org/crash-model"


def _kill_fraction(ctx: Ctx) -> float:
    """Where in the model's bytes a kill lands: uniform in 5-95%."""
    return ctx.rng.uniform(0.05, 0.95)


def crash_hub(ctx: Ctx) -> Row:
    """kill -9 a hub preload once it has written a random fraction of the model, rerun."""
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
    # 4 connections x 16 MiB/s: the transfer takes ~2 s, so a 2 ms poll of wchar lands within
    # ~0.1% of the chosen byte.
    with HubServer([repo], cdn_rate_limit_bps=16 << 20) as hub:
        for t in range(ctx.n(4, 20)):
            dest = ctx.work / f"crash-hub-{t}"
            args = ("--model", CRASH_REPO, "--dest", str(dest), "--max-workers", "4", "--chunk-size", "8MiB")
            hub.reset_log()
            frac = _kill_fraction(ctx)
            proc = spawn(ctx, *args, extra_env={"HF_ENDPOINT": hub.url})
            killed, written = kill_when_written(proc, int(frac * size))
            ready, bad = ready_state(dest, CRASH_REPO, want)
            row.corrupt_ready += bad
            landed = killed and written < size and not ready and not marker_exists(dest, CRASH_REPO)
            mid += int(landed)
            r = cli(ctx, *args, extra_env={"HF_ENDPOINT": hub.url})
            ready, bad = ready_state(dest, CRASH_REPO, want)
            row.corrupt_ready += bad
            extra = max(0, served(hub) - size)
            lost_total += extra
            worst = max(worst, extra / size)
            ok = landed and r.code == 0 and ready and not bad and extra <= 0.05 * size
            row.trial(
                ok,
                f"kill at {frac:.0%} ({mib(written)} written, mid-transfer {landed}): rerun exit {r.code}, "
                f"ready {ready}, extra {mib(extra)}",
            )
            shutil.rmtree(dest, ignore_errors=True)
    row.data_lost = f"{mib(lost_total)} refetched in all; worst {worst:.1%}"
    row.notes.append(
        f"{mib(size)} model, 4 ranged connections at 16 MiB/s; SIGKILL once the process has written "
        f"a random 5-95% of the model (/proc/PID/io wchar); {mid}/{row.trials} kills landed "
        "mid-transfer (required: all); budget 5% extra hub bytes per kill"
    )
    return row


def _hub_cache_source(root: Path, repo_id: str, blob: Path) -> tuple[Path, dict[str, str]]:
    """A hub-cache directory source whose one big blob is `blob` (hard-linked, random bytes)."""
    org, name = repo_id.split("/")
    cache = root / f"models--{org}--{name}"
    commit = "d" * 40
    digest = sha256_file(blob)
    if not (cache / "blobs" / digest).exists():
        (cache / "blobs").mkdir(parents=True, exist_ok=True)
        os.link(blob, cache / "blobs" / digest)
        snap = cache / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "model.safetensors").symlink_to(f"../../blobs/{digest}")
        (cache / "refs").mkdir(exist_ok=True)
        (cache / "refs" / "main").write_text(commit)
    return root, {"model.safetensors": digest}


def crash_dir(ctx: Ctx) -> Row:
    """kill -9 a directory-source copy once it has written a random fraction, rerun."""
    row = Row("1b. kill -9 at a random moment of a directory copy, rerun")
    repo_id = "rel-org/dir-model"
    size = (128 if ctx.quick else 256) << 20
    blob = random_blob(ctx.work / f"crash-dir-blob-{size}", size, 7)
    src, want = _hub_cache_source(ctx.dir("crash-dir-src"), repo_id, blob)
    mid = 0
    cold = 0
    worst = 0.0
    lost_total = 0
    for t in range(ctx.n(4, 20)):
        dest = ctx.work / f"crash-dir-{t}"
        args = ("--model", repo_id, "--dest", str(dest), "--source", str(src), "--max-workers", "2")
        frac = _kill_fraction(ctx)
        cold += int(drop_caches())  # the source comes from the disk, not the page cache
        proc = spawn(ctx, *args)
        killed, written = kill_when_written(proc, int(frac * size))
        ready, bad = ready_state(dest, repo_id, want)
        row.corrupt_ready += bad
        landed = killed and written < size and not ready and not marker_exists(dest, repo_id)
        mid += int(landed)
        r = cli(ctx, *args)
        ready, bad = ready_state(dest, repo_id, want)
        row.corrupt_ready += bad
        fetched = 0
        for e in events(r.stderr):
            if e.get("event") == "preload_complete":
                fetched = int(e.get("fetched_bytes", 0))
        extra = max(0, min(written, size) + fetched - size)
        lost_total += extra
        worst = max(worst, extra / size)
        ok = landed and r.code == 0 and ready and not bad and extra <= 0.05 * size
        row.trial(
            ok,
            f"kill at {frac:.0%} ({mib(written)} written, mid-copy {landed}): rerun exit {r.code}, "
            f"ready {ready}, recopied {mib(extra)}",
        )
        shutil.rmtree(dest, ignore_errors=True)
    row.data_lost = f"{mib(lost_total)} recopied in all; worst {worst:.1%}"
    row.notes.append(
        f"{mib(size)} random (not sparse) hub-cache source, page cache dropped before each trial "
        f"({cold}/{row.trials}), 2 workers; SIGKILL once the process has written a random 5-95% "
        f"(/proc/PID/io wchar); {mid}/{row.trials} kills landed mid-copy (required: all); "
        "loss = bytes written before the kill + rerun's fetched_bytes - size"
    )
    return row


def crash_points(ctx: Ctx) -> Row:
    """PRELOAD_CRASH_AT at every point (file_renamed after each file), both layouts, both sources."""
    row = Row("2a. kill -9 at each crash point between durable steps (PRELOAD_CRASH_AT)")
    repo = demo_repo()
    want = expected_hashes(repo)
    early = 0
    with HubServer([repo]) as hub:
        seed = ctx.work / "points-seed"
        cli(ctx, "--model", DEMO_REPO_ID, "--dest", str(seed), "--endpoint", hub.url)
        seeded = Store(seed).read_marker(ModelSpec(DEMO_REPO_ID))
        # Files the preload renames into place (its default selection; distinct contents).
        nfiles = len({f.digest.hex for f in seeded.files}) if seeded else 0
        renamed = list(range(1, nfiles + 1))
        if ctx.quick and nfiles > 2:  # the first, the last and one in between
            renamed = sorted({1, ctx.rng.randint(2, nfiles - 1), nfiles})
        points = [f"file_renamed:{n}" for n in renamed] + [p for p in POINTS if p != "file_renamed"]
        sources = [("hf", ["--endpoint", hub.url]), ("dir", ["--source", str(seed)])]
        for src_name, src_args in sources:
            for layout in ("dir", "hf-cache"):
                for point in points:
                    if ctx.quick and src_name == "dir" and point.startswith("file_renamed"):
                        continue
                    dest = ctx.work / f"points-{src_name}-{layout}-{point.replace(':', '-')}"
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
        f"points file_renamed:N (killed after the N-th of {nfiles} files is renamed into place; "
        f"N = {', '.join(map(str, renamed))}), {', '.join(p for p in POINTS if p != 'file_renamed')}; "
        "layouts dir, hf-cache; sources: hub, directory"
        + (" (file_renamed:N on the hub only in the quick form)" if ctx.quick else "")
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
