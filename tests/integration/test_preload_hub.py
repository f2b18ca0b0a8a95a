"""End-to-end preloads from the loopback test hub, run as real `preload` processes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.demo_model import DEMO_REPO_ID, demo_files, demo_repo
from agent.hubserver import Fault, HubFile, HubRepo, HubServer
from agent.manifest import Manifest
from tests.conftest import RunPreload, spawn_preload, tmpfs
from tests.hubfixtures import HubFactory

TOKEN = "hf_secret_test_token_4f8a2c"


def big_repo(tmp_path: Path, mib: int = 48, repo_id: str = "big-org/big-model") -> HubRepo:
    """A repo with one large LFS file on disk plus a config."""
    blob = tmp_path / f"big-{mib}.bin"
    if not blob.exists():
        with open(blob, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
    files = [
        HubFile("config.json", data=b'{"model_type": "bert"}'),
        HubFile("model.safetensors", source=blob),
    ]
    return HubRepo(repo_id, files)


def model_dir(dest: Path, repo: str = DEMO_REPO_ID) -> Path:
    """DEST/ORG/NAME."""
    return dest / repo


def marker(dest: Path, repo: str = DEMO_REPO_ID, layout: str = "dir") -> Manifest:
    """The completion marker's manifest."""
    org, name = repo.split("/")
    return Manifest.from_json((dest / ".preload" / "markers" / layout / org / f"{name}.json").read_text())


def test_dir_layout_is_complete_verified_and_loadable(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A dir-layout preload publishes every selected file, a marker, and loads with real libraries."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    dest = tmp_path / "cache"
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env={"HF_ENDPOINT": hub.url})
    assert r.code == 0, r.stderr
    path = model_dir(dest)
    assert path.is_symlink()
    expected = {f.path: f for f in demo_files() if f.path != "pytorch_model.bin"}
    for rel, f in expected.items():
        assert (path / rel).read_bytes() == f.read(0, f.size)
    assert not (path / "pytorch_model.bin").exists(), "duplicate weight format must be skipped by default"
    m = marker(dest)
    assert {f.path for f in m.files} == set(expected)
    assert m.commit == hub.repo(DEMO_REPO_ID).head()
    assert m.endpoint == hub.url
    assert load_file(str(path / "model.safetensors"))
    assert Tokenizer.from_file(str(path / "tokenizer.json")).encode("the model").ids
    done = r.event("preload_complete")
    assert done["files"] == len(expected) and done["bytes"] == m.total_bytes


def test_hf_cache_layout_is_found_offline_by_the_hub_client(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload, hf_client: Path
) -> None:
    """The hf-cache layout satisfies snapshot_download(local_files_only=True); refs have no newline."""
    from huggingface_hub import snapshot_download

    dest = tmp_path / "hub-cache"
    r = run_preload(
        "--model", DEMO_REPO_ID, "--dest", str(dest), "--layout", "hf-cache", env={"HF_ENDPOINT": hub.url}
    )
    assert r.code == 0, r.stderr
    ref = dest / "models--demo-org--tiny-model" / "refs" / "main"
    assert ref.read_bytes() == hub.repo(DEMO_REPO_ID).head().encode()
    snap = Path(snapshot_download(DEMO_REPO_ID, cache_dir=str(dest), local_files_only=True))
    assert (snap / "config.json").is_symlink()
    assert json.loads((snap / "config.json").read_text())
    assert (snap / "1_Pooling" / "config.json").exists()


