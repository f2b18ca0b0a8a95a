"""The test hub is faithful: the real huggingface_hub client works against it, faults are visible."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from agent.devhub import (
    DEFAULT_TOKEN,
    Fault,
    HubFile,
    HubRepo,
    HubServer,
    directory_repo,
    export_lfs_blobs,
    git_blob_sha1,
    parse_range,
)
from agent.devhub.demo_model import DEMO_REPO_ID, demo_repo
from tests.hubfixtures import HubFactory

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = f"/{DEMO_REPO_ID}/resolve/main/tokenizer.json"


def _resolve(hub: HubServer, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(f"{hub.url}/{DEMO_REPO_ID}/resolve/main/{path}", **kwargs)


def _content(path: str) -> bytes:
    return demo_repo().files()[path].data or b""


# -- the real client ----------------------------------------------------------------------------


def test_snapshot_download_matches_repo(hub: HubServer, hf_client: Path) -> None:
    """snapshot_download fetches every file byte for byte and writes a valid hub cache."""
    repo = hub.repo(DEMO_REPO_ID)
    folder = Path(snapshot_download(DEMO_REPO_ID, cache_dir=hf_client, endpoint=hub.url))
    assert folder.name == repo.commit
    for path, file in repo.files().items():
        assert (folder / path).read_bytes() == file.data
    refs = hf_client / "models--demo-org--tiny-model" / "refs" / "main"
    assert refs.read_text() == repo.commit
    blob = (folder / "model.safetensors").resolve()
    assert blob.name == repo.files()["model.safetensors"].sha256


def test_lfs_files_come_from_the_cdn_without_token(hub: HubServer, hf_client: Path) -> None:
    """LFS bytes flow through the CDN origin, and the client drops the token on the way there."""
    snapshot_download(DEMO_REPO_ID, cache_dir=hf_client, endpoint=hub.url, token=DEFAULT_TOKEN)
    weights = hub.repo(DEMO_REPO_ID).files()["model.safetensors"]
    cdn = hub.requests(kind="cdn", method="GET")
    assert {r.path.rsplit("/", 1)[-1] for r in cdn} >= {weights.sha256}
    assert not any(r.authorized for r in cdn)
    assert all(r.authorized for r in hub.requests(kind="resolve"))
    assert hub.bytes_served(weights.sha256) == weights.size
    assert hub.bytes_served("resolve/") < weights.size


def test_hf_hub_download_nested_file(hub: HubServer, hf_client: Path) -> None:
    """hf_hub_download fetches a file from a nested folder."""
    path = hf_hub_download(DEMO_REPO_ID, "1_Pooling/config.json", cache_dir=hf_client, endpoint=hub.url)
    assert json.loads(Path(path).read_text())["word_embedding_dimension"] == 64


def test_disk_files_stream_and_big_files_are_lfs(
    hub_factory: HubFactory, hf_client: Path, tmp_path: Path
) -> None:
    """Files served from disk download intact; a file over 10 MiB is LFS whatever its name."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    big = os.urandom(11 * 1024 * 1024)
    (src / "weights.dat").write_bytes(big)
    (src / "sub" / "notes.txt").write_text("hello\n")
    repo = directory_repo("org/disk", src)
    assert repo.files()["weights.dat"].is_lfs
    assert not repo.files()["sub/notes.txt"].is_lfs
    hub = hub_factory([repo])
    folder = Path(snapshot_download("org/disk", cache_dir=hf_client, endpoint=hub.url))
    assert (folder / "weights.dat").read_bytes() == big
    assert (folder / "sub" / "notes.txt").read_text() == "hello\n"


def test_new_commit_moves_main(hub: HubServer, hf_client: Path) -> None:
    """A new commit on main is what `main` resolves to; the old commit stays downloadable."""
    repo = hub.repo(DEMO_REPO_ID)
    old = repo.commit
    new = repo.add_commit([*repo.files(old).values(), HubFile("extra.txt", b"v2\n")])
    assert new != old and repo.head() == new
    folder = Path(snapshot_download(DEMO_REPO_ID, cache_dir=hf_client, endpoint=hub.url))
    assert folder.name == new and (folder / "extra.txt").read_bytes() == b"v2\n"
    old_folder = Path(snapshot_download(DEMO_REPO_ID, revision=old, cache_dir=hf_client, endpoint=hub.url))
    assert not (old_folder / "extra.txt").exists()


def test_commit_ids_are_deterministic() -> None:
    """The same content gives the same commit id; other content a different one."""
    assert demo_repo().commit == demo_repo().commit
    other = HubRepo(DEMO_REPO_ID, [HubFile("a.txt", b"a")])
    assert other.commit != demo_repo().commit and len(other.commit) == 40


