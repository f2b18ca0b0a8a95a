"""Saturating the link: requests kept under the CDN's longest span, and the connection count that
follows the rate (grows behind a per-connection cap, backs off on 429/503), reported."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest

from agent.devhub import Fault, HubServer
from agent.sources.hub import HubSource
from agent.spec import ModelSpec
from tests.conftest import RunPreload, spawn_preload
from tests.hubfixtures import HubFactory
from tests.integration.test_preload_hub import big_repo

MIB = 1 << 20
SPAN = 3 * MIB + 4096  # not a whole number of MiB: the source rounds its spans down to 64 KiB


def _span(rng: str | None, size: int) -> int:
    """Bytes a Range header asks for (the whole file without one)."""
    if not rng:
        return size
    first, last = rng.removeprefix("bytes=").split("-")
    return int(last) - int(first) + 1


@pytest.mark.usefixtures("prune_big_files")
def test_every_request_stays_under_the_hubs_longest_span(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A CDN refusing long ranges: --max-request-span keeps every GET under it, the model verifies."""
    repo = big_repo(tmp_path, mib=20)
    hub = hub_factory([repo], max_span=SPAN)
    blob = repo.files()["model.safetensors"]
    dest = tmp_path / "cache"
    args = ("--model", "big-org/big-model", "--dest", str(dest), "--max-request-span", str(SPAN))
    r = run_preload(*args, env={"HF_ENDPOINT": hub.url})
    assert r.code == 0, r.stderr
    gets = [rec for rec in hub.requests(method="GET", path=blob.sha256) if rec.kind in ("cdn", "resolve")]
    assert all(rec.status in (206, 200) for rec in gets), [rec.status for rec in gets]
    assert max(_span(rec.range, blob.size) for rec in gets) <= SPAN
    assert len(gets) >= blob.size // SPAN
    assert sum(rec.bytes_sent for rec in gets) == blob.size
    assert (dest / "big-org" / "big-model" / "model.safetensors").read_bytes() == blob.read(0, blob.size)


@pytest.mark.usefixtures("prune_big_files")
def test_a_request_over_the_span_is_refused_by_the_test_hub(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload
) -> None:
    """The fault itself: without the option the 20 MiB range is refused (HTTP 400); nothing published."""
    hub = hub_factory([big_repo(tmp_path, mib=20)], max_span=SPAN)
    dest = tmp_path / "cache"
    r = run_preload("--model", "big-org/big-model", "--dest", str(dest), env={"HF_ENDPOINT": hub.url})
    assert r.code == 1, r.stderr
    assert "HTTP 400" in r.event("failed")["error"]
    assert not (dest / "big-org" / "big-model").exists()


def test_the_source_splits_a_long_range_into_consecutive_requests(hub: HubServer) -> None:
    """HubSource alone: a range over max_span arrives byte-exact from requests of at most max_span."""
    spec = ModelSpec(repo="demo-org/tiny-model", revision="main")
    limit = 100_000
    hub.max_span = limit
    source = HubSource(hub.url, "hf_test_token", max_span=limit)
    try:
        snap = source.snapshot(spec)
        rf = max(snap.files, key=lambda f: f.size)
        hf = hub.repo(spec.repo).files()[rf.path]
        assert rf.size > 2 * limit
        start, end = 5, rf.size - 3
        with source.open_range(spec, snap, rf, start, end) as blocks:
            got = b"".join(bytes(b) for b in blocks)
    finally:
        source.close()
    assert got == hf.read(start, end - start)
    gets = [rec for rec in hub.requests(method="GET", path=hf.sha256) if rec.kind == "cdn"]
    assert source.max_span == 65536, "rounded down to whole 64 KiB blocks"
    assert len(gets) == -(-(end - start) // source.max_span)
    assert all(_span(rec.range, rf.size) <= limit and rec.status == 206 for rec in gets)


@pytest.mark.usefixtures("prune_big_files")
def test_a_capped_cdn_draws_many_connections_reported_in_progress_and_the_final_line(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload
) -> None:
    """Behind a per-connection cap the count grows past the former fixed 16; lines report it."""
    repo = big_repo(tmp_path, mib=96)
    hub = hub_factory([repo], cdn_rate_limit_bps=2 << 20)
    dest = tmp_path / "cache"
    args = ("--model", "big-org/big-model", "--dest", str(dest), "--chunk-size", "1MiB")
    r = run_preload(*args, "--progress-interval", "0.5s", env={"HF_ENDPOINT": hub.url}, timeout=180)
    assert r.code == 0, r.stderr
    blob = repo.files()["model.safetensors"]
    gets = hub.requests(kind="cdn", method="GET", path=blob.sha256)
    edges = sorted([(rec.started, 1) for rec in gets] + [(rec.finished, -1) for rec in gets])
    concurrent = max(itertools.accumulate(step for _, step in edges))
    assert concurrent > 16, f"at most {concurrent} requests ran at once"
    assert sum(rec.bytes_sent for rec in gets) == blob.size, "every byte fetched once"
    done = r.event("preload_complete")
    assert done["connections"] > 16 and done["connections"] >= concurrent - 1
    assert max(e["connections"] for e in r.events() if e["event"] == "progress") > 16
    assert hashlib.sha256(
        (dest / "big-org" / "big-model" / "model.safetensors").read_bytes()
    ).hexdigest() == (blob.sha256)


@pytest.mark.usefixtures("prune_big_files")
def test_429s_from_the_cdn_halve_the_connections(hub_factory: HubFactory, tmp_path: Path) -> None:
    """Once the count has grown, a burst of 429s halves it and the download still completes."""
    repo = big_repo(tmp_path, mib=128)
    hub = hub_factory([repo], cdn_rate_limit_bps=2 << 20)
    blob = repo.files()["model.safetensors"]
    dest = tmp_path / "cache"
    args = (
        "--model",
        "big-org/big-model",
        "--dest",
        str(dest),
        "--chunk-size",
        "1MiB",
        "--max-workers",
        "32",
    )
    proc = spawn_preload(tmp_path, *args, "--progress-interval", "0.2s", env={"HF_ENDPOINT": hub.url})
    assert proc.stderr is not None
    lines: list[str] = []
    # The 429s go in once the progress lines show the count grown (a request count says nothing
    # of how many run at once); more chunks than connections keep requests going after that.
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("{") and json.loads(line).get("connections", 0) >= 24:
            break
    hub.add_fault(Fault(kind="cdn", path=blob.sha256, status=429, headers={"Retry-After": "0"}, times=3))
    _, rest = proc.communicate(timeout=180)
    err = "".join(lines) + rest
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    statuses = [rec.status for rec in hub.requests(kind="cdn", method="GET", path=blob.sha256)]
    assert statuses.count(429) == 3
    assert any(e["event"] == "retry" and "429" in e["cause"] for e in events)
    counts = [e["connections"] for e in events if e["event"] == "progress"]
    peak = next(e for e in events if e["event"] == "preload_complete")["connections"]
    assert peak >= 24, counts
    after_peak = counts[counts.index(max(counts)) :]
    assert min(after_peak) <= peak // 2 + 1, counts