def test_warm_start_makes_no_hub_request_and_works_offline(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A complete model is reported ready without contacting the hub, even when the hub is gone."""
    hub = hub_factory()
    dest = tmp_path / "cache"
    assert run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env={"HF_ENDPOINT": hub.url}).code == 0
    hub.reset_log()
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env={"HF_ENDPOINT": hub.url})
    assert r.code == 0 and hub.requests() == []
    assert r.event("preload_complete")["already_complete"] is True
    hub.stop()
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env={"HF_ENDPOINT": hub.url})
    assert r.code == 0, r.stderr


def test_refresh_publishes_new_revision_beside_the_old(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """--refresh re-resolves main; the new commit is swapped in and the old version stays on disk."""
    dest = tmp_path / "cache"
    env = {"HF_ENDPOINT": hub.url}
    assert run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env=env).code == 0
    old = hub.repo(DEMO_REPO_ID).head()
    old_target = model_dir(dest).resolve()
    reader = open(old_target / "config.json", "rb")  # noqa: SIM115 - a reader kept open across the swap
    files = [*demo_files(), HubFile("extra.txt", data=b"new revision\n")]
    new = hub.repo(DEMO_REPO_ID).add_commit(files)
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env=env)
    assert r.code == 0 and marker(dest).commit == old, "without --refresh the complete copy is used"
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), "--refresh", env=env)
    assert r.code == 0, r.stderr
    assert marker(dest).commit == new != old
    assert model_dir(dest).resolve().name == new
    assert (model_dir(dest) / "extra.txt").read_bytes() == b"new revision\n"
    assert (old_target / "config.json").exists() and reader.read()
    reader.close()
    big = [r for r in hub.requests(kind="cdn")]
    assert len(big) == 1, "unchanged LFS content must not be fetched again"


def test_pinned_commit_and_conflicting_revision(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """ORG/NAME@<commit> skips the revision call; @rev that disagrees with --revision is a usage error."""
    commit = hub.repo(DEMO_REPO_ID).head()
    dest = tmp_path / "cache"
    r = run_preload("--model", f"{DEMO_REPO_ID}@{commit}", "--dest", str(dest), env={"HF_ENDPOINT": hub.url})
    assert r.code == 0, r.stderr
    assert hub.requests(kind="revision") == []
    r = run_preload("--model", f"{DEMO_REPO_ID}@v1", "--revision", "main", "--dest", str(dest))
    assert r.code == 2 and "--revision" in r.stderr


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--model", "not-a-repo", "--dest", "{dest}"], 2, "invalid model id"),
        (["--model", "a/b/c", "--dest", "{dest}"], 2, "invalid model id"),
        (["--model", "demo-org/tiny-model@bad..rev", "--dest", "{dest}"], 2, "invalid revision"),
        (["--model", "demo-org/tiny-model", "--dest", "{file}"], 2, "not a directory"),
        (["--model", "demo-org/tiny-model", "--dest", "{dest}", "--layout", "zip"], 2, "zip"),
        (["--model", "demo-org/missing", "--dest", "{dest}"], 3, "not found"),
        (["--model", "demo-org/tiny-model@nope", "--dest", "{dest}"], 3, "revision not found"),
        (["--model", "demo-org/tiny-model", "--dest", "{dest}", "--include", "*.none"], 2, "no files"),
        (["--model", "demo-org/tiny-model", "--dest", "{dest}", "--timeout", "soon"], 2, "invalid duration"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload, args: list[str], code: int, words: str
) -> None:
    """Invalid ids, revisions, destinations and unknown repos fail with their exit code and no model."""
    dest = tmp_path / "cache"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    argv = [a.format(dest=dest, file=a_file) for a in args]
    r = run_preload(*argv, env={"HF_ENDPOINT": hub.url})
    assert r.code == code, r.stderr
    assert words in r.stderr
    assert "Traceback" not in r.stderr
    assert not (dest / ".preload" / "markers").exists() or not any(
        (dest / ".preload" / "markers").rglob("*.json")
    )


def test_gated_repo_needs_a_token_with_access_and_never_logs_it(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload
) -> None:
    """Gated: no token -> exit 3 with the license hint; a granted token works and never shows up anywhere."""
    hub = hub_factory(
        [demo_repo(gated=True)], tokens=[TOKEN, "hf_other_token_x"], token_access={DEMO_REPO_ID: [TOKEN]}
    )
    dest = tmp_path / "cache"
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env={"HF_ENDPOINT": hub.url})
    assert r.code == 3 and "accept its license" in r.stderr
    r = run_preload(
        "--model",
        DEMO_REPO_ID,
        "--dest",
        str(dest),
        env={"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_other_token_x"},
    )
    assert r.code == 3 and "hf_other_token_x" not in r.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    r = run_preload(
        "--model",
        DEMO_REPO_ID,
        "--dest",
        str(dest),
        "--token-file",
        str(token_file),
        env={"HF_ENDPOINT": hub.url},
    )
    assert r.code == 0, r.stderr
    assert TOKEN not in r.stderr + r.stdout
    for path in dest.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert TOKEN.encode() not in path.read_bytes(), path
    cdn = hub.requests(kind="cdn")
    assert cdn and not any(rec.authorized for rec in cdn), "the token must not follow the redirect to the CDN"


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="resolve", status=503, times=3),
        Fault(kind="tree", status=502, times=2),
        Fault(kind="revision", status=429, headers={"Retry-After": "0"}, times=2),
        Fault(kind="cdn", status=429, headers={"RateLimit": '"resolvers";r=0;t=0'}, times=1),
        Fault(kind="cdn", reset_after=1000, times=2),
        Fault(kind="cdn", truncate_after=5000, times=1),
        Fault(kind="cdn", corrupt=True, times=1),
        Fault(kind="resolve", path="tokenizer.json", corrupt=True, times=1),
        Fault(kind="cdn", stall=3, stall_after=100, times=1),
    ],
    ids=[
        "503-burst",
        "502-tree",
        "429-retry-after",
        "429-ratelimit",
        "reset",
        "truncated",
        "corrupt-lfs",
        "corrupt-small",
        "stall",
    ],
)
def test_transient_hub_faults_are_recovered(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload, fault: Fault
) -> None:
    """5xx bursts, 429, resets, truncation, wrong bytes and stalls end in a verified model."""
    hub.add_fault(fault)
    dest = tmp_path / "cache"
    r = run_preload(
        "--model", DEMO_REPO_ID, "--dest", str(dest), "--read-timeout", "1s", env={"HF_ENDPOINT": hub.url}
    )
    assert r.code == 0, r.stderr
    assert hub.pending_faults() == []
    m = marker(dest)
    for f in demo_files():
        if f.path in {x.path for x in m.files}:
            assert (model_dir(dest) / f.path).read_bytes() == f.read(0, f.size)


def test_persistent_wrong_bytes_fail_naming_the_file(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """Always-wrong bytes end in an integrity error naming the file; nothing is published."""
    hub.add_fault(Fault(kind="cdn", corrupt=True, times=None))
    dest = tmp_path / "cache"
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env={"HF_ENDPOINT": hub.url})
    assert r.code == 4, r.stderr
    assert "model.safetensors" in r.event("failed")["error"]
    assert not model_dir(dest).exists()
    assert not (dest / ".preload" / "markers" / "dir" / "demo-org" / "tiny-model.json").exists()


def test_redirect_loop_and_endless_5xx_fail_within_bounds(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A redirect loop fails fast; endless 503s exhaust the bounded retries with the transient exit code."""
    dest = tmp_path / "cache"
    hub.add_fault(Fault(kind="resolve", redirect_loop=True, times=None))
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env={"HF_ENDPOINT": hub.url}, timeout=60)
    assert r.code == 1 and "redirect" in r.stderr
    hub.clear_faults()
    hub.add_fault(Fault(kind="tree", status=503, times=None))
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env={"HF_ENDPOINT": hub.url}, timeout=60)
    assert r.code == 6, r.stderr