# -- listings -----------------------------------------------------------------------------------


def test_revision_endpoint(hub: HubServer) -> None:
    """The revision endpoint resolves branches, tags with slashes and commits, with siblings."""
    repo = hub.repo(DEMO_REPO_ID)
    repo.set_ref("refs/pr/1", repo.commit)
    for rev in ("main", "refs%2Fpr%2F1", repo.commit):
        info = httpx.get(f"{hub.url}/api/models/{DEMO_REPO_ID}/revision/{rev}").json()
        assert info["id"] == DEMO_REPO_ID and info["sha"] == repo.commit
        assert {s["rfilename"] for s in info["siblings"]} == set(repo.files())
    api = HfApi(endpoint=hub.url, token=False)
    assert api.model_info(DEMO_REPO_ID, revision="refs/pr/1").sha == repo.commit


def test_tree_entries_are_hub_shaped(hub: HubServer) -> None:
    """Tree entries carry git blob ids, LFS sha256 and pointer sizes, and folder entries."""
    repo = hub.repo(DEMO_REPO_ID)
    url = f"{hub.url}/api/models/{DEMO_REPO_ID}/tree/main?recursive=true&expand=false"
    entries = {e["path"]: e for e in httpx.get(url).json()}
    assert entries["1_Pooling"]["type"] == "directory"
    config = entries["config.json"]
    data = _content("config.json")
    assert config == {"type": "file", "path": "config.json", "size": len(data), "oid": config["oid"]}
    sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
    assert config["oid"] == sha1
    weights = entries["model.safetensors"]
    raw = repo.files()["model.safetensors"].data or b""
    pointer = (
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{hashlib.sha256(raw).hexdigest()}\nsize {len(raw)}\n"
    ).encode()
    assert weights["lfs"] == {
        "oid": hashlib.sha256(raw).hexdigest(),
        "size": len(raw),
        "pointerSize": len(pointer),
    }
    assert weights["oid"] == git_blob_sha1(pointer) and weights["size"] == len(raw)


def test_tree_non_recursive_and_subfolder(hub: HubServer) -> None:
    """Without recursive the tree lists one level; a folder path lists that folder."""
    base = f"{hub.url}/api/models/{DEMO_REPO_ID}/tree/main"
    top = {e["path"] for e in httpx.get(base).json()}
    assert "1_Pooling" in top and "1_Pooling/config.json" not in top
    sub = [e["path"] for e in httpx.get(f"{base}/1_Pooling").json()]
    assert sub == ["1_Pooling/config.json"]
    missing = httpx.get(f"{base}/nope")
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"


