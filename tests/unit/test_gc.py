"""GC planning and execution on real caches built by in-process preloads from the test hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.devhub import HubServer
from agent.engine.preload import PreloadOptions, preload
from agent.ops import gc
from agent.sources.hub import HubSource
from agent.spec import Layout, ModelSpec
from agent.store import Store, evict, usage
from tests.hubfixtures import HubFactory
from tests.integration.agentproc import small_repo

REPOS = ["a/one", "a/two", "a/three", "a/kept", "a/pinned", "a/cached"]
HUGE = 1 << 62


@pytest.fixture
def cache(tmp_path: Path, hub_factory: HubFactory, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, HubServer]:
    """A cache holding every repo in REPOS (a/cached in the hf-cache layout), with known last uses."""
    monkeypatch.setenv("PRELOAD_RETRY_SCALE", "0")
    hub = hub_factory([small_repo(r) for r in REPOS])
    dest = tmp_path / "cache"
    for i, repo in enumerate(REPOS):
        layout = Layout.HF_CACHE if repo == "a/cached" else Layout.DIR
        install(hub, dest, repo, layout)
        record = usage.record_path(dest, repo, layout)
        os.utime(record, (1000.0 * (i + 1), 1000.0 * (i + 1)))
    # a/two is the least recently used of all.
    os.utime(usage.record_path(dest, "a/two", Layout.DIR), (10.0, 10.0))
    return dest, hub


def install(
    hub: HubServer, dest: Path, repo: str, layout: Layout = Layout.DIR, refresh: bool = False
) -> None:
    """Preload one repo and record its use, as the preload command does."""
    spec = ModelSpec(repo, layout=layout)
    preload(spec, dest, [lambda: HubSource(hub.url)], PreloadOptions(refresh=refresh))
    usage.touch(dest, spec)


def new_commit(hub: HubServer, dest: Path, repo: str, layout: Layout = Layout.DIR) -> None:
    """Publish a new revision of `repo` on the hub and preload it, superseding the old one."""
    hub.repo(repo).add_commit(small_repo(repo, salt=b"v2").files().values())
    install(hub, dest, repo, layout, refresh=True)


def test_order_unconfigured_lru_first_then_superseded(cache: tuple[Path, HubServer]) -> None:
    """Unkept models go least recently used first; superseded revisions after; pinned never."""
    dest, hub = cache
    new_commit(hub, dest, "a/kept")
    new_commit(hub, dest, "a/pinned")
    new_commit(hub, dest, "a/cached", Layout.HF_CACHE)
    p = gc.plan(dest, gc.disk_usage(dest)[0] + HUGE, keep=["a/kept"], pinned=["a/pinned"])
    order = [(e.kind.value, e.repo) for e in p.evictions]
    assert order == [
        ("model", "a/two"),
        ("model", "a/one"),
        ("model", "a/three"),
        ("model", "a/cached"),
        ("revision", "a/kept"),
    ]
    assert all(e.bytes > 0 and e.reason for e in p.evictions)


def test_plan_stops_once_the_target_is_reached(cache: tuple[Path, HubServer]) -> None:
    """A target just above free space takes only the first candidate; a met target takes none."""
    dest, _ = cache
    free = gc.disk_usage(dest)[0]
    assert [e.repo for e in gc.plan(dest, free + 1).evictions] == ["a/two"]
    assert gc.plan(dest, 0).evictions == ()


def test_locked_model_is_in_use_and_spared(cache: tuple[Path, HubServer]) -> None:
    """A model whose lock another holder has is never planned, and is reported as in use."""
    dest, _ = cache
    with Store(dest).lock(ModelSpec("a/two")) as got:
        assert got
        p = gc.plan(dest, gc.disk_usage(dest)[0] + HUGE)
        assert "a/two" not in [e.repo for e in p.evictions] and p.in_use == ("a/two",)


def test_lock_taken_between_plan_and_execute_skips(cache: tuple[Path, HubServer]) -> None:
    """Execution takes each model's lock; one grabbed meanwhile is skipped, not deleted."""
    dest, _ = cache
    p = gc.plan(dest, gc.disk_usage(dest)[0] + HUGE)
    with Store(dest).lock(ModelSpec("a/two")):
        report = gc.execute(dest, p)
    assert [ev.repo for ev, _ in report.skipped] == ["a/two"]
    assert Store(dest).ready(ModelSpec("a/two")) is not None


