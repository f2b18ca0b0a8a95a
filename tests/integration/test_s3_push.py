"""`preload push` to a real S3 server (SeaweedFS on loopback), then preloads from the bucket."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from agent.devhub import HubFile, HubRepo, HubServer
from agent.manifest import Manifest
from tests.conftest import RunPreload, spawn_preload
from tests.hubfixtures import HubFactory
from tests.s3fixtures import BUCKET, FaultProxy, SeaweedS3

REPO = "push-org/model"
BIG = "model.safetensors"
URL = f"s3://{BUCKET}/seed"
MARKER_KEY = f"seed/.preload/markers/dir/{REPO}.json"


@pytest.fixture
def model_hub(hub_factory: HubFactory) -> HubServer:
    """A hub serving one 20 MiB shard (a multipart upload at 8 MiB parts) and small files."""
    files = [
        HubFile(BIG, data=os.urandom(20 << 20)),
        HubFile("config.json", data=b'{"model_type": "llama"}'),
        HubFile("sub/tokenizer.json", data=b"{}"),
    ]
    return hub_factory([HubRepo(REPO, files)])


def seeded(run_preload: RunPreload, hub: HubServer, dest: Path, *extra: str) -> Manifest:
    """Preload REPO from the hub into `dest`; its manifest."""
    r = run_preload("--model", REPO, "--dest", str(dest), "--endpoint", hub.url, *extra)
    assert r.code == 0, r.stderr
    layout = "hf-cache" if "hf-cache" in extra else "dir"
    return Manifest.from_json((dest / ".preload/markers" / layout / f"{REPO}.json").read_text())


def digests(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root`."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def keys(s3: SeaweedS3) -> set[str]:
    """Every key in the bucket."""
    return {o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def test_push_then_preload_elsewhere(
    model_hub: HubServer, s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """Push mirrors the store's names with the manifest; a preload from the bucket alone is byte-identical."""
    seed = tmp_path / "seed"
    m = seeded(run_preload, model_hub, seed)
    r = run_preload("push", "--model", REPO, "--dest", str(seed), "--to", URL)
    assert r.code == 0, r.stderr
    assert r.event("push_complete")["uploaded_files"] == 3
    version = f"seed/.preload/versions/{REPO}/{m.commit}"
    assert keys(s3) == {
        MARKER_KEY,
        f"{version}/{BIG}",
        f"{version}/config.json",
        f"{version}/sub/tokenizer.json",
    }
    head = s3.client().head_object(Bucket=BUCKET, Key=f"{version}/{BIG}")
    assert (
        head["Metadata"]["preload-digest"] == f"sha256:{next(f for f in m.files if f.path == BIG).digest.hex}"
    )
    dest = tmp_path / "node"
    r = run_preload("--model", REPO, "--dest", str(dest), "--source", URL)
    assert r.code == 0, r.stderr
    got = Manifest.from_json((dest / ".preload/markers/dir" / f"{REPO}.json").read_text())
    assert (got.source, got.hash_origin, got.commit) == (URL, "manifest", m.commit)
    assert got.files == m.files
    assert digests(dest / REPO) == digests(seed / REPO)


