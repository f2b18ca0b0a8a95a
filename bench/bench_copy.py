"""Benchmark: `preload --source DIR` against `cp -r` (with and without `sha256sum`), verify --deep.

Several interleaved rounds (medians reported), cold page cache before every timed case
(root: `sync; echo 3 > drop_caches`).
The source is a hub cache (blobs named by sha256), the shape a download Job leaves on an
NFS/RWX volume; NFS itself cannot run here, so a local directory stands in for it.

    .venv/bin/python bench/bench_copy.py                      # 4 x 1 GiB + 200 small files
    .venv/bin/python bench/bench_copy.py --file-gib 0.25 --files 2   # a quick run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = "bench-org/copy-model"
COMMIT = "b" * 40
HERE = Path(__file__).resolve().parent
PRELOAD = [sys.executable, "-m", "agent"]


def drop_caches() -> None:
    """Flush dirty pages and empty the page cache so every case starts cold."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def make_source(root: Path, files: int, file_bytes: int, small: int) -> tuple[Path, int]:
    """A hub cache of REPO: `files` large shards and `small` small files; returns (blobs dir, bytes)."""
    repo_dir = root / f"models--{REPO.replace('/', '--')}"
    blobs, snap = repo_dir / "blobs", repo_dir / "snapshots" / COMMIT
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    pattern = os.urandom(64 << 20)
    total = 0
    entries = [(f"model-{i + 1:05d}-of-{files:05d}.safetensors", file_bytes) for i in range(files)]
    entries += [(f"extra/file-{i:03d}.json", 1024 + (i * 7919) % (64 << 10)) for i in range(small)]
    for n, (rel, size) in enumerate(entries):
        h = hashlib.sha256()
        tmp = blobs / f"tmp-{n}"
        with open(tmp, "wb") as f:
            written = 0
            while written < size:
                # A unique prefix per block keeps blocks distinct without paying for urandom per byte.
                block = (f"{rel}:{written}:".encode() + pattern)[: min(len(pattern), size - written)]
                f.write(block)
                h.update(block)
                written += len(block)
        digest = h.hexdigest()
        tmp.rename(blobs / digest)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blobs / digest, link.parent))
        total += size
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return blobs, total


@dataclass
class Sample:
    """One cold run: wall seconds and the command's CPU (children's rusage)."""

    seconds: float
    user: float
    sys: float
    stderr: str = ""


def timed(argv: list[str] | str, *, shell: bool = False) -> Sample:
    """One cold run of a command (its stderr kept for the log lines)."""
    drop_caches()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, shell=shell, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {argv}\n{proc.stderr[-2000:]}")
    return Sample(seconds, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, proc.stderr)


