"""The bucket source against a real S3 server (SeaweedFS on loopback), run as real `preload` processes."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from agent.devhub import HubFile, HubRepo, HubServer
from agent.integrity import SHA256, Digest
from agent.manifest import Manifest
from agent.sources.kinds import content_id
from tests.conftest import RunPreload, spawn_preload
from tests.hubfixtures import HubFactory
from tests.s3fixtures import BUCKET, FaultProxy, SeaweedS3, upload_tree

REPO = "s3-org/sharded"
SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
BAD = SHARDS[1]
URL = f"s3://{BUCKET}/prod"


def shard_repo(shard_size: int = 1 << 20) -> HubRepo:
    """Three LFS shards plus small git files."""
    files = [HubFile(name, data=os.urandom(shard_size)) for name in SHARDS]
    files += [HubFile("config.json", data=b'{"model_type": "llama"}'), HubFile("tokenizer.json", data=b"{}")]
    return HubRepo(REPO, files)


@pytest.fixture
def shard_hub(hub_factory: HubFactory) -> HubServer:
    """A test hub serving the sharded repo."""
    return hub_factory([shard_repo()])


def marker(dest: Path, layout: str = "dir") -> Manifest:
    """The completion marker's manifest."""
    return Manifest.from_json((dest / ".preload/markers" / layout / f"{REPO}.json").read_text())


def hub_bytes_fetched(hub: HubServer) -> int:
    """Requests for file bytes (resolve or CDN) the hub served since its log was reset."""
    return sum(1 for r in hub.requests() if r.method == "GET" and r.kind in ("resolve", "cdn"))


def seed_plain(run_preload: RunPreload, hub: HubServer, s3: SeaweedS3, tmp_path: Path, **kw: bool) -> Path:
    """Preload REPO from the hub into tmp_path/seed and upload its plain files to PREFIX/ORG/NAME/."""
    seed = tmp_path / "seed"
    r = run_preload("--model", REPO, "--dest", str(seed), "--endpoint", hub.url)
    assert r.code == 0, r.stderr
    upload_tree(s3.client(), seed / REPO, f"prod/{REPO}", **kw)
    return seed


def same_files(a: Path, b: Path) -> bool:
    """Both model folders hold the same files with the same bytes."""

    def digests(root: Path) -> dict[str, str]:
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*")
            if p.is_file()
        }

    return digests(a) == digests(b) and bool(digests(a))


