"""End-to-end preloads from the loopback test hub, run as real `preload` processes."""

from __future__ import annotations

import itertools
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.devhub import Fault, HubFile, HubRepo, HubServer
from agent.devhub.demo_model import DEMO_REPO_ID, demo_files, demo_repo
from agent.manifest import Manifest
from tests.conftest import RunPreload, base_env, spawn_preload, tmpfs
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


TINY = ["--model", "demo-org/tiny-model", "--dest", "{dest}"]
BAD_INPUT = [
    (["--model", "not-a-repo", "--dest", "{dest}"], 2, "invalid model id"),
    (["--model", "a/b/c", "--dest", "{dest}"], 2, "invalid model id"),
    (["--model", "demo-org/tiny-model@bad..rev", "--dest", "{dest}"], 2, "invalid revision"),
    (["--model", "demo-org/tiny-model", "--dest", "{file}"], 2, "not a directory"),
    (["--model", "demo-org/tiny-model", "--dest", "{dest}", "--layout", "zip"], 2, "zip"),
    (["--model", "demo-org/missing", "--dest", "{dest}"], 3, "not found"),
    (["--model", "demo-org/tiny-model@nope", "--dest", "{dest}"], 3, "revision not found"),
    (["--model", "demo-org/tiny-model", "--dest", "{dest}", "--include", "*.none"], 2, "no files"),
    (["--model", "demo-org/tiny-model", "--dest", "{dest}", "--timeout", "soon"], 2, "invalid duration"),
    # "env:NAME=VALUE" items set the environment instead of being arguments.
    ([*TINY, "--endpoint", "ftp://x"], 2, "invalid endpoint 'ftp://x'"),
    ([*TINY, "--endpoint", "http://"], 2, "invalid endpoint"),
    ([*TINY, "--endpoint", "not a url"], 2, "invalid endpoint"),
    ([*TINY, "--endpoint", "http://h:99999"], 2, "invalid endpoint"),
    ([*TINY, "--endpoint", "http://u:hunter2@"], 2, "'http://***@'"),
    (["env:HF_ENDPOINT=ftp://mirror", *TINY], 2, "invalid endpoint 'ftp://mirror'"),
    (["env:PRELOAD_ENDPOINT=garbage", *TINY], 2, "invalid endpoint 'garbage'"),
    ([*TINY, "--token-file", "{missing}"], 2, "No such file"),
    ([*TINY, "--token-file", "{tmp}"], 2, "Is a directory"),
    ([*TINY, "--token-file", "{file}"], 2, "not UTF-8"),
    ([*TINY, "--token-file", "{empty}"], 2, "is empty"),
    (["env:PRELOAD_TOKEN_FILE={missing}", *TINY], 2, "No such file"),
]


@pytest.mark.parametrize(("args", "code", "words"), BAD_INPUT)
def test_bad_input_is_one_clear_error_and_writes_nothing(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload, args: list[str], code: int, words: str
) -> None:
    """Invalid ids, revisions, destinations, endpoints, token files and unknown repos: exit code, no DIR."""
    dest = tmp_path / "cache"
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"\xff\xfe not UTF-8")  # a --dest that is a file; a token file that is not text
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    paths = {"dest": dest, "file": a_file, "missing": tmp_path / "no-token", "tmp": tmp_path, "empty": empty}
    env = {"HF_ENDPOINT": hub.url}
    argv = []
    for arg in (a.format(**paths) for a in args):
        if arg.startswith("env:"):
            name, _, value = arg.removeprefix("env:").partition("=")
            env[name] = value
        else:
            argv.append(arg)
    r = run_preload(*argv, env=env)
    assert r.code == code, r.stderr
    assert words in r.stderr
    assert "Traceback" not in r.stderr and "hunter2" not in r.stderr
    assert not dest.exists(), "a failed run must not even create DIR"