def test_tree_pagination(hub_factory: HubFactory) -> None:
    """Small pages come with Link rel=next, and the real client follows them to the end."""
    hub = hub_factory(tree_page_size=3)
    first = httpx.get(f"{hub.url}/api/models/{DEMO_REPO_ID}/tree/main?recursive=true")
    assert len(first.json()) == 3 and "next" in first.links
    api = HfApi(endpoint=hub.url, token=False)
    paths = [e.path for e in api.list_repo_tree(DEMO_REPO_ID, recursive=True)]
    assert set(paths) >= set(hub.repo(DEMO_REPO_ID).files()) and len(paths) == len(set(paths))
    pages = hub.requests(kind="tree")
    assert len(pages) == 1 + -(-len(paths) // 3)
    assert all("cursor=" in r.query for r in pages[2:])


# -- ranges and the CDN -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-", (0, 99)),
        ("bytes=10-19", (10, 19)),
        ("bytes=90-500", (90, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=100-", "invalid"),
        ("bytes=20-10", "invalid"),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        (None, None),
    ],
)
def test_parse_range(header: str | None, expected: object) -> None:
    """Single byte ranges parse like RFC 9110 says; others are ignored."""
    assert parse_range(header, 100) == expected


def test_small_file_ranges(hub: HubServer) -> None:
    """The hub answers byte ranges on small files with 206, and 416 past the end."""
    data = _content("tokenizer.json")
    full = _resolve(hub, "tokenizer.json")
    assert full.status_code == 200 and full.content == data
    assert full.headers["ETag"] == f'"{git_blob_sha1(data)}"'
    assert full.headers["X-Repo-Commit"] == hub.repo(DEMO_REPO_ID).commit
    part = _resolve(hub, "tokenizer.json", headers={"Range": "bytes=100-"})
    assert part.status_code == 206 and part.content == data[100:]
    assert part.headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    past = _resolve(hub, "tokenizer.json", headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{len(data)}"


def test_lfs_redirect_is_cross_origin(hub: HubServer) -> None:
    """LFS files answer 302 to another origin with the linked etag and size."""
    file = hub.repo(DEMO_REPO_ID).files()["model.safetensors"]
    head = httpx.head(f"{hub.url}/{DEMO_REPO_ID}/resolve/main/model.safetensors")
    assert head.status_code == 302
    assert head.headers["X-Linked-Etag"] == f'"{file.sha256}"'
    assert head.headers["X-Linked-Size"] == str(file.size)
    assert head.headers["ETag"] == f'"{file.oid}"'
    location = head.headers["Location"]
    assert urlsplit(location).netloc != urlsplit(hub.url).netloc
    assert location.startswith(f"{hub.cdn_url}/{file.sha256}?")
    blob = httpx.get(location, headers={"Range": "bytes=1000-1999"})
    assert blob.status_code == 206 and blob.content == (file.data or b"")[1000:2000]
    assert httpx.get(location, headers={"Range": f"bytes={file.size}-"}).status_code == 416


def test_cdn_urls_are_signed_and_expire(hub_factory: HubFactory) -> None:
    """The CDN refuses unsigned and expired URLs, as signed CDN URLs do."""
    hub = hub_factory(cdn_url_ttl=-1)
    location = _resolve(hub, "model.safetensors").headers["Location"]
    assert httpx.get(location).status_code == 403
    assert httpx.get(location.split("?")[0]).status_code == 403


def test_external_cdn_url(hub_factory: HubFactory, hf_client: Path, tmp_path: Path) -> None:
    """With cdn_url the hub redirects LFS files to a plain blob server named by sha256."""
    repo = demo_repo()
    export_lfs_blobs(repo, tmp_path / "blobs")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "blobs"))
    blobs = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=blobs.serve_forever, daemon=True).start()
    try:
        hub = hub_factory([repo], cdn_url=f"http://127.0.0.1:{blobs.server_address[1]}")
        folder = Path(snapshot_download(DEMO_REPO_ID, cache_dir=hf_client, endpoint=hub.url))
        assert (folder / "model.safetensors").read_bytes() == repo.files()["model.safetensors"].data
        assert not hub.requests(kind="cdn")
    finally:
        blobs.shutdown()
        blobs.server_close()


# -- access and errors --------------------------------------------------------------------------


def test_gated_repo(hub_factory: HubFactory, hf_client: Path) -> None:
    """Gated: 401 without a token, 403 with an unapproved one, both GatedRepoError."""
    hub = hub_factory(
        [demo_repo(gated=True)],
        tokens={"hf_yes", "hf_no"},
        token_access={DEMO_REPO_ID: {"hf_yes"}},
    )
    fetch = functools.partial(hf_hub_download, DEMO_REPO_ID, "config.json", cache_dir=hf_client)
    snapshot = functools.partial(snapshot_download, DEMO_REPO_ID, cache_dir=hf_client)
    with pytest.raises(GatedRepoError) as anonymous:
        fetch(token=False, endpoint=hub.url)
    assert anonymous.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as refused:
        fetch(token="hf_no", endpoint=hub.url)
    assert refused.value.response.status_code == 403
    with pytest.raises(GatedRepoError):
        snapshot(token=False, endpoint=hub.url)
    folder = snapshot(token="hf_yes", endpoint=hub.url)
    assert (Path(folder) / "config.json").exists()


def test_private_repo_is_not_found(hub_factory: HubFactory) -> None:
    """Private repos look missing: 401 without a token, 404 with an unapproved one."""
    hub = hub_factory(
        [demo_repo(private=True)], tokens={"hf_yes", "hf_no"}, token_access={DEMO_REPO_ID: {"hf_yes"}}
    )
    for token, status in ((False, 401), ("hf_no", 404)):
        with pytest.raises(RepositoryNotFoundError) as err:
            HfApi(endpoint=hub.url, token=token).model_info(DEMO_REPO_ID)
        assert err.value.response.status_code == status
    assert HfApi(endpoint=hub.url, token="hf_yes").model_info(DEMO_REPO_ID).private is True


def test_invalid_token_is_401(hub: HubServer, hf_client: Path) -> None:
    """An unknown token gets 401 on any repo, which the client does not take for a missing repo."""
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.url, token="hf_bogus").model_info(DEMO_REPO_ID)
    assert err.value.response.status_code == 401
    assert not isinstance(err.value, RepositoryNotFoundError)
    assert all("hf_bogus" not in repr(r) for r in hub.requests())