HOSTILE = [
    [{"type": "file", "path": "../escape.txt", "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": "/etc/evil", "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": "a/../../x", "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": "a\\..\\x", "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": "nul\u0000x", "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": "dup", "size": 3, "oid": "a" * 40}] * 2,
    [{"type": "file", "path": "huge", "size": 1 << 62, "oid": "a" * 40}],
    [{"type": "file", "path": "neg", "size": -1, "oid": "a" * 40}],
    [{"type": "file", "path": "x", "size": 3, "oid": "not-a-hash"}],
    "this is not json",
    {"not": "a list"},
]


@pytest.mark.parametrize("listing", HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))])
def test_hostile_listing_is_rejected_and_nothing_escapes(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload, listing: object
) -> None:
    """Traversal, absolute, backslash, NUL, duplicate, absurd-size entries and bad JSON write nothing."""
    sandbox = tmp_path / "sandbox"
    dest = sandbox / "cache"
    dest.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")}
    body = listing if isinstance(listing, str) else json.dumps(listing)
    hub.add_fault(Fault(kind="tree", status=200, body=body, times=None))
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env={"HF_ENDPOINT": hub.url})
    assert r.code == 4, r.stderr
    assert "Traceback" not in r.stderr
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p.is_relative_to(dest) or p.is_relative_to(tmp_path / "hf-home") for p in created), created
    assert not any(p.is_file() and p.suffix != ".lock" for p in created if p.is_relative_to(dest))
    assert not Path("/etc/evil").exists()