@pytest.mark.parametrize(
    ("stdout_tty", "stderr_tty", "as_json"),
    [(True, True, False), (False, True, True), (True, False, True)],
    ids=["both-ttys", "stdout-piped", "stderr-piped"],
)
def test_auto_log_format_is_console_only_on_two_terminals(
    tmp_path: Path, stdout_tty: bool, stderr_tty: bool, as_json: bool
) -> None:
    """The default `auto` writes JSON to stderr unless stdout and stderr are both terminals."""
    fds: dict[str, tuple[int, int]] = {}
    for name, tty in (("out", stdout_tty), ("err", stderr_tty)):
        fds[name] = os.openpty() if tty else os.pipe()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "--model", "not-a-repo", "--dest", str(tmp_path / "c")],
            env=base_env(tmp_path, {"PRELOAD_LOG_FORMAT": "auto"}),
            stdout=fds["out"][1],
            stderr=fds["err"][1],
            timeout=60,
            check=False,
        )
        os.close(fds["err"][1])
        fds["err"] = (fds["err"][0], -1)
        err = os.read(fds["err"][0], 65536).decode().strip()
    finally:
        for read_fd, write_fd in fds.values():
            for fd in (read_fd, write_fd):
                if fd >= 0:
                    os.close(fd)
    assert proc.returncode == 2, err
    if as_json:
        assert json.loads(err)["event"] == "failed"
    else:
        with pytest.raises(ValueError):
            json.loads(err)
        assert "failed" in err and "exit_code" in err


def test_preload_endpoint_is_the_endpoint_twin_and_beats_hf_endpoint(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """PRELOAD_ENDPOINT is used over HF_ENDPOINT (which still works alone); the marker records it."""
    dest = tmp_path / "cache"
    env = {"PRELOAD_ENDPOINT": hub.url, "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on 9
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env=env)
    assert r.code == 0, r.stderr
    assert marker(dest).endpoint == hub.url


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


@pytest.mark.parametrize(
    "headers",
    [{"RateLimit": '"api";r=0;t=1'}, {"Retry-After": "1"}],
    ids=["ratelimit-t1", "retry-after-1"],
)
def test_a_429_wait_from_the_hub_is_honoured(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload, headers: dict[str, str]
) -> None:
    """A 429 saying "again in 1 s" delays the next attempt by about 1 s (the jittered default is <= 0.5 s)."""
    hub.add_fault(Fault(kind="revision", status=429, headers=headers, times=1))
    dest = tmp_path / "cache"
    env = {"HF_ENDPOINT": hub.url, "PRELOAD_RETRY_SCALE": "1"}  # real waits: the hub's are not scaled away
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env=env)
    assert r.code == 0, r.stderr
    first, second = hub.requests(kind="revision")[:2]
    assert first.status == 429 and second.status == 200
    assert 0.9 <= second.started - first.finished < 5, second.started - first.finished
    assert r.event("retry")["wait_s"] == 1.0


def test_endless_503s_end_within_the_total_retry_time(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """With a 2 s total retry budget (PRELOAD_RETRY_MAX_TIME), endless 503s stop within it: exit 6."""
    hub.add_fault(Fault(kind="tree", status=503, times=None))
    env = {"HF_ENDPOINT": hub.url, "PRELOAD_RETRY_SCALE": "1", "PRELOAD_RETRY_MAX_TIME": "2"}
    started = time.monotonic()
    r = run_preload("--model", DEMO_REPO_ID, "--dest", str(tmp_path / "cache"), env=env, timeout=60)
    elapsed = time.monotonic() - started
    assert r.code == 6, r.stderr
    tries = hub.requests(kind="tree")
    assert 2 <= len(tries) < 8, "the time bound, not the 8 attempts, must end it"
    assert tries[-1].started - tries[0].started < 2.0, "no attempt may start past the budget"
    assert elapsed < 2.0 + 10, f"{elapsed:.1f} s for a 2 s retry budget (process start-up included)"


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
    # A name longer than NAME_MAX (255 bytes), alone, nested, or in multibyte UTF-8.
    [{"type": "file", "path": "x" * 256, "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": "d/" + "x" * 300 + "/f", "size": 3, "oid": "a" * 40}],
    [{"type": "file", "path": "\u00e9" * 128, "size": 3, "oid": "a" * 40}],
]