def test_not_found_errors(hub: HubServer, hf_client: Path) -> None:
    """Missing repos, revisions and files map to the client's specific exceptions."""
    where: dict[str, Any] = {"cache_dir": hf_client, "endpoint": hub.url, "token": False}
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("demo-org/missing", **where)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(DEMO_REPO_ID, revision="v9", **where)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(DEMO_REPO_ID, "nope.json", **where)
    missing = _resolve(hub, "nope.json")
    assert missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == hub.repo(DEMO_REPO_ID).commit


# -- faults -------------------------------------------------------------------------------------


def test_fault_status_with_headers(hub: HubServer) -> None:
    """A status fault answers instead of the hub, with its headers, `times` times."""
    hub.add_fault(Fault(kind="resolve", status=503, headers={"Retry-After": "1"}, times=2))
    quota = {"RateLimit": '"resolvers";r=0;t=1'}
    hub.add_fault(Fault(kind="resolve", status=429, headers=quota))
    statuses = [_resolve(hub, "config.json") for _ in range(4)]
    assert [r.status_code for r in statuses] == [503, 503, 429, 200]
    assert statuses[0].headers["Retry-After"] == "1"
    assert statuses[2].headers["RateLimit"] == quota["RateLimit"]
    assert [r.fault for r in hub.requests()] == ["status=503", "status=503", "status=429", None]
    assert not hub.pending_faults()


def test_fault_matching_by_kind_path_and_method(hub: HubServer) -> None:
    """Faults match on kind and path substring; body faults skip HEAD unless asked for."""
    hub.add_fault(Fault(kind="tree", status=500))
    hub.add_fault(Fault(kind="resolve", path="config.json", status=500))
    assert _resolve(hub, "README.md").status_code == 200
    assert _resolve(hub, "config.json").status_code == 500
    hub.add_fault(Fault(kind="resolve", truncate_after=1))
    assert httpx.head(f"{hub.url}{TOKENIZER}").status_code == 200
    assert hub.pending_faults() == [Fault(kind="tree", status=500), Fault(kind="resolve", truncate_after=1)]
    hub.add_fault(Fault(kind="cdn", status=500, times=None))
    for _ in range(3):
        assert _resolve(hub, "model.safetensors", follow_redirects=True).status_code == 500


def test_fault_reset_after(hub: HubServer) -> None:
    """reset_after sends headers and N bytes, then resets the connection."""
    hub.add_fault(Fault(kind="resolve", reset_after=100))
    with pytest.raises(httpx.ReadError):
        httpx.get(f"{hub.url}{TOKENIZER}")
    assert hub.requests()[-1].bytes_sent == 100


def test_fault_truncate_after(hub: HubServer) -> None:
    """truncate_after declares the full length but closes cleanly after N bytes."""
    hub.add_fault(Fault(kind="resolve", truncate_after=100))
    with pytest.raises(httpx.RemoteProtocolError, match="received 100 bytes"):
        httpx.get(f"{hub.url}{TOKENIZER}")


def test_fault_stall_triggers_read_timeout(hub: HubServer) -> None:
    """A stall after some bytes makes a client with a short read timeout give up."""
    hub.add_fault(Fault(kind="resolve", stall=5, stall_after=10))
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{hub.url}{TOKENIZER}", timeout=0.5)
    assert time.monotonic() - started < 3


def test_fault_stall_before_headers(hub: HubServer) -> None:
    """A stall on a reply without a body holds back the headers (a slow metadata call)."""
    hub.add_fault(Fault(kind="resolve", method="HEAD", stall=5))
    with pytest.raises(httpx.ReadTimeout):
        httpx.head(f"{hub.url}{TOKENIZER}", timeout=0.5)


def test_bytes_served_counts_requests_in_flight(hub: HubServer) -> None:
    """bytes_served grows while a slow body is still being sent."""
    weights = hub.repo(DEMO_REPO_ID).files()["model.safetensors"]
    hub.add_fault(Fault(kind="cdn", trickle_bps=1_000_000))
    client = threading.Thread(
        target=_resolve, args=(hub, "model.safetensors"), kwargs={"follow_redirects": True}
    )
    client.start()
    deadline = time.monotonic() + 5
    while hub.bytes_served(weights.sha256) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0 < hub.bytes_served(weights.sha256) < weights.size
    assert not hub.requests(kind="cdn")
    client.join()
    assert hub.bytes_served(weights.sha256) == weights.size


def test_stop_wakes_stalled_requests(hub_factory: HubFactory) -> None:
    """Stopping the hub does not wait for stalled requests to finish their sleep."""
    hub = hub_factory()
    hub.add_fault(Fault(kind="resolve", stall=60))

    def fetch() -> None:
        # Whether the body completes or the cut connection errors does not matter here.
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{hub.url}{TOKENIZER}", timeout=30)

    client = threading.Thread(target=fetch)
    client.start()
    time.sleep(0.3)
    started = time.monotonic()
    hub.stop()
    client.join(5)
    assert time.monotonic() - started < 3 and not client.is_alive()


