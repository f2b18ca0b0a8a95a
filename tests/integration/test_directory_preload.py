"""Directory sources, fallback, verify and status, run as real `preload` processes against the test hub."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.devhub import HubFile, HubRepo, HubServer
from agent.manifest import Manifest
from tests.conftest import Run, RunPreload, base_env, spawn_preload
from tests.hubfixtures import HubFactory

REPO = "shard-org/sharded"
SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
BAD = SHARDS[1]


def shard_repo() -> HubRepo:
    """Three 1 MiB LFS shards plus small git files."""
    files = [HubFile(name, data=os.urandom(1 << 20)) for name in SHARDS]
    files += [
        HubFile("config.json", data=b'{"model_type": "llama"}'),
        HubFile("tokenizer.json", data=b'{"version": "1.0"}'),
    ]
    return HubRepo(REPO, files)


@pytest.fixture
def shard_hub(hub_factory: HubFactory) -> HubServer:
    """A test hub serving the sharded repo."""
    return hub_factory([shard_repo()])


def marker(dest: Path, layout: str = "dir") -> Manifest:
    """The completion marker's manifest."""
    return Manifest.from_json((dest / ".preload/markers" / layout / f"{REPO}.json").read_text())


def fetched_paths(hub: HubServer) -> set[str]:
    """Repo files whose bytes the hub (resolve) or its CDN sent since the log was reset."""
    out = set()
    for r in hub.requests():
        if r.method == "GET" and r.kind == "resolve":
            out.add(r.path.rsplit("/", 1)[-1])
        elif r.method == "GET" and r.kind == "cdn":
            sha = r.path.rsplit("/", 1)[-1]
            out.update(f.path for f in hub.repo(REPO).files().values() if f.sha256 == sha)
    return out


def seed(run_preload: RunPreload, hub: HubServer, dest: Path, *extra: str) -> None:
    """Preload the sharded repo from the hub into `dest`."""
    r = run_preload("--model", REPO, "--dest", str(dest), "--endpoint", hub.url, *extra)
    assert r.code == 0, r.stderr


def plain_copy(seeded: Path, root: Path) -> Path:
    """ROOT/ORG/NAME holding the plain files of a seeded model (no marker)."""
    shutil.copytree(seeded / REPO, root / REPO, symlinks=False)
    return root


def flip_byte(path: Path, keep_mtime: bool = False) -> None:
    """Invert one byte in the middle of a file, in place."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def tree_state(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Mode, size, mtime and content hash of everything under `root` (symlinks not followed)."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
        )
        state[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return state


def hybrid(run_preload: RunPreload, hub: HubServer, src: Path, dest: Path) -> Run:
    """Preload REPO into `dest` from the directory `src`, with the hub as the fallback source."""
    return run_preload(
        "--model", REPO, "--dest", str(dest), "--source", str(src), "--source", "hf", "--endpoint", hub.url
    )


def verify_json(run_preload: RunPreload, dest: Path, *extra: str) -> tuple[int, dict[str, object]]:
    """Run `preload verify --json` and parse its report."""
    r = run_preload("verify", "--model", REPO, "--dest", str(dest), "--json", *extra)
    return r.code, json.loads(r.stdout)


def test_missing_in_directory_falls_back_to_hub(
    shard_hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A model absent from the directory source is fetched from the next source, the hub."""
    empty = tmp_path / "nfs"
    empty.mkdir()
    dest = tmp_path / "dest"
    r = hybrid(run_preload, shard_hub, empty, dest)
    assert r.code == 0, r.stderr
    assert "not in" in r.event("source_failed")["error"]
    assert marker(dest).source == "hf"
    assert fetched_paths(shard_hub) == {*SHARDS, "config.json", "tokenizer.json"}