@pytest.mark.parametrize("layout", ["dir", "hf-cache"])
@pytest.mark.parametrize("listing", HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))])
def test_hostile_listing_is_rejected_and_nothing_escapes(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload, listing: object, layout: str
) -> None:
    """Traversal, absolute, backslash, NUL, duplicate, over-long, absurd-size entries, bad JSON: no writes."""
    sandbox = tmp_path / "sandbox"
    dest = sandbox / "cache"
    dest.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")}
    body = listing if isinstance(listing, str) else json.dumps(listing)
    hub.add_fault(Fault(kind="tree", status=200, body=body, times=None))
    r = run_preload(
        "--model", DEMO_REPO_ID, "--dest", str(dest), "--layout", layout, env={"HF_ENDPOINT": hub.url}
    )
    assert r.code == 4, r.stderr
    assert "Traceback" not in r.stderr
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p.is_relative_to(tmp_path / "hf-home") for p in created), created
    assert not Path("/etc/evil").exists()


@pytest.mark.parametrize("layout", ["dir", "hf-cache"])
@pytest.mark.parametrize("name", ["x" * 256, "d/" + "\u00e9" * 128 + "/f"], ids=["ascii", "utf8-nested"])
def test_overlong_name_the_hub_really_serves_is_refused(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload, layout: str, name: str
) -> None:
    """A file whose name has a component over 255 bytes is a hostile listing (exit 4), not a crash."""
    hub = hub_factory([HubRepo("demo-org/long-names", [*demo_files(), HubFile(name, data=b"abc")])])
    dest = tmp_path / "cache"
    r = run_preload(
        "--model",
        "demo-org/long-names",
        "--dest",
        str(dest),
        "--layout",
        layout,
        env={"HF_ENDPOINT": hub.url},
    )
    assert r.code == 4, r.stderr
    assert "Traceback" not in r.stderr
    assert "refusing unsafe file path" in r.event("failed")["error"]
    assert hub.requests(kind="resolve") == [] and hub.requests(kind="cdn") == []
    assert not dest.exists(), "a listing refused before the transfer leaves DIR untouched"


@pytest.mark.parametrize("layout", ["dir", "hf-cache"])
def test_names_of_the_maximum_length_are_published(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload, layout: str
) -> None:
    """255-byte names (NAME_MAX), twice with the same content (linked), publish in both layouts."""
    long_a, long_b = "y" * 255, "d/" + "z" * 255
    files = [*demo_files(), HubFile(long_a, data=b"same"), HubFile(long_b, data=b"same")]
    hub = hub_factory([HubRepo("demo-org/long-names", files)])
    dest = tmp_path / "cache"
    args = ("--model", "demo-org/long-names", "--dest", str(dest), "--layout", layout)
    r = run_preload(*args, env={"HF_ENDPOINT": hub.url})
    assert r.code == 0, r.stderr
    path = Path(r.event("preload_complete")["path"])
    assert (path / long_a).read_bytes() == (path / long_b).read_bytes() == b"same"


@pytest.mark.usefixtures("prune_big_files")
def test_killed_preload_resumes_without_refetching(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload
) -> None:
    """kill -9 mid-transfer, rerun: the model completes and extra bytes stay under 5% of the model."""
    # What a kill loses is per connection (its body buffer, 1 MiB, and the socket buffers at both
    # ends): about 2.5 MB each here, so the model is large enough for 5% to mean what it does on
    # the benchmark's 3 GiB (where it measures ~1%).
    repo = big_repo(tmp_path, mib=128)
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


