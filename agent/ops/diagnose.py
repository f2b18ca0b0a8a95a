"""`preload diagnose`: what this node's cache volume and CPU can do, and what that means for each
model: sequential O_DIRECT write and cold read of a temporary file, free space, the sha256 rate,
and the predicted time to read each model cold (vLLM's load) and to download it verified."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from agent.engine.plan import select
from agent.errors import PreloadError, UsageError
from agent.manifest import RemoteFile
from agent.sources.base import SourceFactory
from agent.spec import ModelSpec
from agent.store import Store, inventory
from agent.store.paths import CachePaths
from agent.store.space import disk_usage
from agent.units import fmt_bytes

DEFAULT_TEST_BYTES = 256 << 20  # a few seconds even on a slow disk: fine on a running node
AGENT_TEST_BYTES = 64 << 20  # the agent's start-up run
BLOCK = 4 << 20  # per write and read: what a sequential loader or downloader issues
HASH_SECONDS = 0.3  # sha256 is measured for this long (at least HASH_MIN_BYTES)
HASH_MIN_BYTES = 32 << 20


@dataclass(frozen=True)
class ModelEstimate:
    """What one model will cost on this node."""

    repo: str
    layout: str
    bytes: int
    cold_read_s: float  # reading every file once from the disk (what vLLM's load costs)
    download_s: float  # fetching it verified at the given link rate, bounded by disk and CPU
    # Where its size came from: "cache" (published under DIR), "listing" (its sources, for a
    # configured model not here yet), or why it is unknown (then bytes and times are 0).
    sized_by: str = "cache"


@dataclass(frozen=True)
class Diagnosis:
    """The node's figures; rates in bytes per second."""

    dest: str
    test_bytes: int
    direct_io: bool  # False: the filesystem refused O_DIRECT, figures are through the page cache
    write_bps: float
    read_bps: float
    free_bytes: int
    total_bytes: int
    hash_bps: float  # one core
    cores: int
    link_bps: float
    models: tuple[ModelEstimate, ...]

    def download_bps(self, files: int = 1) -> float:
        """The rate a verified download can reach: the link, the disk, or hashing on `files` cores."""
        hashers = max(1, min(self.cores, files))
        return min(self.link_bps, self.write_bps, self.hash_bps * hashers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def probe_dir(dest: Path) -> Path:
    """Where the temporary file goes: the store's staging area if DIR is a cache (same filesystem
    as the models, and cleaned by gc if we are killed), else DIR itself."""
    staging = CachePaths(dest).staging_root
    return staging if staging.is_dir() else dest


def measure_disk(directory: Path, size: int) -> tuple[float, float, bool]:
    """Sequential write (fdatasync included) and cold read rates of a `size`-byte temporary file,
    with O_DIRECT where the filesystem allows it; the file is deleted."""
    size = max(BLOCK, size - size % BLOCK)
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(BLOCK))  # incompressible, in case the volume compresses
    view = memoryview(buf)
    fd, name = tempfile.mkstemp(prefix=".diagnose-", dir=directory)
    os.close(fd)
    try:
        direct = True
        try:
            fd = os.open(name, os.O_WRONLY | getattr(os, "O_DIRECT", 0))
        except OSError:
            direct, fd = False, os.open(name, os.O_WRONLY)
        try:
            began = time.monotonic()
            try:
                _write_all(fd, view, size)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not direct:
                    raise
                os.close(fd)  # opened, then refused at write (tmpfs, some FUSE): page cache
                direct, fd = False, os.open(name, os.O_WRONLY)
                began = time.monotonic()
                _write_all(fd, view, size)
            os.fdatasync(fd)
            write_s = time.monotonic() - began
        finally:
            os.close(fd)
        fd = os.open(name, os.O_RDONLY | (getattr(os, "O_DIRECT", 0) if direct else 0))
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cold, also without O_DIRECT
            began = time.monotonic()
            done = 0
            while done < size:
                n = os.preadv(fd, [view], done)
                if n <= 0:
                    break
                done += n
            read_s = time.monotonic() - began
        finally:
            os.close(fd)
    except OSError as exc:
        raise PreloadError(f"cannot measure the disk under {directory}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
        view.release()
        buf.close()
    return size / max(write_s, 1e-9), size / max(read_s, 1e-9), direct


def _write_all(fd: int, view: memoryview, size: int) -> None:
    done = 0
    while done < size:
        done += os.pwrite(fd, view, done)


def measure_hash(seconds: float = HASH_SECONDS) -> float:
    """sha256 bytes per second on one core (what verifying each file as it arrives costs)."""
    block = os.urandom(BLOCK)
    h = hashlib.sha256()
    began, done = time.monotonic(), 0
    while done < HASH_MIN_BYTES or time.monotonic() - began < seconds:
        h.update(block)
        done += len(block)
    return done / max(time.monotonic() - began, 1e-9)


def diagnose(dest: Path, test_bytes: int = DEFAULT_TEST_BYTES, link_bps: float = 25e9 / 8) -> Diagnosis:
    """Measure the volume under `dest` and the CPU, and estimate every model published there."""
    if not dest.is_dir():
        raise UsageError(f"--dest {dest} is not a directory")
    if test_bytes < BLOCK:
        raise UsageError(f"the test file must be at least {fmt_bytes(BLOCK)}")
    free, total = disk_usage(dest)
    if test_bytes > free // 2:
        raise UsageError(
            f"a {fmt_bytes(test_bytes)} test file would take more than half of the "
            f"{fmt_bytes(free)} free under {dest}"
        )
    write_bps, read_bps, direct = measure_disk(probe_dir(dest), test_bytes)
    hash_bps = measure_hash()
    base = Diagnosis(
        str(dest), test_bytes, direct, write_bps, read_bps, free, total, hash_bps,
        os.cpu_count() or 1, link_bps, (),
    )  # fmt: skip
    inv = inventory.scan(dest)
    rows = [
        (inst.spec.repo, inst.spec.layout.value, inst.manifest.total_bytes, len(inst.manifest.files))
        for inst in inv.models
        if inst.manifest is not None
    ]
    return replace(base, models=estimates(base, rows))


def estimates(
    d: Diagnosis, models: Iterable[tuple[str, str, int, int]], sized_by: str = "cache"
) -> tuple[ModelEstimate, ...]:
    """(repo, layout, bytes, files) -> what each costs on the node `d` describes."""
    return tuple(
        ModelEstimate(
            repo, layout, size, round(size / d.read_bps, 2), round(size / d.download_bps(files), 2), sized_by
        )
        for repo, layout, size, files in models
    )


def configured(
    d: Diagnosis, dest: Path, models: Iterable[tuple[ModelSpec, Sequence[SourceFactory]]]
) -> Diagnosis:
    """`d` with predictions for the models an agent config names, in its order, instead of those
    found under DIR: a published one by its manifest, another by its sources' listing (the first
    that answers; include/exclude applied, as a preload would select). One that no source lists
    gets a row saying why, and the other rows still come."""
    store = Store(dest)
    rows: list[ModelEstimate] = []
    for spec, sources in models:
        marker = store.read_marker(spec)
        if marker is not None:
            rows += estimates(d, [(spec.repo, spec.layout.value, marker.total_bytes, len(marker.files))])
            continue
        try:
            files = _listed(spec, sources)
        except PreloadError as exc:
            rows.append(ModelEstimate(spec.repo, spec.layout.value, 0, 0.0, 0.0, f"unknown: {exc}"))
            continue
        size = sum(f.size for f in files)
        rows += estimates(d, [(spec.repo, spec.layout.value, size, len(files))], sized_by="listing")
    return replace(d, models=tuple(rows))


def _listed(spec: ModelSpec, sources: Sequence[SourceFactory]) -> tuple[RemoteFile, ...]:
    """The files a preload of `spec` would select, from the first source that lists it."""
    error: PreloadError = PreloadError("no source")
    for factory in sources:
        source = factory()
        try:
            snap, _ = select(spec, source.snapshot(spec), None)
            return snap.files
        except PreloadError as exc:
            error = exc
        finally:
            source.close()
    raise error


def render(d: Diagnosis) -> str:
    """The human-readable report."""
    mb = 1e6
    lines = [
        f"cache volume  {d.dest}: free {fmt_bytes(d.free_bytes)} of {fmt_bytes(d.total_bytes)}",
        f"disk          write {d.write_bps / mb:,.0f} MB/s, cold read {d.read_bps / mb:,.0f} MB/s "
        f"({'O_DIRECT' if d.direct_io else 'page cache: O_DIRECT refused'}, {fmt_bytes(d.test_bytes)} file)",
        f"cpu           sha256 {d.hash_bps / mb:,.0f} MB/s per core, {d.cores} cores",
        f"link          {d.link_bps * 8 / 1e9:g} Gbit/s assumed; a verified download reaches "
        f"{d.download_bps(d.cores) / mb:,.0f} MB/s here (limit: {limit(d)})",
    ]
    if d.models:
        width = max(len(m.repo) for m in d.models)
        lines.append("")
        lines.append(f"{'MODEL':<{width}}  {'LAYOUT':<8}  {'SIZE':>10}  {'COLD READ':>10}  {'DOWNLOAD':>10}")
        for m in d.models:
            if m.sized_by.startswith("unknown"):
                lines.append(f"{m.repo:<{width}}  {m.layout:<8}  {m.sized_by}")
                continue
            note = "  (not here yet: size from its listing)" if m.sized_by == "listing" else ""
            lines.append(
                f"{m.repo:<{width}}  {m.layout:<8}  {fmt_bytes(m.bytes):>10}  "
                f"{m.cold_read_s:>9.1f}s  {m.download_s:>9.1f}s{note}"
            )
    return "\n".join(lines) + "\n"


def limit(d: Diagnosis) -> str:
    """Which of link, disk and hashing bounds a download on this node."""
    rates = {"link": d.link_bps, "disk write": d.write_bps, "sha256": d.hash_bps * d.cores}
    return min(rates, key=lambda k: rates[k])
