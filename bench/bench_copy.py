"""Benchmark: `preload --source DIR` against `cp -r` (with and without `sha256sum`), verify --deep.

One run, cold page cache before every timed case (root: `sync; echo 3 > drop_caches`).
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
import shutil
import subprocess
import sys
import time
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


def timed(argv: list[str] | str, *, shell: bool = False) -> tuple[float, str]:
    """Wall time of one cold run of a command (its stderr kept for the log lines)."""
    drop_caches()
    started = time.perf_counter()
    proc = subprocess.run(argv, shell=shell, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {argv}\n{proc.stderr[-2000:]}")
    return seconds, proc.stderr


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


def main() -> int:
    """Run every case once and write the results table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--file-gib", type=float, default=1.0, help="size of each large file (GiB)")
    parser.add_argument("--files", type=int, default=4, help="number of large files")
    parser.add_argument("--small", type=int, default=200, help="number of small files")
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
    rows: list[tuple[str, float]] = []

    def fresh() -> Path:
        shutil.rmtree(dst, ignore_errors=True)
        return dst

    preload_args = [*PRELOAD, "--model", REPO, "--source", str(src)]
    dest = fresh()
    t_preload, err = timed([*preload_args, "--dest", str(dest)])
    done = event(err, "preload_complete")
    assert done["fetched_bytes"] == total, done
    rows.append(("preload --source DIR (copy + verify every hash + fdatasync)", t_preload))

    t_warm, err = timed([*preload_args, "--dest", str(dest)])
    warm = event(err, "preload_complete")
    rows.append((f"preload again, model complete (bytes copied: {warm['fetched_bytes']})", t_warm))

    t_deep, _ = timed([*PRELOAD, "verify", "--model", REPO, "--dest", str(dest), "--deep"])
    rows.append(("preload verify --deep", t_deep))
    files = sorted(str(p) for p in (dest / ".preload" / "versions").rglob("*") if p.is_file())
    t_sha, _ = timed(["sha256sum", *files])
    rows.append(("sha256sum of the same files", t_sha))

    t_cpsha, _ = timed(f"cp -r {blobs} {fresh()} && sha256sum {dst}/* > /dev/null", shell=True)
    rows.append(("cp -r SRC DST && sha256sum DST/*", t_cpsha))
    t_cp, _ = timed(["cp", "-r", str(blobs), str(fresh())])
    rows.append(("cp -r SRC DST (no check, dirty pages left to the kernel)", t_cp))
    t_cpsync, _ = timed(f"cp -r {blobs} {fresh()} && sync", shell=True)
    rows.append(("cp -r SRC DST && sync (same durability as preload)", t_cpsync))
    fresh()

    targets = [
        ("preload / (cp -r && sha256sum)", t_preload / t_cpsha, "<= 0.60", t_preload / t_cpsha <= 0.60),
        ("preload / cp -r", t_preload / t_cp, "<= 1.15", t_preload / t_cp <= 1.15),
        ("preload / (cp -r && sync)", t_preload / t_cpsync, "(info)", None),
        ("verify --deep speed / sha256sum speed", t_sha / t_deep, ">= 1.5", t_sha / t_deep >= 1.5),
        ("bytes copied by the warm rerun", float(warm["fetched_bytes"]), "0", warm["fetched_bytes"] == 0),
    ]
    write_table(args, total, rows, targets)
    print(args.out.read_text())
    shutil.rmtree(args.work, ignore_errors=True)
    return 0


def write_table(
    args: argparse.Namespace,
    total: int,
    rows: list[tuple[str, float]],
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
        "same disk; page cache dropped before every case; one run each.",
        "",
        "| case | seconds | MB/s |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {sec:.2f} | {total / sec / 1e6:.0f} |" for name, sec in rows]
    lines += ["", "| target | measured | goal | met |", "| --- | ---: | --- | --- |"]
    lines += [
        f"| {name} | {value:.2f} | {goal} | {'-' if met is None else 'yes' if met else 'NO'} |"
        for name, value, goal, met in targets
    ]
    lines.append("")
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