@pytest.mark.usefixtures("prune_big_files")
def test_concurrent_preloaders_transfer_once(hub_factory: HubFactory, tmp_path: Path) -> None:
    """Several preload processes for one model: exactly one transfers, all exit 0."""
    repo = big_repo(tmp_path, mib=16)
    hub = hub_factory([repo], cdn_rate_limit_bps=4 << 20)  # a 4 s transfer: the late two find it running
    dest = tmp_path / "cache"
    argv = ("--model", "big-org/big-model", "--dest", str(dest))
    procs = [spawn_preload(tmp_path, *argv, env={"HF_ENDPOINT": hub.url}) for _ in range(3)]
    # Two more once the transfer runs: they find the lock held and wait, without listing.
    deadline = time.monotonic() + 60
    while not list((dest / ".preload" / "staging").rglob("*.part")):
        assert time.monotonic() < deadline, "no transfer started"
        time.sleep(0.02)
    procs += [spawn_preload(tmp_path, *argv, env={"HF_ENDPOINT": hub.url}) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, [e for _, e in results]
    blob = repo.files()["model.safetensors"]
    assert sum(r.bytes_sent for r in hub.requests(kind="cdn")) == blob.size
    # Listing comes before the lock (a failure must leave DIR untouched): the three started
    # together may each list; the late two must not.
    assert 1 <= len(hub.requests(kind="tree")) <= 3
    assert all("waiting_for_lock" in err for _, err in results[3:])


@pytest.mark.usefixtures("prune_big_files")
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
        assert list(mnt.iterdir()) == [], "nothing written, not even DIR"


@pytest.mark.usefixtures("prune_big_files")
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


@pytest.mark.usefixtures("prune_big_files")
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


@pytest.mark.usefixtures("prune_big_files")
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


@pytest.mark.usefixtures("prune_big_files")
def test_split_file_is_hashed_without_reading_the_disk(hub_factory: HubFactory, tmp_path: Path) -> None:
    """Helpers' chunks are hashed from the page cache behind them, never re-read from the disk."""
    repo = big_repo(tmp_path, mib=64)
    hub = hub_factory([repo], cdn_rate_limit_bps=8 << 20)
    dest = tmp_path / "cache"
    args = ("--model", "big-org/big-model", "--dest", str(dest), "--max-workers", "8", "--chunk-size", "8MiB")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_inblock
    proc = spawn_preload(tmp_path, *args, env={"HF_ENDPOINT": hub.url})
    _, err = proc.communicate(timeout=120)
    read = (resource.getrusage(resource.RUSAGE_CHILDREN).ru_inblock - before) * 512
    assert proc.returncode == 0, err
    blob = repo.files()["model.safetensors"]
    helpers = [r for r in hub.requests(kind="cdn", method="GET", path=blob.sha256) if r.range]
    assert len(helpers) >= 3, "the cap must have drawn helper connections"
    assert read < 8 << 20, f"{read / 2**20:.1f} MiB read from disk for a {blob.size >> 20} MiB file"


def test_readiness_covers_the_requested_files(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A run asking for more files than were published fetches them; any covered selection is warm."""
    dest = tmp_path / "cache"
    env = {"HF_ENDPOINT": hub.url}
    base = ("--model", DEMO_REPO_ID, "--dest", str(dest))
    assert run_preload(*base, "--include", "config.json", env=env).code == 0
    assert [f.path for f in marker(dest).files] == ["config.json"]
    assert "model.safetensors" in {f.path for f in marker(dest).skipped}
    hub.reset_log()
    r = run_preload(*base, env=env)
    assert r.code == 0 and r.event("preload_complete")["already_complete"] is False, r.stderr
    assert (model_dir(dest) / "model.safetensors").is_file()
    assert not (model_dir(dest) / "pytorch_model.bin").exists()
    hub.reset_log()
    for extra in ((), ("--include", "config.json")):  # both selections are now covered: no request
        r = run_preload(*base, *extra, env=env)
        assert r.code == 0 and r.event("preload_complete")["already_complete"] is True
    assert hub.requests() == []
    r = run_preload(*base, "--all-files", env=env)
    assert r.code == 0 and (model_dir(dest) / "pytorch_model.bin").is_file(), r.stderr
    fetched = {rec.path.rsplit("/", 1)[-1] for rec in hub.requests() if rec.kind in ("resolve", "cdn")}
    assert "model.safetensors" not in fetched and "config.json" not in fetched, fetched
    assert {f.path for f in marker(dest).files} == {f.path for f in demo_files()}
    assert marker(dest).skipped == ()


@pytest.mark.usefixtures("prune_big_files")
def test_space_check_counts_only_bytes_not_already_published(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload
) -> None:
    """A new revision sharing the big file with the published one needs space only for what changed."""
    with tmpfs(tmp_path / "small", "size=128m") as mnt:
        repo = big_repo(tmp_path, mib=40)
        hub = hub_factory([repo])
        dest = mnt / "cache"
        env = {"HF_ENDPOINT": hub.url}
        assert run_preload("--model", "big-org/big-model", "--dest", str(dest), env=env).code == 0
        repo.add_commit([*repo.files().values(), HubFile("extra.txt", data=b"x" * 1000)])
        r = run_preload("--model", "big-org/big-model", "--dest", str(dest), "--refresh", env=env)
        assert r.code == 0, r.stderr
        assert (model_dir(dest, "big-org/big-model") / "extra.txt").stat().st_size == 1000


@pytest.mark.parametrize("layout", ["dir", "hf-cache"])
def test_two_revisions_in_use_are_both_warm(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload, layout: str
) -> None:
    """Pods pinned to an old commit and pods on main share a node: each is ready offline, no flip-flop."""
    dest = tmp_path / "cache"
    env = {"HF_ENDPOINT": hub.url}
    old = hub.repo(DEMO_REPO_ID).head()
    new = hub.repo(DEMO_REPO_ID).add_commit([*demo_files(), HubFile("extra.txt", data=b"new\n")])
    base = ("--dest", str(dest), "--layout", layout)
    r = run_preload("--model", f"{DEMO_REPO_ID}@{old}", *base, env=env)
    assert r.code == 0, r.stderr
    r = run_preload("--model", DEMO_REPO_ID, *base, env=env)
    assert r.code == 0 and r.event("preload_complete")["already_complete"] is False, r.stderr
    main_path = r.event("preload_complete")["path"]
    hub.reset_log()
    for _ in range(2):
        r = run_preload("--model", f"{DEMO_REPO_ID}@{old}", *base, env=env)
        assert r.code == 0 and r.event("preload_complete")["already_complete"] is True, r.stderr
        old_path = Path(r.event("preload_complete")["path"])
        assert old_path.name == old and not (old_path / "extra.txt").exists()
        r = run_preload("--model", DEMO_REPO_ID, *base, env=env)
        assert r.code == 0 and r.event("preload_complete")["already_complete"] is True, r.stderr
        assert r.event("preload_complete")["path"] == main_path
    assert hub.requests() == []
    if layout == "dir":
        assert model_dir(dest).resolve().name == new, "DIR/ORG/NAME stays on main's commit"
    else:
        assert (dest / f"models--{DEMO_REPO_ID.replace('/', '--')}" / "refs" / "main").read_text() == new


def test_pinned_commit_is_published_beside_the_current_one(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload
) -> None:
    """Fetching an older pinned commit after main does not move DIR/ORG/NAME off main."""
    dest = tmp_path / "cache"
    env = {"HF_ENDPOINT": hub.url}
    old = hub.repo(DEMO_REPO_ID).head()
    new = hub.repo(DEMO_REPO_ID).add_commit([*demo_files(), HubFile("extra.txt", data=b"new\n")])
    assert run_preload("--model", DEMO_REPO_ID, "--dest", str(dest), env=env).code == 0
    reader = open(model_dir(dest) / "extra.txt", "rb")  # noqa: SIM115 - a pod reading main
    r = run_preload("--model", f"{DEMO_REPO_ID}@{old}", "--dest", str(dest), env=env)
    assert r.code == 0 and r.event("preload_complete")["already_complete"] is False, r.stderr
    path = Path(r.event("preload_complete")["path"])
    assert path.name == old and (path / "config.json").is_file() and not (path / "extra.txt").exists()
    assert model_dir(dest).resolve().name == new and reader.read() == b"new\n"
    reader.close()
    assert marker(dest).commit == new