def test_execute_removes_pointer_marker_files_and_record(cache: tuple[Path, HubServer]) -> None:
    """An evicted dir-layout model leaves nothing behind; the others stay ready."""
    dest, _ = cache
    report = gc.collect(dest, gc.disk_usage(dest)[0] + 1)
    assert [e.repo for e in report.removed] == ["a/two"]
    store = Store(dest)
    assert not (dest / "a" / "two").exists() and not (dest / "a" / "two").is_symlink()
    assert not store.marker_path(ModelSpec("a/two")).exists()
    assert not (dest / ".preload" / "versions" / "a" / "two").exists()
    assert usage.last_used(dest, "a/two", Layout.DIR) is None
    for repo in ("a/one", "a/three", "a/kept", "a/pinned"):
        assert store.ready(ModelSpec(repo)) is not None
    lines = gc.describe(report, dry_run=False)
    assert lines[0].startswith("removed model a/two (dir): ") and "last used" in lines[0]


def test_dry_run_removes_nothing(cache: tuple[Path, HubServer]) -> None:
    """--dry-run reports the plan and leaves every file in place."""
    dest, _ = cache
    report = gc.collect(dest, gc.disk_usage(dest)[0] + HUGE, dry_run=True)
    assert len(report.removed) == len(REPOS)
    assert all(Store(dest).ready(ModelSpec(r)) for r in REPOS if r != "a/cached")
    assert gc.describe(report, dry_run=True)[0].startswith("would remove")


def test_superseded_hf_cache_revision_keeps_the_current_one_readable(cache: tuple[Path, HubServer]) -> None:
    """Old snapshots and unreferenced blobs go; the current snapshot stays complete."""
    dest, hub = cache
    new_commit(hub, dest, "a/cached", Layout.HF_CACHE)
    spec = ModelSpec("a/cached", layout=Layout.HF_CACHE)
    repo_dir = Store(dest).hf_repo_dir(spec)
    assert len(list((repo_dir / "snapshots").iterdir())) == 2
    report = gc.collect(dest, gc.disk_usage(dest)[0] + HUGE, keep=REPOS)
    assert [(e.kind.value, e.repo) for e in report.removed] == [("revision", "a/cached")]
    assert len(list((repo_dir / "snapshots").iterdir())) == 1
    assert Store(dest).ready(spec) is not None


def test_never_removes_through_a_symlinked_parent(tmp_path: Path) -> None:
    """A path whose parent is a symlink out of DIR is refused and the outside stays intact."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (outside / "victim").mkdir(parents=True)
    (root / ".preload").mkdir(parents=True)
    (root / ".preload" / "versions").symlink_to(outside)
    with pytest.raises(ValueError, match="symlink"):
        evict.remove(root, root / ".preload" / "versions" / "victim")
    with pytest.raises(ValueError):
        evict.remove(root, outside / "victim")
    assert (outside / "victim").is_dir()


@pytest.mark.parametrize("layout", [Layout.DIR, Layout.HF_CACHE])
def test_superseded_revision_stops_being_ready_before_its_files_go(
    cache: tuple[Path, HubServer], layout: Layout
) -> None:
    """The replaced revision is ready offline until GC; then its marker goes first, then its files."""
    dest, hub = cache
    repo = "a/cached" if layout is Layout.HF_CACHE else "a/kept"
    store = Store(dest)
    old = store.read_marker(ModelSpec(repo, layout=layout))
    assert old is not None
    new_commit(hub, dest, repo, layout)
    pinned_old = ModelSpec(repo, revision=old.commit, layout=layout)
    assert store.ready(pinned_old) is not None, "the old revision stays findable until GC"
    report = gc.collect(dest, gc.disk_usage(dest)[0] + HUGE, keep=REPOS)
    (ev,) = report.removed
    assert ev.kind.value == "revision" and ev.paths[0] == store.other_marker_path(pinned_old, old.commit)
    assert store.ready(pinned_old) is None
    assert store.ready(ModelSpec(repo, layout=layout)) is not None
