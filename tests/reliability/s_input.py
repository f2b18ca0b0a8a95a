"""Scenarios 5, 6: hub faults, hostile listings, hostile directory sources, invalid agent configs."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.devhub import Fault, HubServer
from agent.devhub.demo_model import DEMO_REPO_ID, demo_repo
from tests.conftest import Run
from tests.integration.test_preload_hub import HOSTILE
from tests.reliability.common import (
    Ctx,
    Row,
    cli,
    env,
    expected_hashes,
    failed_error,
    marker_exists,
    ready_state,
    snapshot_tree,
)


@dataclass
class FaultCase:
    """A fault, what must happen, and within how long."""

    name: str
    faults: list[Fault]
    expect: set[int]  # acceptable exit codes
    args: list[str] = field(default_factory=list)
    bound: float = 25.0  # seconds: the configured time bound + process start
    env: dict[str, str] = field(default_factory=dict)
    min_seconds: float = 0.0


def _cases(ctx: Ctx) -> list[FaultCase]:
    rng = ctx.rng
    kinds = ("revision", "tree", "resolve", "cdn")
    size = demo_repo().files()["model.safetensors"].size
    out = []
    for status in (500, 502, 503):
        out.append(
            FaultCase(
                f"{status} burst",
                [Fault(kind=rng.choice(kinds), status=status, times=rng.randint(1, 4))],
                {0},
            )
        )
    out += [
        FaultCase(
            "429 + Retry-After: 1",
            [Fault(kind=rng.choice(kinds), status=429, headers={"Retry-After": "1"}, times=1)],
            {0},
            env={"PRELOAD_RETRY_SCALE": "1"},
            min_seconds=1.0,
        ),
        FaultCase(
            "reset mid-body",
            [Fault(kind="cdn", reset_after=rng.randint(1, size - 1), times=rng.randint(1, 3))],
            {0},
        ),
        FaultCase(
            "stall beyond read timeout",
            [Fault(kind="cdn", stall=30, stall_after=rng.randint(1, size - 1), times=1)],
            {0},
            ["--read-timeout", "1s"],
        ),
        FaultCase(
            "slow trickle that completes (64 KiB/s, --timeout 15s)",
            [Fault(kind="cdn", trickle_bps=64 << 10, times=None)],
            {0},
            ["--timeout", "15s"],
            bound=17,
            min_seconds=size / (64 << 10) / 4,  # the trickle was really applied (even split 4 ways)
        ),
        FaultCase(
            "slow trickle that never finishes (4 kB/s, --timeout 3s)",
            [Fault(kind="cdn", trickle_bps=4000, times=None)],
            {7},
            ["--timeout", "3s"],
            bound=9,
        ),
        FaultCase(
            "stall forever (--timeout 4s, read timeout 1s)",
            [Fault(kind=rng.choice(kinds), stall=60, times=None)],
            {6, 7},
            ["--timeout", "4s", "--read-timeout", "1s"],
            bound=10,
        ),
        FaultCase(
            "truncated body",
            [Fault(kind=rng.choice(("cdn", "resolve")), truncate_after=rng.randint(1, 200), times=1)],
            {0},
        ),
        FaultCase(
            "wrong bytes once", [Fault(kind=rng.choice(("cdn", "resolve")), corrupt=True, times=1)], {0}
        ),
        FaultCase("wrong bytes always", [Fault(kind="cdn", corrupt=True, times=None)], {4}),
        FaultCase("redirect loop", [Fault(kind="resolve", redirect_loop=True, times=None)], {1}),
        FaultCase("endless 503", [Fault(kind=rng.choice(kinds), status=503, times=None)], {6}),
    ]
    return out


def hub_faults(ctx: Ctx) -> Row:
    """Every fault: recovered or a clear failure within the bound; never a hang or corrupt-ready."""
    row = Row("5. hub faults: 5xx bursts, 429, reset, stall, trickle, truncation, wrong bytes, redirect loop")
    repo = demo_repo()
    want = expected_hashes(repo)
    slowest = 0.0
    trickles: dict[str, list[float]] = {}
    with HubServer([repo]) as hub:
        for rnd in range(ctx.n(1, 5)):  # every fault 5 times in the full form
            for case in _cases(ctx):
                hub.clear_faults()
                for f in case.faults:
                    hub.add_fault(f)
                dest = ctx.work / f"fault-{rnd}-{case.name.replace(' ', '_').replace('/', '_')}"
                args = ["--model", DEMO_REPO_ID, "--dest", str(dest), "--timeout", "20s", *case.args]
                started = time.monotonic()
                r = cli(ctx, *args, extra_env={"HF_ENDPOINT": hub.url, **case.env}, timeout=60)
                took = time.monotonic() - started
                slowest = max(slowest, took)
                if "trickle" in case.name:
                    trickles.setdefault(case.name.split(" (")[0], []).append(took)
                ready, bad = ready_state(dest, DEMO_REPO_ID, want)
                row.corrupt_ready += bad
                clear = r.code == 0 or (bool(failed_error(r)) and "Traceback" not in r.stderr)
                ok = (
                    r.code in case.expect
                    and clear
                    and took <= case.bound
                    and took >= case.min_seconds
                    and ready == (r.code == 0)
                    and (r.code == 0 or not marker_exists(dest, DEMO_REPO_ID))
                )
                row.trial(
                    ok,
                    f"{case.name}: exit {r.code} in {took:.1f}s (want {sorted(case.expect)}): "
                    f"{failed_error(r)[:160]}",
                )
                shutil.rmtree(dest, ignore_errors=True)
    hub_names = ", ".join(c.name for c in _cases(ctx))
    row.notes.append(
        f"{hub_names}; each {ctx.n(1, 5)}x with random fault targets/offsets/counts; "
        f"slowest {slowest:.1f} s; "
        + ", ".join(f"{k}: {min(v):.1f}-{max(v):.1f} s" for k, v in trickles.items())
    )
    return row


EXTRA_HOSTILE: list[object] = [
    [{"type": "file", "path": "..", "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": ".", "size": 3, "oid": "a" * 40}],
    [
        {"type": "file", "path": "a", "size": 3, "oid": "a" * 40},
        {"type": "file", "path": "a/b", "size": 3, "oid": "b" * 40},
    ],
    [{"type": "file", "path": "x" * 5000, "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": "ok\nline", "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": "C:\\Windows\\x", "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": "a/./b", "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": "a//b", "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": "ok", "size": "3", "oid": "a" * 40}],
    [{"type": "file", "path": 7, "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": "ok", "size": 3, "oid": "a" * 40, "lfs": {"oid": "zz", "size": 3}}],
    [None],
    "[" * 100000,
]


def _tagged(listing: object, token: str) -> object:
    """The listing with `token` in every named component of every string path.

    `..`, `.` and empty components stay as they are, so each traversal keeps its shape; a
    file written anywhere by mistake then carries the token in its name.
    """
    if isinstance(listing, str):
        return listing
    if isinstance(listing, dict):
        return {k: _tagged(v, token) for k, v in listing.items()}
    if isinstance(listing, list):
        out = []
        for entry in listing:
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                parts = entry["path"].split("/")
                tagged = "/".join(c if c in ("", ".", "..") else f"{c}-{token}" for c in parts)
                entry = {**entry, "path": tagged}
            out.append(entry)
        return out
    return listing


def _tree_state(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Path -> (mode, size, mtime_ns, inode) of everything under `root` (symlinks not followed)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            out[path] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def _find_token(token: str) -> list[str]:
    """Every path on the machine whose name holds `token` (/ and /dev/shm; /proc and /sys skipped)."""
    hits: list[str] = []
    for top in ("/", "/dev/shm"):
        p = subprocess.run(
            ["find", top, "-xdev", "(", "-path", "/proc", "-o", "-path", "/sys", ")", "-prune", "-o",
             "-name", f"*{token}*", "-print"],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        hits += p.stdout.splitlines()
    return hits


def hostile_listings(ctx: Ctx) -> Row:
    """Hostile tree listings, both layouts, each in its own sandbox root: exit 4, nothing outside DIR."""
    row = Row("6a. hostile tree listings (traversal, absolute, backslash, NUL, dup, clash, sizes, bad JSON)")
    listings = list(HOSTILE) + EXTRA_HOSTILE
    token = "rltok" + random.SystemRandom().randbytes(6).hex()  # unique on this machine, any seed
    dests: list[str] = []
    with HubServer([demo_repo()]) as hub:
        for layout in ("dir", "hf-cache"):
            for i, listing in enumerate(listings):
                sandbox = ctx.dir(f"hostile-{layout}-{i}")
                dest = sandbox / "deep" / "cache"
                dest.mkdir(parents=True)
                dests.append(str(dest))
                homes = {
                    "HOME": "home",
                    "HF_HOME": "home/.cache/huggingface",
                    "TMPDIR": "tmp",
                    "XDG_CACHE_HOME": "home/.cache",
                    "XDG_CONFIG_HOME": "home/.config",
                    "XDG_DATA_HOME": "home/.local/share",
                    "XDG_STATE_HOME": "home/.local/state",
                    "XDG_RUNTIME_DIR": "run",
                }
                for rel in (*homes.values(), "cwd"):
                    (sandbox / rel).mkdir(parents=True, exist_ok=True)
                before = _tree_state(sandbox)
                tagged = _tagged(listing, token)
                body = tagged if isinstance(tagged, str) else json.dumps(tagged)
                hub.clear_faults()
                hub.add_fault(Fault(kind="tree", status=200, body=body, times=None))
                r = cli(
                    ctx,
                    "--model",
                    DEMO_REPO_ID,
                    "--dest",
                    str(dest),
                    "--layout",
                    layout,
                    extra_env={"HF_ENDPOINT": hub.url, **{k: str(sandbox / v) for k, v in homes.items()}},
                    timeout=60,
                    cwd=sandbox / "cwd",
                )
                after = _tree_state(sandbox)
                changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
                inside = (str(dest), str(dest) + os.sep)
                outside = sorted(p for p in changed if not (p == inside[0] or p.startswith(inside[1])))
                data = [p for p in changed if os.path.isfile(p) and not p.endswith(".lock")]
                ok = (
                    r.code == 4
                    and "Traceback" not in r.stderr
                    and not outside
                    and not data
                    and bool(failed_error(r))
                )
                row.trial(
                    ok,
                    f"{layout} listing {i}: exit {r.code}, changed outside DIR {outside[:3]}, "
                    f"files {data[:3]}: {failed_error(r)[:120]}",
                )
    canary = ctx.work / f"canary-{token}"  # the search must find this one, or it proves nothing
    canary.touch()
    hits = _find_token(token)
    canary.unlink()
    row.trial(str(canary) in hits, f"the token search missed the planted canary {canary}")
    hits = [h for h in hits if h != str(canary)]
    stray = [h for h in hits if not any(h.startswith(d + os.sep) for d in dests)]
    row.trial(not stray, f"{len(stray)} paths named with the token outside DIR: {stray[:3]}")
    row.notes.append(
        f"{len(listings)} listings (tests/integration HOSTILE + {len(EXTRA_HOSTILE)} more) x layouts dir, "
        "hf-cache; each run with cwd, HOME, HF_HOME, TMPDIR, XDG_* in its own sandbox root, whole sandbox "
        "diffed (added/removed/changed: only under DIR); hostile names carry a random token, then "
        f"`find / -xdev` (and /dev/shm): {len(hits)} hits, {len(stray)} outside DIR"
    )
    return row


def hostile_directories(ctx: Ctx) -> Row:
    """Directory sources with an escaping symlink, a FIFO, a directory loop, an unreadable file."""
    row = Row("6b. hostile directory sources (symlink out of root, FIFO, loop, unreadable)")
    repo_id = "rel-org/dir-hostile"
    secret = b"TOP-SECRET-OUTSIDE-THE-ROOT\n"
    cases = ["symlink-out", "symlink-abs", "fifo", "dir-loop", "unreadable", "socket"]
    setpriv = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    for case in cases:
        sandbox = ctx.dir(f"hostile-dir-{case}")
        (sandbox / "secret.txt").write_bytes(secret)
        model = sandbox / "src" / repo_id
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}\n")
        (model / "model.safetensors").write_bytes(os.urandom(4096))
        if case == "symlink-out":
            (model / "tokenizer.json").symlink_to("../../../secret.txt")
        elif case == "symlink-abs":
            (model / "tokenizer.json").symlink_to(sandbox / "secret.txt")
        elif case == "fifo":
            os.mkfifo(model / "tokenizer.json")
        elif case == "dir-loop":
            (model / "loop").symlink_to(".")
        elif case == "unreadable":
            (model / "model.safetensors").chmod(0)
        elif case == "socket":
            import socket

            s = socket.socket(socket.AF_UNIX)
            s.bind(str(model / "tokenizer.json"))
            s.close()
        dest = sandbox / "cache"
        before = snapshot_tree(sandbox)
        argv = [
            sys.executable,
            "-m",
            "agent",
            "--model",
            repo_id,
            "--dest",
            str(dest),
            "--source",
            str(sandbox / "src"),
        ]
        if case == "unreadable":
            if shutil.which("setpriv") is None:
                row.notes.append("unreadable: SKIPPED (no setpriv)")
                continue
            argv = setpriv + argv
        started = time.monotonic()
        try:
            p = subprocess.run(argv, env=env(ctx), capture_output=True, text=True, timeout=30, check=False)
            r = Run(p.returncode, p.stdout, p.stderr)
        except subprocess.TimeoutExpired:
            r = Run(-999, "", "HANG")
        took = time.monotonic() - started
        created = snapshot_tree(sandbox) - before
        outside = [x for x in created if not x.startswith(str(dest) + os.sep) and x != str(dest)]
        leaked = any(
            secret in Path(x).read_bytes() for x in created if os.path.isfile(x) and not os.path.islink(x)
        )
        error = failed_error(r)
        ok = (
            r.code in (1, 4)
            and bool(error)
            and "Traceback" not in r.stderr
            and not outside
            and not leaked
            and not marker_exists(dest, repo_id)
            and took < 30
        )
        row.trial(
            ok, f"{case}: exit {r.code} in {took:.1f}s, outside {outside[:2]}, leaked {leaked}: {error[:160]}"
        )
    row.notes.append("each rejected with a line naming the file; the secret outside the root never copied")
    return row


BAD_CONFIGS = {
    "unknown key": "models: [a/b]\nbogus: 1\n",
    "duplicate model": "models: [a/b, a/b]\n",
    "traversal id": "models: ['../../etc/passwd']\n",
    "absolute id": "models: ['/etc/passwd']\n",
    "bad layout": "models: [{id: a/b, layout: flat}]\n",
    "bad duration": "models: [a/b]\nverifyInterval: soon\n",
    "low >= high": "models: [a/b]\ngc: {highWatermarkPercent: 50, lowWatermarkPercent: 60}\n",
    "broken yaml": "models: [a/b\n  - : :\n",
    "not a mapping": "- a/b\n",
    "binary": "\x00\x01\x02\xff",
    "huge maxConcurrent": "models: [a/b]\nmaxConcurrent: 100000000000000000000\n",
    "yaml bomb": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
    "models: [*f]\n",
    "python tag": "models: !!python/object/apply:os.system ['touch /tmp/pwned-preload']\n",
    "source escape": "models: [{id: a/b, sources: ['ftp://x']}]\n",
    "wrong types": "models: [{id: a/b, required: maybe}]\n",
    "nested list": "models: [[a/b]]\n",
}


def bad_configs(ctx: Ctx) -> Row:
    """Invalid agent configs: exit 2 within 10 s, one line naming the file, nothing written."""
    row = Row("6c. invalid agent config files")
    for name, text in [*BAD_CONFIGS.items(), ("missing file", None), ("a directory", None)]:
        sandbox = ctx.dir(f"badcfg-{name.replace(' ', '_')}")
        cfg = sandbox / "config.yaml"
        if text is not None:
            cfg.write_bytes(text.encode("latin-1"))
        elif name == "a directory":
            cfg.mkdir()
        dest = sandbox / "cache"
        before = snapshot_tree(sandbox)
        started = time.monotonic()
        r = cli(
            ctx, "agent", "--config", str(cfg), "--dest", str(dest), "--listen", "127.0.0.1:0", timeout=15
        )
        took = time.monotonic() - started
        created = snapshot_tree(sandbox) - before
        outside = [x for x in created if not x.startswith(str(dest))]
        ok = (
            r.code == 2
            and "Traceback" not in r.stderr
            and ("config" in r.stderr)
            and not outside
            and took < 10
            and not os.path.exists("/tmp/pwned-preload")
        )
        row.trial(ok, f"{name}: exit {r.code} in {took:.1f}s: {r.stderr.strip()[-200:]}")
    row.notes.append(f"{len(BAD_CONFIGS) + 2} configs (unknown keys, bad ids, YAML bomb, python tags, ...)")
    return row