def test_plain_bucket_with_hub_uses_hub_hashes(
    shard_hub: HubServer, s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """Plain objects in PREFIX/ORG/NAME/, hf also a source: hashes from the hub, bytes from the bucket."""
    seed = seed_plain(run_preload, shard_hub, s3, tmp_path)
    shard_hub.reset_log()
    dest = tmp_path / "dest"
    r = run_preload(
        "--model", REPO, "--dest", str(dest), "--source", URL, "--source", "hf", "--endpoint", shard_hub.url
    )
    assert r.code == 0, r.stderr
    m = marker(dest)
    assert (m.source, m.hash_origin) == (URL, "hub-listing")
    assert m.commit == marker(seed).commit
    assert hub_bytes_fetched(shard_hub) == 0
    assert same_files(seed / REPO, dest / REPO)
    assert s3.admin.secret_key not in r.stderr


def test_plain_bucket_alone_is_source_computed(
    s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """Without a hub, objects with a stored sha256 use it, the others are read and hashed: source-computed."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(3 << 20))
    (src / "sub" / "b.json").write_bytes(b'{"b": 1}')
    client = s3.client()
    client.put_object(
        Bucket=BUCKET, Key=f"prod/{REPO}/a.bin", Body=(src / "a.bin").read_bytes(), ChecksumAlgorithm="SHA256"
    )
    client.put_object(
        Bucket=BUCKET, Key=f"prod/{REPO}/sub/b.json", Body=(src / "sub" / "b.json").read_bytes()
    )
    client.put_object(Bucket=BUCKET, Key=f"prod/{REPO}/.git/config", Body=b"tool metadata")
    dest = tmp_path / "dest"
    r = run_preload("--model", REPO, "--dest", str(dest), "--source", URL)
    assert r.code == 0, r.stderr
    m = marker(dest)
    assert m.hash_origin == "source-computed" and m.commit.startswith("local-")
    assert {f.path for f in m.files} == {"a.bin", "sub/b.json"}
    ev = r.event("hashes_source_computed")
    assert (ev["from_checksums"], ev["hashed_during_copy"]) == (1, 1)
    assert same_files(src, dest / REPO)


@pytest.mark.parametrize("layout", ["dir", "hf-cache"])
def test_source_computed_objects_are_read_once(
    s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload, layout: str
) -> None:
    """Objects with no expected hash are hashed during the copy: the server sends each byte once,
    the manifest holds their real sha256 under the content id a second copy agrees on."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    blobs = {
        "w1.bin": os.urandom(9 << 20),
        "w2.bin": os.urandom(5 << 20),
        "sub/c.json": b'{"c": 3}',
        "e": b"",
    }
    blobs["copy.bin"] = blobs["w2.bin"]  # the same bytes under two names: placed once, linked
    for rel, data in blobs.items():
        (src / rel).write_bytes(data)
    upload_tree(s3.client(), src, f"prod/{REPO}")
    dests = [tmp_path / "dest", tmp_path / "again"]
    with FaultProxy(s3.port) as proxy:
        for dest in dests:
            args = ("--model", REPO, "--dest", str(dest), "--source", URL, "--layout", layout)
            r = run_preload(
                *args, "--max-workers", "8", "--chunk-size", "2MiB", env=s3.env(endpoint=proxy.endpoint)
            )
            assert r.code == 0, r.stderr
        sent = proxy.faults.sent_bytes()
    ev = r.event("hashes_source_computed")
    assert (ev["from_checksums"], ev["hashed_during_copy"]) == (0, len(blobs))
    for rel, data in blobs.items():
        assert sent.get(f"/{BUCKET}/prod/{REPO}/{rel}", 0) == len(data) * len(dests), rel
    m, again = (marker(d, layout) for d in dests)
    assert m.hash_origin == "source-computed" and m.commit.startswith("local-")
    assert {f.path: f.digest for f in m.files} == {
        rel: Digest(SHA256, hashlib.sha256(data).hexdigest()) for rel, data in blobs.items()
    }
    assert m.commit == again.commit == content_id(m.files)
    model = (
        dests[0] / REPO
        if layout == "dir"
        else dests[0] / f"models--{REPO.replace('/', '--')}/snapshots/{m.commit}"
    )
    assert same_files(src, model)
    assert not (dests[0] / ".preload/staging").exists() or not any((dests[0] / ".preload/staging").rglob("*"))


def test_missing_prefix_falls_back_to_hub(
    shard_hub: HubServer, s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A model absent from the bucket is fetched from the next source; alone, it is exit 3."""
    dest = tmp_path / "dest"
    r = run_preload(
        "--model", REPO, "--dest", str(dest), "--source", URL, "--source", "hf", "--endpoint", shard_hub.url
    )
    assert r.code == 0, r.stderr
    assert "is not in" in r.event("source_failed")["error"]
    assert marker(dest).source == "hf"
    alone = run_preload("--model", REPO, "--dest", str(tmp_path / "d2"), "--source", URL)
    assert alone.code == 3, alone.stderr
    assert not (tmp_path / "d2" / ".preload/markers").exists() or not any(
        (tmp_path / "d2" / ".preload/markers").rglob("*.json")
    )


def test_missing_bucket_is_exit_3_naming_it(s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload) -> None:
    """A bucket that does not exist, as the last source: exit 3 with the bucket named."""
    r = run_preload("--model", REPO, "--dest", str(tmp_path / "dest"), "--source", "s3://no-such-bucket/x")
    assert r.code == 3, r.stderr
    assert "no-such-bucket" in r.event("failed")["error"]


def test_corrupt_object_falls_back_to_hub(
    shard_hub: HubServer, s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """An object whose bytes fail the expected hash fails the bucket as a source: the hub serves it."""
    seed = seed_plain(run_preload, shard_hub, s3, tmp_path)
    data = bytearray((seed / REPO / BAD).read_bytes())
    data[len(data) // 2] ^= 0xFF
    s3.client().put_object(Bucket=BUCKET, Key=f"prod/{REPO}/{BAD}", Body=bytes(data))
    shard_hub.reset_log()
    dest = tmp_path / "dest"
    r = run_preload(
        "--model", REPO, "--dest", str(dest), "--source", URL, "--source", "hf", "--endpoint", shard_hub.url
    )
    assert r.code == 0, r.stderr
    assert "hash mismatch" in r.event("source_failed")["error"]
    assert marker(dest).source == "hf"
    assert same_files(seed / REPO, dest / REPO)
    assert 1 <= hub_bytes_fetched(shard_hub) < 5  # the bad shard, not the whole model


def test_bad_credentials_exit_3_and_no_secret_leaks(
    shard_hub: HubServer, s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A wrong secret key: exit 3 naming the bucket, the secret in no output."""
    seed_plain(run_preload, shard_hub, s3, tmp_path)
    env = {**s3.env(), "AWS_SECRET_ACCESS_KEY": "wrong-" + s3.admin.secret_key}
    r = run_preload("--model", REPO, "--dest", str(tmp_path / "dest"), "--source", URL, env=env)
    assert r.code == 3, r.stderr
    error = r.event("failed")["error"]
    assert BUCKET in error and "denied" in error
    assert s3.admin.secret_key not in r.stderr + r.stdout
    no_creds = {k: v for k, v in s3.env().items() if not k.startswith("AWS_SECRET")}
    no_creds["AWS_ACCESS_KEY_ID"] = ""
    r2 = run_preload("--model", REPO, "--dest", str(tmp_path / "d2"), "--source", URL, env=no_creds)
    assert r2.code == 3, r2.stderr
    assert "credentials" in r2.event("failed")["error"]


def test_hub_cache_in_bucket(
    shard_hub: HubServer, s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A hub cache copied into a bucket (symlinks as copies, as aws s3 sync does): hashes from blob names."""
    cache = tmp_path / "cache"
    r = run_preload(
        "--model", REPO, "--dest", str(cache), "--endpoint", shard_hub.url, "--layout", "hf-cache"
    )
    assert r.code == 0, r.stderr
    repo_dir = f"models--{REPO.replace('/', '--')}"
    for sub in ("blobs", "snapshots", "refs"):
        upload_tree(s3.client(), cache / repo_dir / sub, f"prod/{repo_dir}/{sub}")
    dest = tmp_path / "dest"
    r = run_preload("--model", REPO, "--dest", str(dest), "--source", URL)
    assert r.code == 0, r.stderr
    m = marker(dest)
    assert m.hash_origin == "hub-cache"
    assert m.commit == marker(cache, "hf-cache").commit
    assert same_files(cache / repo_dir / "snapshots" / m.commit, dest / REPO)


@pytest.mark.parametrize("hostile", ["../../../evil", "/tmp/evil", "a/./evil", "a/../../evil"])
def test_hostile_keys_are_refused(
    s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload, hostile: str
) -> None:
    """Listed keys that would escape the model folder fail the source (exit 4); nothing lands outside DIR.

    SeaweedFS itself normalises such keys on upload, so the proxy rewrites the listing a hostile
    server would send."""
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key=f"prod/{REPO}/config.json", Body=b"{}")
    client.put_object(Bucket=BUCKET, Key=f"prod/{REPO}/evil", Body=b"x")
    dest = tmp_path / "dest"
    with FaultProxy(s3.port) as proxy:
        proxy.faults.rewrite = lambda body: body.replace(b"/evil</Key>", f"/{hostile}</Key>".encode())
        r = run_preload(
            "--model", REPO, "--dest", str(dest), "--source", URL, env=s3.env(endpoint=proxy.endpoint)
        )
    assert r.code == 4, r.stderr
    assert "unsafe" in r.event("failed")["error"]
    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))
    assert not Path("/tmp/evil").exists()


def test_slowdown_503_is_retried(
    shard_hub: HubServer, s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """SlowDown (503) on listings and body reads is retried with backoff; the bucket still serves it."""
    seed = seed_plain(run_preload, shard_hub, s3, tmp_path)
    with FaultProxy(s3.port) as proxy:
        proxy.faults.fail, proxy.faults.retry_after = 6, "0"
        dest = tmp_path / "dest"
        r = run_preload(
            "--model", REPO, "--dest", str(dest), "--source", URL, env=s3.env(endpoint=proxy.endpoint)
        )
        assert r.code == 0, r.stderr
        assert proxy.faults.failed == 6
    retries = [e for e in r.events() if e.get("event") == "retry"]
    assert retries and all("503" in e["cause"] for e in retries)
    assert marker(dest).source == URL
    assert same_files(seed / REPO, dest / REPO)


@pytest.mark.parametrize("checksum", [True, False], ids=["stored-sha256", "hashed-during-copy"])
def test_kill9_mid_copy_resumes(
    s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload, checksum: bool
) -> None:
    """kill -9 during a slow bucket copy; the rerun resumes from the journal and fetches far less
    than all, whether the hash was stored with the object or is computed during the copy."""
    big = tmp_path / "src"
    big.mkdir()
    (big / "weights.safetensors").write_bytes(os.urandom(24 << 20))
    (big / "config.json").write_bytes(b"{}")
    upload_tree(s3.client(), big, f"prod/{REPO}", checksum=checksum)
    dest = tmp_path / "dest"
    args = (
        "--model",
        REPO,
        "--dest",
        str(dest),
        "--source",
        URL,
        "--max-workers",
        "1",
        "--chunk-size",
        "64MiB",
    )
    with FaultProxy(s3.port) as proxy:
        proxy.faults.body_delay = 0.01  # about 6 MiB/s
        proc = spawn_preload(tmp_path, *args, env=s3.env(endpoint=proxy.endpoint))
        try:
            staging = dest / ".preload/staging"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                journals = list(staging.rglob("*.journal")) if staging.exists() else []
                if journals and any(j.stat().st_size > 0 for j in journals):
                    break
                time.sleep(0.2)
            time.sleep(1.0)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.communicate(timeout=30)
    assert not (dest / ".preload/markers/dir" / f"{REPO}.json").exists()
    r = run_preload(*args)
    assert r.code == 0, r.stderr
    done = r.event("preload_complete")
    assert 0 < done["fetched_bytes"] < done["bytes"] - (1 << 20)
    assert same_files(big, dest / REPO)
    assert {f.path: f.digest.hex for f in marker(dest).files} == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in big.iterdir()
    }