def test_killed_preload_resumes_without_refetching(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload
) -> None:
    """kill -9 mid-transfer, rerun: the model completes and extra bytes stay under 5% of the model."""
    repo = big_repo(tmp_path, mib=96)
    size = sum(f.size for f in repo.files().values())
    # Paced so the kill lands mid-transfer and little sits in socket buffers (bytes the server
    # sent that never reached the process count as refetched too).
    hub = hub_factory([repo], cdn_rate_limit_bps=16 << 20)
    dest = tmp_path / "cache"
    args = ("--model", "big-org/big-model", "--dest", str(dest), "--max-workers", "2", "--chunk-size", "8MiB")
    proc = spawn_preload(tmp_path, *args, env={"HF_ENDPOINT": hub.url})
    deadline = time.monotonic() + 30
    while hub.bytes_served() < size * 2 // 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = hub.bytes_served()
    assert 0 < first < size, "the kill must land mid-transfer"
    assert not (dest / ".preload" / "markers" / "dir" / "big-org" / "big-model.json").exists()
    r = run_preload(*args, env={"HF_ENDPOINT": hub.url})
    assert r.code == 0, r.stderr
    total = hub.bytes_served()
    extra = total - size
    assert extra <= 0.05 * size, f"refetched {extra} extra bytes of {size}"
    blob = repo.files()["model.safetensors"]
    assert (model_dir(dest, "big-org/big-model") / "model.safetensors").stat().st_size == blob.size


