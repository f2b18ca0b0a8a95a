"""Scenario 2b: the durability order of publish, read from the syscalls of a real preload (strace).

A kill between the publish steps (scenario 2a) proves a killed process never leaves a marker
early; it cannot prove the data is on the disk before the marker is (a power cut drops what is
only in the page cache). This scenario runs a real preload under `strace -f -y` and checks, from
the syscall log, the order a crash-consistent publish needs:

- every data file is fsync'ed/fdatasync'ed (after it was last opened) before its rename into place;
- the marker's temp file is fsync'ed before its rename onto the marker;
- the marker rename comes after every data file's rename, and after an fsync of each directory
  a rename (data file, pointer, snapshot link, ref) happened in;
- the marker's directory is fsync'ed after the marker rename.

The checker is run against deliberately broken copies of each log too (a data fsync dropped, the
marker renamed early, the final directory fsync dropped): it must flag each, or the row fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.devhub import HubServer
from agent.devhub.demo_model import DEMO_REPO_ID, demo_repo
from agent.spec import Layout, ModelSpec
from agent.store import Store
from tests.reliability.common import PY, Ctx, Row, cli, env, expected_hashes, ready_state

SYSCALLS = "fsync,fdatasync,rename,renameat,renameat2,openat,linkat,symlinkat"
SYNCS = ("fsync", "fdatasync")


@dataclass(frozen=True)
class Call:
    """One traced syscall: its position in the log, name, the paths it names, its result."""

    pos: int
    name: str
    paths: tuple[str, ...]  # fsync*: (fd path,); rename*/linkat: (old, new); openat/symlinkat: (path,)
    flags: str
    ok: bool


_LINE = re.compile(r"^(\d+)\s+(.*)$")
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+|\?)")
_STR = r'"((?:[^"\\]|\\.)*)"'
_DIRFD = r"(?:AT_FDCWD|\d+)(?:<([^>]*)>)?"


def _unescape(s: str) -> str:
    return s.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _join(base: str | None, path: str) -> str:
    if path.startswith("/") or base is None:
        return os.path.normpath(path)
    return os.path.normpath(os.path.join(base.removesuffix(" (deleted)"), path))


def parse(log: str) -> list[Call]:
    """The traced calls in the order they took effect.

    A call split by another thread's (`<unfinished ...>` / `<... resumed>`) counts at its start,
    except fsync/fdatasync, which count where they returned: an fsync only "happened" once done.
    """
    pending: dict[str, tuple[int, str]] = {}
    whole: list[tuple[int, str]] = []
    for pos, raw in enumerate(log.splitlines()):
        m = _LINE.match(raw)
        if not m:
            continue
        pid, text = m.groups()
        if text.endswith(_UNFINISHED):
            pending[pid] = (pos, text[: -len(_UNFINISHED)])
            continue
        r = _RESUMED.match(text)
        if r and pid in pending:
            start, head = pending.pop(pid)
            text = head + r.group(2)
            whole.append((pos if r.group(1) in SYNCS else start, text))
            continue
        whole.append((pos, text))
    calls = []
    for pos, text in sorted(whole):
        m = _CALL.match(text)
        if not m:
            continue
        name, args, result = m.groups()
        ok = result not in ("?",) and not result.startswith("-")
        paths: tuple[str, ...] = ()
        flags = ""
        if name in SYNCS:
            fd = re.match(r"\d+<(.*)>$", args)
            if fd:
                paths = (fd.group(1).removesuffix(" (deleted)"),)
        elif name == "rename":
            a = re.match(rf"{_STR}, {_STR}$", args)
            if a:
                paths = (_join(None, _unescape(a.group(1))), _join(None, _unescape(a.group(2))))
        elif name in ("renameat", "renameat2", "linkat"):
            a = re.match(rf"{_DIRFD}, {_STR}, {_DIRFD}, {_STR}", args)
            if a:
                paths = (_join(a.group(1), _unescape(a.group(2))), _join(a.group(3), _unescape(a.group(4))))
        elif name == "openat":
            a = re.match(rf"{_DIRFD}, {_STR}, ([A-Z_|0-9]+)", args)
            if a:
                paths, flags = (_join(a.group(1), _unescape(a.group(2))),), a.group(3)
        elif name == "symlinkat":
            a = re.match(rf"{_STR}, {_DIRFD}, {_STR}$", args)
            if a:
                paths = (_join(a.group(2), _unescape(a.group(3))),)
        calls.append(Call(pos, name, paths, flags, ok))
    return calls


def check_order(calls: list[Call], data_files: set[str], marker: str, staging: str) -> list[str]:
    """Every violation of the publish order in `calls` (empty: the order holds)."""
    bad: list[str] = []
    renames = [c for c in calls if c.name.startswith("rename") and c.ok and len(c.paths) == 2]
    syncs = [c for c in calls if c.name in SYNCS and c.ok and c.paths]

    def synced(path: str, after: int, before: int) -> bool:
        return any(after < s.pos < before and s.paths[0] == path for s in syncs)

    def last_open(path: str, before: int) -> int:
        opens = [
            c.pos
            for c in calls
            if c.name in ("openat", "linkat") and c.ok and c.paths[-1] == path and c.pos < before
            if c.name == "linkat" or any(f in c.flags for f in ("O_WRONLY", "O_RDWR", "O_CREAT"))
        ]
        return max(opens, default=-1)

    marks = [c for c in renames if c.paths[1] == marker]
    if len(marks) != 1:
        return [f"{len(marks)} renames onto the marker {marker} (want 1)"]
    mark = marks[0]
    if not synced(mark.paths[0], last_open(mark.paths[0], mark.pos), mark.pos):
        bad.append(f"marker temp {mark.paths[0]} not fsync'ed before its rename")
    if not synced(os.path.dirname(marker), mark.pos, 1 << 62):
        bad.append(f"marker directory {os.path.dirname(marker)} not fsync'ed after the marker rename")
    links = {c.paths[1]: c for c in calls if c.name == "linkat" and c.ok}
    for final in sorted(data_files):
        into = [c for c in renames if c.paths[1] == final and c.pos < mark.pos]
        if not into:
            bad.append(f"data file {final} not renamed into place before the marker")
            continue
        r = into[-1]
        src, start = r.paths[0], last_open(r.paths[0], r.pos)
        if src in links:  # a hard link of a verified file: that file must be durable
            src, start = links[src].paths[0], last_open(links[src].paths[0], links[src].pos)
        if not synced(src, start, r.pos):
            bad.append(f"data file {final}: {src} not fsync'ed/fdatasync'ed before its rename")
    if any(c.pos > mark.pos and c.paths[1] in data_files for c in renames):
        bad.append("a data file renamed after the marker")
    for r in renames:
        dst = r.paths[1]
        if r.pos > mark.pos or dst == marker or dst.startswith(staging + os.sep):
            continue
        if not synced(os.path.dirname(dst), r.pos, mark.pos):
            bad.append(f"directory of {dst} not fsync'ed between its rename and the marker rename")
    return bad


def _mutants(calls: list[Call], data_files: set[str], marker: str) -> dict[str, list[Call]]:
    """Broken copies of a good log, each of which the checker must reject."""
    mark = next(c for c in calls if c.name.startswith("rename") and c.paths[1:] == (marker,))
    data_renames = [
        c for c in calls if c.name.startswith("rename") and c.paths[1:2] and c.paths[1] in data_files
    ]
    victim = data_renames[len(data_renames) // 2].paths[0]
    last_data = max(c.pos for c in data_renames)
    marker_dir = os.path.dirname(marker)
    return {
        "a data file's fdatasync dropped": [
            c for c in calls if not (c.name in SYNCS and c.paths[:1] == (victim,))
        ],
        "marker renamed before the last data rename": sorted(
            [c for c in calls if c is not mark] + [Call(last_data - 1, mark.name, mark.paths, "", True)],
            key=lambda c: c.pos,
        ),
        "marker directory fsync dropped": [
            c for c in calls if not (c.name in SYNCS and c.pos > mark.pos and c.paths[:1] == (marker_dir,))
        ],
    }


def durability_order(ctx: Ctx) -> Row:
    """strace a real preload (hub and directory source, both layouts); check the publish order."""
    row = Row("2b. durability order of publish, from the syscalls of real preloads (strace)")
    strace = shutil.which("strace")
    if strace is None:
        row.trial(False, "strace is not installed (make reliability / make test install it with apt)")
        return row
    repo = demo_repo()
    want = expected_hashes(repo)
    counts: list[str] = []
    caught = 0
    with HubServer([repo]) as hub:
        seed = Path(os.path.realpath(ctx.dir("order-seed")))
        cli(ctx, "--model", DEMO_REPO_ID, "--dest", str(seed), "--endpoint", hub.url)
        for src_name, src_args in (("hub", ["--endpoint", hub.url]), ("dir", ["--source", str(seed)])):
            for layout in ("dir", "hf-cache"):
                dest = Path(os.path.realpath(ctx.work)) / f"order-{src_name}-{layout}"
                log = ctx.work / f"order-{src_name}-{layout}.strace"
                argv = [strace, "-f", "-qq", "-s", "4096", "-y", "-e", f"trace={SYSCALLS}", "-o", str(log)]
                argv += [PY, "-m", "agent", "--model", DEMO_REPO_ID, "--dest", str(dest), "--layout", layout]
                p = subprocess.run(
                    argv + src_args, env=env(ctx), capture_output=True, text=True, timeout=120, check=False
                )
                ready, bad = ready_state(dest, DEMO_REPO_ID, want, layout)
                row.corrupt_ready += bad
                what = f"{src_name} source, {layout} layout"
                spec = ModelSpec(DEMO_REPO_ID, layout=Layout(layout))
                store = Store(dest)
                m = store.read_marker(spec)
                if p.returncode != 0 or not ready or m is None or not log.exists():
                    row.trial(False, f"{what}: preload under strace exit {p.returncode}: {p.stderr[-300:]}")
                    continue
                if layout == "dir":
                    data = {str(store.version_dir(spec, m.commit) / f.path) for f in m.files}
                else:
                    data = {str(store.hf_repo_dir(spec) / "blobs" / f.digest.hex) for f in m.files}
                calls = parse(log.read_text(errors="replace"))
                marker, staging = str(store.marker_path(spec)), str(store.staging_dir(spec))
                problems = check_order(calls, data, marker, staging)
                n_sync = sum(c.name in SYNCS for c in calls)
                counts.append(f"{what}: {len(data)} data files, {n_sync} fsyncs")
                row.trial(not problems, f"{what}: " + "; ".join(problems[:3]))
                if not problems:  # the checker must see each planted break
                    for name, broken in _mutants(calls, data, marker).items():
                        flagged = bool(check_order(broken, data, marker, staging))
                        caught += int(flagged)
                        row.trial(flagged, f"{what}: the checker missed a planted break: {name}")
                shutil.rmtree(dest, ignore_errors=True)
    row.notes.append(
        "strace -f -y of fsync/fdatasync/rename*/openat/linkat/symlinkat; per run: data fsync'ed before "
        "its rename, marker temp fsync'ed before its rename, marker renamed after every data rename and "
        "after its directories' fsyncs, marker directory fsync'ed after; "
        + "; ".join(counts)
        + f"; planted breaks caught by the checker: {caught}"
    )
    return row