def test_push_again_uploads_only_what_differs(
    model_hub: HubServer, s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A second push sends nothing; after one object is deleted, only that one is sent again."""
    seed = tmp_path / "seed"
    m = seeded(run_preload, model_hub, seed)
    args = ("push", "--model", REPO, "--dest", str(seed), "--to", URL)
    assert run_preload(*args).code == 0
    again = run_preload(*args)
    assert again.code == 0, again.stderr
    assert (
        again.event("push_complete")["uploaded_files"],
        again.event("push_complete")["uploaded_bytes"],
    ) == (0, 0)
    s3.client().delete_object(Bucket=BUCKET, Key=f"seed/.preload/versions/{REPO}/{m.commit}/config.json")
    third = run_preload(*args)
    assert third.code == 0, third.stderr
    done = third.event("push_complete")
    assert (done["uploaded_files"], done["uploaded_bytes"]) == (1, len(b'{"model_type": "llama"}'))


def test_push_refuses_a_corrupt_copy(
    model_hub: HubServer, s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A cached file that rotted (same size) fails the push with exit 4; no manifest reaches the bucket."""
    seed = tmp_path / "seed"
    seeded(run_preload, model_hub, seed)
    path = (seed / REPO / BIG).resolve()
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    r = run_preload("push", "--model", REPO, "--dest", str(seed), "--to", URL)
    assert r.code == 4, r.stderr
    assert "corrupt" in r.event("failed")["error"]
    assert MARKER_KEY not in keys(s3)
    assert not s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_push_of_a_model_not_ready_is_exit_8(s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload) -> None:
    """Nothing to push: exit 8, the bucket untouched."""
    (tmp_path / "empty").mkdir()
    r = run_preload("push", "--model", REPO, "--dest", str(tmp_path / "empty"), "--to", URL)
    assert r.code == 8, r.stderr
    assert keys(s3) == set()


def test_half_push_is_never_complete(
    model_hub: HubServer, s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """The manifest write failing (after every file went up) leaves a bucket no reader takes for complete."""
    seed = tmp_path / "seed"
    seeded(run_preload, model_hub, seed)
    with FaultProxy(s3.port) as proxy:
        proxy.faults.fail, proxy.faults.status, proxy.faults.code = 1000, 500, "InternalError"
        proxy.faults.match = lambda method, path: method == "PUT" and "/markers/" in path
        env = s3.env(endpoint=proxy.endpoint)
        r = run_preload("push", "--model", REPO, "--dest", str(seed), "--to", URL, env=env)
    assert r.code == 6, r.stderr
    assert MARKER_KEY not in keys(s3) and len(keys(s3)) == 3
    dest = tmp_path / "node"
    r = run_preload("--model", REPO, "--dest", str(dest), "--source", URL)
    assert r.code == 3, r.stderr
    assert not (dest / ".preload/markers/dir" / f"{REPO}.json").exists()


def test_push_with_read_only_credentials_is_exit_3(
    model_hub: HubServer, s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """An identity that may only read: access denied, exit 3, the bucket named."""
    seed = tmp_path / "seed"
    seeded(run_preload, model_hub, seed)
    r = run_preload("push", "--model", REPO, "--dest", str(seed), "--to", URL, env=s3.env(s3.reader))
    assert r.code == 3, r.stderr
    assert BUCKET in r.event("failed")["error"] and "denied" in r.event("failed")["error"]
    assert s3.reader.secret_key not in r.stderr


def test_hf_cache_push_and_preload(
    model_hub: HubServer, s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """hf-cache pushes its blobs and manifest; a node preloads it from the bucket in either layout."""
    seed = tmp_path / "seed"
    m = seeded(run_preload, model_hub, seed, "--layout", "hf-cache")
    r = run_preload("push", "--model", REPO, "--dest", str(seed), "--to", URL, "--layout", "hf-cache")
    assert r.code == 0, r.stderr
    assert any(k.startswith(f"seed/models--{REPO.replace('/', '--')}/blobs/") for k in keys(s3))
    for layout in ("hf-cache", "dir"):
        dest = tmp_path / f"node-{layout}"
        r = run_preload("--model", REPO, "--dest", str(dest), "--source", URL, "--layout", layout)
        assert r.code == 0, r.stderr
        got = Manifest.from_json((dest / ".preload/markers" / layout / f"{REPO}.json").read_text())
        assert (got.hash_origin, got.commit, got.files) == ("manifest", m.commit, m.files)


def test_kill9_mid_push_resumes_the_multipart_upload(
    model_hub: HubServer, s3: SeaweedS3, tmp_path: Path, run_preload: RunPreload
) -> None:
    """kill -9 while parts go up; the next push finds the pending upload (ListParts), checks each
    part's size and sha256 against the bytes read now and sends only the parts that are missing."""
    seed = tmp_path / "seed"
    seeded(run_preload, model_hub, seed)
    args = (
        "push",
        "--model",
        REPO,
        "--dest",
        str(seed),
        "--to",
        URL,
        "--part-size",
        "5MiB",
        "--max-workers",
        "1",
    )
    parts = 4  # 20 MiB in 5 MiB parts

    def part_puts(seen: list[tuple[str, str, int]]) -> int:
        return sum(
            1 for method, path, status in seen if method == "PUT" and "partNumber=" in path and status == 200
        )

    with FaultProxy(s3.port) as proxy:
        proxy.faults.request_delay = 0.5
        proxy.faults.slow = lambda method, path: method == "PUT" and "partNumber=" in path
        proc = spawn_preload(tmp_path, *args, env=s3.env(endpoint=proxy.endpoint))
        try:
            deadline = time.monotonic() + 60
            while part_puts(proxy.faults.seen) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.communicate(timeout=30)
        sent_before = part_puts(proxy.faults.seen)
    assert 2 <= sent_before < parts
    assert MARKER_KEY not in keys(s3)
    assert s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    with FaultProxy(s3.port) as proxy:
        r = run_preload(*args, env=s3.env(endpoint=proxy.endpoint))
        assert r.code == 0, r.stderr
        sent_after = part_puts(proxy.faults.seen)
    done = r.event("push_complete")
    assert done["resumed_parts"] >= sent_before and sent_after == parts - done["resumed_parts"]
    assert sent_after * (5 << 20) <= done["uploaded_bytes"] <= sent_after * (5 << 20) + 1024
    assert not s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    dest = tmp_path / "node"
    r = run_preload("--model", REPO, "--dest", str(dest), "--source", URL)
    assert r.code == 0, r.stderr
    assert digests(dest / REPO) == digests(seed / REPO)