def test_concurrent_preloaders_transfer_once(hub_factory: HubFactory, tmp_path: Path) -> None:
    """Several preload processes for one model: exactly one transfers, all exit 0."""
    repo = big_repo(tmp_path, mib=16)
    hub = hub_factory([repo], cdn_rate_limit_bps=16 << 20)
    dest = tmp_path / "cache"
    procs = [
        spawn_preload(
            tmp_path, "--model", "big-org/big-model", "--dest", str(dest), env={"HF_ENDPOINT": hub.url}
        )
        for _ in range(5)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, [e for _, e in results]
    blob = repo.files()["model.safetensors"]
    assert sum(r.bytes_sent for r in hub.requests(kind="cdn")) == blob.size
    assert len(hub.requests(kind="tree")) == 1


def test_disk_too_small_fails_before_writing(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A model larger than the free space fails with exit 5, both figures, and no data written."""
    with tmpfs(tmp_path / "small", "size=24m") as mnt:
        hub = hub_factory([big_repo(tmp_path, mib=32)])
        r = run_preload(
            "--model", "big-org/big-model", "--dest", str(mnt / "cache"), env={"HF_ENDPOINT": hub.url}
        )
        assert r.code == 5, r.stderr
        error = r.event("failed")["error"]
        assert "need" in error and "free" in error
        assert hub.requests(kind="cdn") == []
        used = sum(p.stat().st_size for p in mnt.rglob("*") if p.is_file())
        assert used < 1 << 20


def test_disk_filling_up_mid_transfer_is_clean_and_resumable(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload
) -> None:
    """Another writer fills the disk after the space check: exit 5, no marker; space freed -> resumes."""
    with tmpfs(tmp_path / "small", "size=140m") as mnt:
        blobs = []
        for name in ("a.safetensors", "b.safetensors"):
            blob = tmp_path / name
            blob.write_bytes(os.urandom(24 << 20))
            blobs.append(HubFile(name, source=blob))
        hub = hub_factory([HubRepo("big-org/two-shards", blobs)], cdn_rate_limit_bps=12 << 20)
        dest = mnt / "cache"
        # One connection: the second shard's space is claimed only after the first is done.
        args = ("--model", "big-org/two-shards", "--dest", str(dest), "--max-workers", "1")
        proc = spawn_preload(tmp_path, *args, env={"HF_ENDPOINT": hub.url})
        deadline = time.monotonic() + 30
        while hub.bytes_served() < 4 << 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        filler = mnt / "filler"
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=200"], capture_output=True, check=False
        )
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 5, err
        assert "b.safetensors" in err
        assert not (dest / ".preload" / "markers" / "dir" / "big-org" / "two-shards.json").exists()
        filler.unlink()
        hub.reset_log()
        r = run_preload(*args, env={"HF_ENDPOINT": hub.url})
        assert r.code == 0, r.stderr
        fetched = {rec.path for rec in hub.requests(kind="cdn")}
        assert len(fetched) == 1, "the completed first shard must not be fetched again"
        for f in blobs:
            assert (dest / "big-org" / "two-shards" / f.path).stat().st_size == 24 << 20


def test_long_transfer_logs_progress_lines(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A slow transfer logs progress (bytes, percent, MB/s, ETA) at the configured interval."""
    hub = hub_factory([big_repo(tmp_path, mib=8)], cdn_rate_limit_bps=8 << 20)
    r = run_preload(
        "--model",
        "big-org/big-model",
        "--dest",
        str(tmp_path / "c"),
        "--progress-interval",
        "0.2s",
        env={"HF_ENDPOINT": hub.url},
    )
    assert r.code == 0, r.stderr
    lines = [e for e in r.events() if e["event"] == "progress"]
    assert len(lines) >= 2
    assert {"bytes_done", "bytes_total", "percent", "mb_per_s", "eta_s"} <= set(lines[-1])
    assert lines[-1]["bytes_total"] == 8 * (1 << 20) + len(b'{"model_type": "bert"}')


def test_read_only_destination_is_a_usage_error(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A destination on a read-only filesystem fails with exit 2 and a clear line, even as root."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        r = run_preload("--model", DEMO_REPO_ID, "--dest", str(mnt / "cache"), env={"HF_ENDPOINT": hub.url})
        assert r.code == 2, r.stderr
        assert "not writable" in r.event("failed")["error"]
        assert hub.requests() == []


def test_capped_streams_get_more_connections_and_each_byte_once(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A CDN capping each connection: the file is split into more ranged streams; nothing is fetched twice."""
    repo = big_repo(tmp_path, mib=64)
    hub = hub_factory([repo], cdn_rate_limit_bps=8 << 20)
    dest = tmp_path / "cache"
    args = ("--model", "big-org/big-model", "--dest", str(dest), "--max-workers", "8", "--chunk-size", "8MiB")
    r = run_preload(*args, env={"HF_ENDPOINT": hub.url})
    assert r.code == 0, r.stderr
    blob = repo.files()["model.safetensors"]
    gets = hub.requests(kind="cdn", method="GET", path=blob.sha256)
    edges = sorted([(rec.started, 1) for rec in gets] + [(rec.finished, -1) for rec in gets])
    concurrent = max(itertools.accumulate(step for _, step in edges))
    assert concurrent >= 3, f"one 8 MiB/s stream would take 8 s; at most {concurrent} ran at once"
    assert sum(rec.bytes_sent for rec in gets) == blob.size
    starts = sorted(int((rec.range or "bytes=0-").removeprefix("bytes=").split("-")[0]) for rec in gets)
    assert starts[0] == 0 and len(set(starts)) == len(starts)