def test_fault_trickle(hub: HubServer) -> None:
    """trickle_bps paces the body: 3 KB at 10 KB/s takes about 0.3 s."""
    hub.add_fault(Fault(kind="resolve", trickle_bps=10_000))
    started = time.monotonic()
    assert httpx.get(f"{hub.url}{TOKENIZER}").content == _content("tokenizer.json")
    assert time.monotonic() - started >= 0.25


def test_cdn_rate_limit(hub_factory: HubFactory) -> None:
    """cdn_rate_limit_bps caps each CDN connection."""
    hub = hub_factory(cdn_rate_limit_bps=1_000_000)
    started = time.monotonic()
    body = _resolve(hub, "model.safetensors", follow_redirects=True).content
    assert len(body) == len(_content("model.safetensors"))
    assert time.monotonic() - started >= 0.3


def test_fault_corrupt_flips_one_byte(hub: HubServer) -> None:
    """corrupt keeps the length and changes exactly one byte."""
    hub.add_fault(Fault(kind="cdn", corrupt=True))
    body = _resolve(hub, "model.safetensors", follow_redirects=True).content
    good = _content("model.safetensors")
    assert len(body) == len(good)
    assert sum(a != b for a, b in zip(body, good, strict=True)) == 1


def test_fault_redirect_loop(hub: HubServer) -> None:
    """redirect_loop answers 302 to the same URL, forever if asked."""
    hub.add_fault(Fault(kind="resolve", redirect_loop=True, times=None))
    with pytest.raises(httpx.TooManyRedirects):
        httpx.get(f"{hub.url}{TOKENIZER}", follow_redirects=True)


@pytest.mark.parametrize(
    "hostile",
    [
        [{"type": "file", "path": "../x", "size": 1, "oid": "0" * 40}],
        [{"type": "file", "path": "/etc/x", "size": 1, "oid": "0" * 40}],
        [{"type": "file", "path": "a/../../x", "size": 1, "oid": "0" * 40}],
        [{"type": "file", "path": "a\\b", "size": 1, "oid": "0" * 40}],
        [{"type": "file", "path": "nul\0name", "size": 1, "oid": "0" * 40}],
        [{"type": "file", "path": "d", "size": 1, "oid": "0" * 40}] * 2,
        [{"type": "file", "path": "huge", "size": 10**18, "oid": "0" * 40}],
        "{not json",
    ],
)
def test_fault_body_replaces_tree(hub: HubServer, hostile: object) -> None:
    """A body fault serves hostile listings verbatim."""
    body = hostile if isinstance(hostile, str) else json.dumps(hostile)
    hub.add_fault(Fault(kind="tree", body=body))
    got = httpx.get(f"{hub.url}/api/models/{DEMO_REPO_ID}/tree/main?recursive=true")
    assert got.status_code == 200 and got.text == body


def test_real_client_resumes_after_truncation(hub_factory: HubFactory, hf_client: Path) -> None:
    """After a truncated CDN body the real client resumes with a Range request."""
    # The client writes in 10 MiB chunks, so only a cut past 10 MiB leaves something to resume.
    data = os.urandom(21 * 1024 * 1024)
    hub = hub_factory([HubRepo("org/big", [HubFile("big.bin", data)])])
    hub.add_fault(Fault(kind="cdn", truncate_after=15 * 1024 * 1024))
    folder = Path(snapshot_download("org/big", cache_dir=hf_client, endpoint=hub.url))
    assert (folder / "big.bin").read_bytes() == data
    cut, resumed = hub.requests(kind="cdn")
    assert cut.fault == f"truncate_after={15 * 1024 * 1024}"
    assert resumed.status == 206 and resumed.range == f"bytes={10 * 1024 * 1024}-"


# -- the command line ---------------------------------------------------------------------------


@pytest.fixture
def served_dir(tmp_path: Path) -> Iterator[str]:
    """`python -m agent.devhub --serve-dir` running on a small directory; yields its URL."""
    (tmp_path / "config.json").write_text("{}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.devhub", "--serve-dir", str(tmp_path), "--repo", "o/r"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_cli_serves_a_directory(served_dir: str) -> None:
    """The CLI prints the hub URL and serves the directory as a repo."""
    got = httpx.get(f"{served_dir}/o/r/resolve/main/config.json")
    assert got.status_code == 200 and got.text == "{}"