def test_directory_only_and_missing_is_not_found(tmp_path: Path, run_preload: RunPreload) -> None:
    """With only a directory source and no model there, the exit code is NOT_FOUND (3)."""
    (tmp_path / "nfs").mkdir()
    r = run_preload("--model", REPO, "--dest", str(tmp_path / "dest"), "--source", str(tmp_path / "nfs"))
    assert r.code == 3, r.stderr
    assert not (tmp_path / "dest" / ".preload/markers/dir" / f"{REPO}.json").exists()


def test_corrupt_source_file_is_refetched_from_hub_alone(
    shard_hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A plain-directory file failing the hub listing's hash is fetched from the hub; the rest is copied."""
    seed(run_preload, shard_hub, tmp_path / "seed")
    src = plain_copy(tmp_path / "seed", tmp_path / "nfs")
    flip_byte(src / REPO / BAD)
    shard_hub.reset_log()
    dest = tmp_path / "dest"
    r = hybrid(run_preload, shard_hub, src, dest)
    assert r.code == 0, r.stderr
    assert "mismatch" in r.event("source_failed")["error"]
    assert fetched_paths(shard_hub) == {BAD}
    assert (dest / REPO / BAD).read_bytes() == shard_hub.repo(REPO).files()[BAD].data


def test_plain_directory_uses_hub_listing_when_hub_is_a_source(
    shard_hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A plain directory is checked against the hub's tree listing, without fetching any file bytes."""
    seed(run_preload, shard_hub, tmp_path / "seed")
    src = plain_copy(tmp_path / "seed", tmp_path / "nfs")
    shard_hub.reset_log()
    dest = tmp_path / "dest"
    r = hybrid(run_preload, shard_hub, src, dest)
    assert r.code == 0, r.stderr
    m = marker(dest)
    assert (m.hash_origin, m.commit) == ("hub-listing", shard_hub.repo(REPO).commit)
    assert fetched_paths(shard_hub) == set()


def test_real_hub_cache_is_a_source(
    shard_hub: HubServer,
    tmp_path: Path,
    run_preload: RunPreload,
    hf_client: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cache written by huggingface_hub itself is read offline, hashes from its blob names."""
    from huggingface_hub import snapshot_download

    snapshot_download(REPO, cache_dir=str(hf_client), endpoint=shard_hub.url)
    shard_hub.reset_log()
    dest = tmp_path / "dest"
    r = run_preload(
        "--model", REPO, "--dest", str(dest), "--source", str(hf_client), "--endpoint", shard_hub.url
    )
    assert r.code == 0, r.stderr
    m = marker(dest)
    assert (m.hash_origin, m.commit) == ("hub-cache", shard_hub.repo(REPO).commit)
    assert shard_hub.requests() == []


def test_source_is_never_modified(shard_hub: HubServer, tmp_path: Path, run_preload: RunPreload) -> None:
    """Copying from a read-only preload-written source leaves every mode, size, mtime and byte as it was."""
    src = tmp_path / "nfs"
    seed(run_preload, shard_hub, src)
    subprocess.run(["chmod", "-R", "a-w", str(src)], check=True)
    before = tree_state(src)
    shard_hub.reset_log()
    for layout in ("dir", "hf-cache"):
        r = run_preload(
            "--model", REPO, "--dest", str(tmp_path / layout), "--layout", layout,
            "--source", str(src), "--endpoint", shard_hub.url,
        )  # fmt: skip
        assert r.code == 0, r.stderr
        assert marker(tmp_path / layout, layout).hash_origin == "manifest"
    assert tree_state(src) == before
    assert shard_hub.requests() == []


def test_unreadable_source_file_is_a_clear_error(
    shard_hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A file the process may not read fails the directory source with a clear line; the hub then serves."""
    seed(run_preload, shard_hub, tmp_path / "seed")
    src = plain_copy(tmp_path / "seed", tmp_path / "nfs")
    (src / REPO / BAD).chmod(0)
    # Tests run as root, which reads anything: drop the capabilities that let it.
    setpriv = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*setpriv, sys.executable, "-m", "agent", "--model", REPO, "--endpoint", shard_hub.url, *args],
            env=base_env(tmp_path), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    alone = run("--dest", str(tmp_path / "a"), "--source", str(src))
    assert alone.returncode == 1, alone.stderr
    assert f"source file '{BAD}' is not readable" in alone.stderr
    with_hub = run("--dest", str(tmp_path / "b"), "--source", str(src), "--source", "hf")
    assert with_hub.returncode == 0, with_hub.stderr


@pytest.mark.usefixtures("prune_big_files")
def test_killed_copy_resumes_without_recopying(tmp_path: Path, run_preload: RunPreload) -> None:
    """kill -9 in the middle of a 1 GiB copy leaves no marker; the rerun copies only the rest."""
    size = 1 << 30
    commit = "c" * 40
    cache = tmp_path / "nfs" / f"models--{REPO.replace('/', '--')}"
    blob_tmp = tmp_path / "blob"
    h = hashlib.sha256()
    with open(blob_tmp, "wb") as f:
        f.truncate(size)  # sparse: mostly holes, a random MiB every 16 MiB
        for off in range(0, size, 16 << 20):
            data = os.urandom(1 << 20)
            f.seek(off)
            f.write(data)
    with open(blob_tmp, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    (cache / "blobs").mkdir(parents=True)
    blob = cache / "blobs" / h.hexdigest()
    blob_tmp.rename(blob)
    (cache / "snapshots" / commit).mkdir(parents=True)
    (cache / "snapshots" / commit / "model.safetensors").symlink_to(f"../../blobs/{blob.name}")
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(commit)
    dest = tmp_path / "dest"
    args = ("--model", REPO, "--dest", str(dest), "--source", str(tmp_path / "nfs"))
    proc = spawn_preload(tmp_path, *args)
    journal = dest / ".preload/staging" / REPO.replace("/", "--") / f"{blob.name}.part.journal"
    copied = 0
    deadline = time.monotonic() + 60
    while copied < (96 << 20) and time.monotonic() < deadline and proc.poll() is None:
        try:
            lines = journal.read_text().split("\n")
            copied = int(lines[-2].split()[1]) if len(lines) > 2 else 0
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.002)
    assert proc.poll() is None, "the copy finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (dest / ".preload/markers/dir" / f"{REPO}.json").exists()
    r = run_preload(*args)
    assert r.code == 0, r.stderr
    done = r.event("preload_complete")
    assert done["fetched_bytes"] <= size - copied
    assert marker(dest).files[0].digest.hex == blob.name


def test_verify_fast_deep_and_repair_touch_exactly_the_bad_shard(
    shard_hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """One flipped byte in one shard: verify names exactly that file and --repair refetches only it."""
    dest = tmp_path / "dest"
    seed(run_preload, shard_hub, dest)
    assert verify_json(run_preload, dest)[0] == 0
    path = dest / REPO / BAD
    flip_byte(path, keep_mtime=True)
    # Same size, same mtime: only re-hashing can tell.
    assert verify_json(run_preload, dest)[0] == 0
    code, report = verify_json(run_preload, dest, "--deep")
    assert code == 4
    assert (report["corrupt"], report["missing"], report["extra"]) == ([BAD], [], [])
    status = run_preload("status", "--dest", str(dest), "--json")
    assert json.loads(status.stdout)[0]["state"] == "corrupt"
    shard_hub.reset_log()
    code, report = verify_json(
        run_preload, dest, "--deep", "--repair", "--source", "hf", "--endpoint", shard_hub.url
    )
    assert code == 0, report
    assert report["repaired"] == [BAD]
    assert fetched_paths(shard_hub) == {BAD}
    assert verify_json(run_preload, dest, "--deep")[0] == 0
    assert marker(dest).revision == "main"


def test_verify_fast_rehashes_files_changed_after_publish(
    shard_hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A write after publish moves the mtime, so the fast check re-hashes that file and catches it."""
    dest = tmp_path / "dest"
    seed(run_preload, shard_hub, dest, "--layout", "hf-cache")
    blob = (dest / f"models--{REPO.replace('/', '--')}" / "snapshots").glob(f"*/{BAD}")
    time.sleep(1.1)
    flip_byte(next(blob).resolve())
    code, report = verify_json(run_preload, dest, "--layout", "hf-cache")
    assert code == 4
    assert report["corrupt"] == [BAD] and report["hashed_bytes"] == 1 << 20


def test_verify_reports_missing_and_extra_files(
    shard_hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A deleted file is missing (exit 8); a stray file is extra (exit 4); human output lists them."""
    dest = tmp_path / "dest"
    seed(run_preload, shard_hub, dest)
    (dest / REPO / SHARDS[0]).unlink()
    r = run_preload("verify", "--model", REPO, "--dest", str(dest))
    assert r.code == 8
    assert f"missing: {SHARDS[0]}" in r.stdout
    (dest / REPO / "stray.safetensors").write_bytes(b"x")
    code, report = verify_json(run_preload, dest)
    assert code == 4 and report["extra"] == ["stray.safetensors"]
    code, _ = verify_json(run_preload, dest, "--repair", "--endpoint", shard_hub.url)
    assert code == 0
    assert not (dest / REPO / "stray.safetensors").exists()


def test_verify_without_marker_is_not_ready(tmp_path: Path, run_preload: RunPreload) -> None:
    """No marker: exit 8 with the reason."""
    code, report = verify_json(run_preload, tmp_path)
    assert code == 8 and report["problem"] == "no valid completion marker"


def test_preload_refetches_only_missing_or_wrong_size_files(
    shard_hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A rerun on a model failing the fast check fetches just the missing and truncated files."""
    dest = tmp_path / "dest"
    seed(run_preload, shard_hub, dest)
    (dest / REPO / SHARDS[0]).unlink()
    os.truncate(dest / REPO / SHARDS[2], 1000)
    shard_hub.reset_log()
    seed(run_preload, shard_hub, dest)
    assert fetched_paths(shard_hub) == {SHARDS[0], SHARDS[2]}
    assert verify_json(run_preload, dest, "--deep")[0] == 0


def test_status_lists_every_model_and_state(
    shard_hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """status shows complete, unverified-source, corrupt and partial models across both layouts."""
    dest = tmp_path / "dest"
    seed(run_preload, shard_hub, dest)
    seed(run_preload, shard_hub, dest, "--layout", "hf-cache")
    plain = tmp_path / "plain"
    (plain / "local-org" / "mine").mkdir(parents=True)
    (plain / "local-org" / "mine" / "config.json").write_text("{}")
    r = run_preload("--model", "local-org/mine", "--dest", str(dest), "--source", str(plain))
    assert r.code == 0, r.stderr
    assert r.event("hashes_source_computed")
    (dest / ".preload/staging/half-org--done").mkdir(parents=True)
    (dest / REPO / SHARDS[0]).unlink()
    assert run_preload("verify", "--model", REPO, "--dest", str(dest), "--layout", "hf-cache").code == 0
    rows = json.loads(run_preload("status", "--dest", str(dest), "--json").stdout)
    states = {(row["repo"], row["layout"]): row["state"] for row in rows}
    assert states == {
        ("half-org/done", "-"): "partial",
        ("local-org/mine", "dir"): "unverified-source",
        (REPO, "dir"): "corrupt",
        (REPO, "hf-cache"): "complete",
    }
    verified = {(row["repo"], row["layout"]): row["verified_at"] for row in rows}
    assert verified[(REPO, "hf-cache")] is not None and verified[(REPO, "dir")] is None
    table = run_preload("status", "--dest", str(dest)).stdout
    assert table.splitlines()[0].split()[:3] == ["MODEL", "LAYOUT", "REVISION"]
    assert "unverified-source" in table and "partial" in table