def event(stderr: str, name: str) -> dict[str, object]:
    """The last JSON log line with this event name."""
    for line in reversed(stderr.splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") == name:
            return dict(doc)
    raise SystemExit(f"no {name} event in:\n{stderr[-2000:]}")


P_COPY = "preload --source DIR (copy + verify every hash + fdatasync)"
P_WARM = "preload again, model complete"
P_DEEP = "preload verify --deep"
SHA = "sha256sum of the same files"
CP_SHA = "cp -r SRC DST && sha256sum DST/*"
CP = "cp -r SRC DST (no check, dirty pages left to the kernel)"
CP_SYNC = "cp -r SRC DST && sync (same durability as preload)"


def main() -> int:
    """Run every case --runs times, interleaved, and write the results table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--file-gib", type=float, default=1.0, help="size of each large file (GiB)")
    parser.add_argument("--files", type=int, default=4, help="number of large files")
    parser.add_argument("--small", type=int, default=200, help="number of small files")
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (medians are reported)")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "copy", help="scratch directory")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "copy.md", help="results table")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root to drop the page cache")
    shutil.rmtree(args.work, ignore_errors=True)
    src, dst = args.work / "nfs", args.work / "dst"
    print("building the source ...", file=sys.stderr)
    blobs, total = make_source(src, args.files, int(args.file_gib * (1 << 30)), args.small)
    os.environ["PRELOAD_LOG_FORMAT"] = "json"
    runs: dict[str, list[Sample]] = {}

    def fresh() -> Path:
        shutil.rmtree(dst, ignore_errors=True)
        return dst

    def add(name: str, sample: Sample) -> Sample:
        runs.setdefault(name, []).append(sample)
        print(f"{name}: {sample.seconds:.2f} s", file=sys.stderr)
        return sample

    preload_args = [*PRELOAD, "--model", REPO, "--source", str(src)]
    warm_bytes = []
    # Rounds interleave the tools, so drift on a shared machine hits them alike.
    for _ in range(args.runs):
        run = add(P_COPY, timed([*preload_args, "--dest", str(fresh())]))
        done = event(run.stderr, "preload_complete")
        assert done["fetched_bytes"] == total, done
        warm = add(P_WARM, timed([*preload_args, "--dest", str(dst)]))
        warm_bytes.append(int(str(event(warm.stderr, "preload_complete")["fetched_bytes"])))
        add(P_DEEP, timed([*PRELOAD, "verify", "--model", REPO, "--dest", str(dst), "--deep"]))
        files = sorted(str(p) for p in (dst / ".preload" / "versions").rglob("*") if p.is_file())
        add(SHA, timed(["sha256sum", *files]))
        add(CP_SHA, timed(f"cp -r {blobs} {fresh()} && sha256sum {dst}/* > /dev/null", shell=True))
        add(CP, timed(["cp", "-r", str(blobs), str(fresh())]))
        add(CP_SYNC, timed(f"cp -r {blobs} {fresh()} && sync", shell=True))
        fresh()

    med = {name: statistics.median(r.seconds for r in samples) for name, samples in runs.items()}
    rows = list(runs.items())
    targets = [
        (
            "preload / (cp -r && sha256sum)",
            med[P_COPY] / med[CP_SHA],
            "<= 0.60",
            med[P_COPY] / med[CP_SHA] <= 0.60,
        ),
        ("preload / cp -r", med[P_COPY] / med[CP], "<= 1.15", med[P_COPY] / med[CP] <= 1.15),
        ("preload / (cp -r && sync)", med[P_COPY] / med[CP_SYNC], "(info)", None),
        (
            "verify --deep speed / sha256sum speed",
            med[SHA] / med[P_DEEP],
            ">= 1.5",
            med[SHA] / med[P_DEEP] >= 1.5,
        ),
        ("bytes copied by the warm reruns (max)", float(max(warm_bytes)), "0", max(warm_bytes) == 0),
    ]
    write_table(args, total, rows, targets)
    print(args.out.read_text())
    shutil.rmtree(args.work, ignore_errors=True)
    return 0


def write_table(
    args: argparse.Namespace,
    total: int,
    rows: list[tuple[str, list[Sample]]],
    targets: list[tuple[str, float, str, bool | None]],
) -> None:
    """bench/results/copy.md: the machine, the cases, and each target met or missed."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    lines = [
        "# Copy benchmark: directory source vs cp",
        "",
        f"`bench/bench_copy.py --file-gib {args.file_gib} --files {args.files} --small {args.small}`: "
        f"{args.files} x {args.file_gib} GiB + {args.small} small files = {total / 1e9:.2f} GB, "
        f"{os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.release()}; source and destination on the "
        f"same disk; page cache dropped before every case; medians of {args.runs} interleaved rounds "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "",
        "| case | median s | min-max s | MB/s | CPU user s | CPU sys s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, samples in rows:
        sec = statistics.median(r.seconds for r in samples)
        lo, hi = min(r.seconds for r in samples), max(r.seconds for r in samples)
        user = statistics.median(r.user for r in samples)
        sys_s = statistics.median(r.sys for r in samples)
        lines.append(
            f"| {name} | {sec:.2f} | {lo:.2f}-{hi:.2f} | {total / sec / 1e6:.0f} | {user:.2f} | {sys_s:.2f} |"
        )
    lines += ["", "| target | measured | goal | met |", "| --- | ---: | --- | --- |"]
    lines += [
        f"| {name} | {value:.2f} | {goal} | {'-' if met is None else 'yes' if met else 'NO'} |"
        for name, value, goal, met in targets
    ]
    lines.append("")
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
