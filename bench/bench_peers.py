#!/usr/bin/env python3
"""Benchmark peer fan-out (issue 14): N agents in network namespaces behind capped links, one hub.

Each row starts fresh agents (empty caches) on the lab of tests/netlab.py, all together, with the
model in their config, and measures: bytes the hub sent (its veth), the time until every agent's
/readyz is 200 (from the first start), the largest upload of any node, bytes by source per node
(the agents' metrics) and whether every ready node's files hash-check against the model. Rows:

    t1       one node alone (the reference time T1)
    nopeers  N nodes without peers (the hub's uplink is shared: about N x T1)
    peers    N nodes with --peers dns:peers.lab:8472
    liar     N honest nodes with peers plus tests/liarpeer.py listed in DNS like a node

    .venv/bin/python bench/bench_peers.py                        # 2 GiB in 4 files, 8 nodes (root)
    .venv/bin/python bench/bench_peers.py --file-gib 0.0625 --rows t1,peers   # a quick look

Writes bench/results/peers.json (rows merged by name, each with its git revision) and peers.md.
Everything it writes under --workdir (the model, every cache) is deleted at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from tests.netlab import HUB, MB, SWITCH, NetLab, unavailable  # noqa: E402
from tests.peerlab import PEER_PORT, REPO, Fleet, Model, peers_built, start_liar  # noqa: E402

GIB = 1 << 30
ROWS = ("t1", "nopeers", "peers", "liar")
PEER_ROWS = ("peers", "liar")
# Targets from issue 14, "Benchmark".
TARGET_HUB = 1.05  # hub bytes / model, 8 nodes with peers
TARGET_TIME = 1.5  # all ready / T1
TARGET_UPLOAD = 2.0  # largest node upload / model


def git_rev() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "agent"], capture_output=True, text=True, cwd=ROOT
    )
    return rev.stdout.strip() + ("+dirty(agent)" if dirty.stdout.strip() else "")


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the machine so far, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class Timeline:
    """Each member's bytes received and sent, once a second (the switch side of its veth: one
    `ip` call for all).

    Shows where a row loses time: a node whose link idles while the swarm has pieces it lacks.
    """

    def __init__(self, lab: NetLab, names: Sequence[str], every: float = 1.0) -> None:
        self.lab, self.names, self.every = lab, list(names), every
        self.samples: list[dict[str, tuple[int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> dict[str, tuple[int, int]]:
        out = subprocess.run(
            ["ip", "-n", self.lab.ns(SWITCH), "-s", "-j", "link", "show"], capture_output=True, text=True
        ).stdout
        # The switch port's tx is what the member received, its rx what the member sent.
        ports = {p["ifname"]: p["stats64"] for p in json.loads(out or "[]") if "stats64" in p}
        zero = {"tx": {"bytes": 0}, "rx": {"bytes": 0}}
        return {
            n: (int(ports.get(f"v-{n}", zero)["tx"]["bytes"]), int(ports.get(f"v-{n}", zero)["rx"]["bytes"]))
            for n in self.names
        }

    def _run(self) -> None:
        while not self._stop.wait(self.every if self.samples else 0):
            self.samples.append(self._read())

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mb_per_second(self, direction: int) -> dict[str, list[float]]:
        """Per member: MB received (`direction` 0) or sent (1) in each interval."""
        out: dict[str, list[float]] = {n: [] for n in self.names}
        for a, b in itertools.pairwise(self.samples):
            for n in self.names:
                out[n].append(round((b[n][direction] - a[n][direction]) / MB, 1))
        return out


def run_row(row: str, lab: NetLab, model: Model, args: argparse.Namespace) -> dict[str, Any]:
    """One scenario on fresh caches; its measurements."""
    nodes = ["n1"] if row == "t1" else [f"n{i}" for i in range(1, args.nodes + 1)]
    peers = f"dns:{lab.dns_name}:{PEER_PORT}" if row in PEER_ROWS else None
    work = args.workdir / row
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lab.dns_set([*nodes, "liar"] if row == "liar" else nodes)
    liar = start_liar(lab, "liar", model, work) if row == "liar" else None
    fleet = Fleet(lab, work, model)
    names = [*nodes, HUB, *(["liar"] if liar else [])]
    before = {n: lab.link_bytes(n) for n in names}
    cpu0 = cpu_busy()
    timeline = Timeline(lab, [*nodes, HUB])
    try:
        with timeline:
            agents = fleet.start_many(nodes, peers=peers)
            try:
                seconds: float | None = fleet.wait_ready(agents, args.timeout, poll=0.25)
            except AssertionError as exc:  # a row that does not finish is a result too
                print(f"{row}: {str(exc)[:300]}", file=sys.stderr)
                seconds = None
        cpu1 = cpu_busy()
        sources = fleet.summary()
        corrupt = {a.node: fleet.corrupt(a) for a in agents if a.ready_at is not None}
        liar_asked = (work / "liar.log").read_text().count('"GET ') if liar else None
    finally:
        fleet.stop()
        if liar is not None:
            liar.terminate()
            liar.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    after = {n: lab.link_bytes(n) for n in names}
    sent = {n: after[n].sent - before[n].sent for n in names}
    received = {n: after[n].received - before[n].received for n in names}
    start = min(a.started for a in agents)
    return {
        "row": row,
        "git": git_rev(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nodes": len(nodes),
        "peers": peers,
        "model_bytes": model.size,
        "seconds_all_ready": round(seconds, 2) if seconds is not None else None,
        "timed_out_after": None if seconds is not None else args.timeout,
        "ready_seconds": {a.node: round(a.ready_at - start, 2) for a in agents if a.ready_at is not None},
        "hub_sent": sent[HUB],
        "node_sent": {n: sent[n] for n in nodes},
        "node_received": {n: received[n] for n in nodes},
        "liar_sent": sent.get("liar"),
        "by_source": sources,
        "corrupt_nodes": sorted(n for n, bad in corrupt.items() if bad),
        "ready_nodes": sum(a.ready_at is not None for a in agents),
        "cpu_busy_percent": round(100 * (cpu1[0] - cpu0[0]) / max(cpu1[1] - cpu0[1], 1), 1),
        "liar_requests": liar_asked,
        "received_mb_per_second": timeline.mb_per_second(0),
        "sent_mb_per_second": timeline.mb_per_second(1),
    }


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def render(rows: dict[str, dict[str, Any]], args: argparse.Namespace, meta: dict[str, Any]) -> str:
    """The markdown table with targets."""
    t1 = rows.get("t1", {}).get("seconds_all_ready")
    lines = [
        "# Peer fan-out benchmark (issue 14)",
        "",
        f"Generated by `bench/bench_peers.py` on {meta['date']} ({meta['machine']}). Model: "
        f"{meta['model_bytes'] / GIB:.2f} GiB in {args.files} files; links capped with tbf at "
        f"{args.rate_mb:g} MB/s each way per node and {args.hub_rate_mb:g} MB/s for the hub "
        f"(network namespaces on one bridge, MTU {args.mtu}; byte counts are link-layer, about 0.7% "
        "headers). Times run from the first agent's start to the last `/readyz` 200, agent start-up "
        "included.",
        "",
        "| row | git | nodes | all ready | vs T1 | hub sent | vs model | largest upload | vs model "
        "| from peers (min-max per node) | corrupt | ready | CPU busy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ROWS:
        r = rows.get(name)
        if r is None:
            lines.append(f"| {name} | not run | | | | | | | | | | | |")
            continue
        size = r["model_bytes"]
        upload = max(r["node_sent"].values())
        peer = [s.get("peer", 0) for s in r["by_source"].values()]
        peer_txt = f"{min(peer) / size:.2f}-{max(peer) / size:.2f}x" if peer and r["peers"] else "-"
        done = r["seconds_all_ready"]
        when = f"{done:.1f} s" if done is not None else f"> {r['timed_out_after']:.0f} s (timed out)"
        lines.append(
            f"| {name} | {r['git']} | {r['nodes']} | {when} "
            f"| {_ratio(done, t1)} | {r['hub_sent'] / GIB:.2f} GiB "
            f"| {_ratio(r['hub_sent'], size)} | {upload / GIB:.2f} GiB | {_ratio(upload, size)} "
            f"| {peer_txt} | {len(r['corrupt_nodes'])} | {r['ready_nodes']}/{r['nodes']} "
            f"| {r['cpu_busy_percent']:.0f}% |"
        )
    lines += ["", "## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for text, value, ok in _targets(rows, t1):
        lines.append(f"| {text} | {value} | {ok} |")
    lines.append("")
    return "\n".join(lines)


def _targets(rows: dict[str, dict[str, Any]], t1: float | None) -> list[tuple[str, str, str]]:
    peers, liar = rows.get("peers"), rows.get("liar")
    out = []
    if peers:
        size = peers["model_bytes"]
        hub = peers["hub_sent"] / size
        out.append((f"hub sent <= {TARGET_HUB}x model (peers)", f"{hub:.3f}x", _yes(hub <= TARGET_HUB)))
        if t1 and peers["seconds_all_ready"] is not None:
            ratio = peers["seconds_all_ready"] / t1
            out.append(
                (f"all ready <= {TARGET_TIME}x T1 (peers)", f"{ratio:.2f}x", _yes(ratio <= TARGET_TIME))
            )
        up = max(peers["node_sent"].values()) / size
        out.append((f"largest upload <= {TARGET_UPLOAD}x model", f"{up:.2f}x", _yes(up <= TARGET_UPLOAD)))
    else:
        out.append(("peer rows", "not run (no --peers in this build?)", "-"))
    if liar:
        ok = not liar["corrupt_nodes"] and liar["ready_nodes"] == liar["nodes"]
        got = f"{len(liar['corrupt_nodes'])} corrupt, {liar['ready_nodes']}/{liar['nodes']} honest ready"
        out.append(("lying peer: 0 corrupt, all honest ready", got, _yes(ok)))
    return out


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--file-gib", type=float, default=0.5, help="size of each model file, GiB")
    parser.add_argument("--files", type=int, default=4, help="model files")
    parser.add_argument("--nodes", type=int, default=8, help="nodes in the multi-node rows")
    parser.add_argument("--rate-mb", type=float, default=50, help="each node's cap, MB/s each way")
    parser.add_argument("--hub-rate-mb", type=float, default=50, help="the hub's uplink cap, MB/s")
    parser.add_argument("--mtu", type=int, default=9000, help="MTU of the lab's links")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a row may take")
    parser.add_argument("--workdir", type=Path, default=BENCH / "work" / "peers", help="scratch (deleted)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "peers", help="results prefix")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}")
    reason = unavailable()
    if reason:
        print(f"bench_peers: {reason}", file=sys.stderr)
        return 1
    if not peers_built() and set(rows) & set(PEER_ROWS):
        print("bench_peers: no --peers in this build: peer rows skipped", file=sys.stderr)
        rows = [r for r in rows if r not in PEER_ROWS]
    results_path = args.out.with_suffix(".json")
    saved = json.loads(results_path.read_text()) if results_path.exists() else {"rows": {}}
    size = args.files * int(args.file_gib * GIB)
    # Rows of another model size or node count do not compare: start over.
    if (
        saved.get("meta", {}).get("model_bytes", 0) // GIB != size // GIB
        or saved.get("args", {}).get("nodes") != args.nodes
    ):
        saved = {"rows": {}}
    args.workdir.mkdir(parents=True, exist_ok=True)
    rate, hub_rate = int(args.rate_mb * MB), int(args.hub_rate_mb * MB)
    try:
        with NetLab(args.nodes, rate=rate, hub_rate=hub_rate, mtu=args.mtu, workdir=args.workdir) as lab:
            lab.add_node("liar", dns=False)
            t = time.monotonic()
            model = Model.make(args.workdir / "model", args.files, int(args.file_gib * GIB))
            lab.start_hub(model.directory, REPO)
            print(
                f"model {model.size / GIB:.2f} GiB and hub ready in {time.monotonic() - t:.0f} s", flush=True
            )
            for row in rows:
                result = run_row(row, lab, model, args)
                saved["rows"][row] = result
                print(
                    json.dumps({k: result[k] for k in ("row", "seconds_all_ready", "hub_sent")}), flush=True
                )
                meta = {
                    "date": result["date"],
                    "machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
                    "model_bytes": model.size,
                }
                saved["meta"] = meta
                saved["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
                results_path.write_text(json.dumps(saved, indent=1) + "\n")
                args.out.with_suffix(".md").write_text(render(saved["rows"], args, meta))
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)
    print(args.out.with_suffix(".md").read_text() if args.out.with_suffix(".md").exists() else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
