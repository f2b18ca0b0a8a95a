"""The inventory scan on caches built by in-process preloads from the loopback test hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.devhub import HubServer
from agent.engine.preload import PreloadOptions, preload
from agent.ops import gc, status
from agent.ops.verify import record, verify
from agent.sources.hub import HubSource
from agent.spec import Layout, ModelSpec
from agent.store import CachePaths, Store, inventory, usage
from agent.store.inventory import Leftover, Unpublished
from tests.hubfixtures import HubFactory
from tests.integration.agentproc import small_repo

DIR_SPEC = ModelSpec("a/one")
HF_SPEC = ModelSpec("a/cached", layout=Layout.HF_CACHE)


def install(hub: HubServer, dest: Path, spec: ModelSpec, refresh: bool = False) -> None:
    preload(spec, dest, [lambda: HubSource(hub.url)], PreloadOptions(refresh=refresh))


@pytest.fixture
def cache(tmp_path: Path, hub_factory: HubFactory, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, HubServer]:
    """a/one in the dir layout (its use recorded), a/cached in the hf-cache layout (never used)."""
    monkeypatch.setenv("PRELOAD_RETRY_SCALE", "0")
    hub = hub_factory([small_repo(DIR_SPEC.repo), small_repo(HF_SPEC.repo)])
    dest = tmp_path / "cache"
    install(hub, dest, DIR_SPEC)
    install(hub, dest, HF_SPEC)
    usage.touch(dest, DIR_SPEC)
    os.utime(usage.record_path(dest, DIR_SPEC.repo, Layout.DIR), (1234.0, 1234.0))
    return dest, hub


def new_commit(hub: HubServer, dest: Path, spec: ModelSpec) -> None:
    hub.repo(spec.repo).add_commit(small_repo(spec.repo, salt=b"v2").files().values())
    install(hub, dest, spec, refresh=True)


def by_repo(inv: inventory.Inventory) -> dict[str, inventory.Installed]:
    return {i.spec.repo: i for i in inv.models}


def test_both_layouts_are_found_with_their_manifests(cache: tuple[Path, HubServer]) -> None:
    """One record per model: its layout, current manifest, last use, and nothing left over."""
    dest, _ = cache
    inv = inventory.scan(dest)
    assert [(i.spec.repo, i.spec.layout) for i in inv.models] == [
        (DIR_SPEC.repo, Layout.DIR),
        (HF_SPEC.repo, Layout.HF_CACHE),
    ]
    one, cached = by_repo(inv)[DIR_SPEC.repo], by_repo(inv)[HF_SPEC.repo]
    store = Store(dest)
    assert one.manifest == store.read_marker(DIR_SPEC) and cached.manifest == store.read_marker(HF_SPEC)
    assert one.last_used == 1234.0
    assert cached.last_used == store.marker_path(HF_SPEC).stat().st_mtime, "no use recorded: the marker's"
    assert not one.busy and one.verified is None
    assert one.superseded == () and one.other_markers == ()
    assert one.data == dest / ".preload" / "versions" / "a" / "one"
    assert cached.data == dest / "models--a--cached"
    assert one.eviction[0] == dest / "a" / "one" and cached.eviction[0] == store.marker_path(HF_SPEC)
    assert inv.staging == () and inv.unpublished == ()


@pytest.mark.parametrize("spec", [DIR_SPEC, HF_SPEC])
def test_a_new_commit_leaves_the_old_one_superseded(cache: tuple[Path, HubServer], spec: ModelSpec) -> None:
    """The replaced revision's marker and files are listed, the current one's are not."""
    dest, hub = cache
    store = Store(dest)
    old = store.read_marker(spec)
    assert old is not None
    new_commit(hub, dest, spec)
    inst = by_repo(inventory.scan(dest))[spec.repo]
    assert inst.manifest is not None and inst.manifest.commit != old.commit
    assert inst.other_markers == (store.other_marker_path(spec, old.commit),)
    assert inst.superseded and all(inst.manifest.commit not in p.name for p in inst.superseded)
    assert store.layout(spec).files_dir(spec, old.commit) in inst.superseded


def test_staging_leftovers_and_unpublished_hub_folders(cache: tuple[Path, HubServer]) -> None:
    """Staging folders with an ORG--NAME name count; junk, files and symlinks do not; a
    models--ORG--NAME folder without a marker is an unpublished hf-cache model."""
    dest, _ = cache
    paths = CachePaths(dest)
    ghost = paths.staging(ModelSpec("a/ghost"))
    ghost.mkdir()
    (ghost / "x.part").write_bytes(b"partial")
    (paths.staging_root / "junk").mkdir()
    (paths.staging_root / "b--file").write_text("not a folder")
    (paths.staging_root / "c--link").symlink_to(ghost)
    (dest / "models--a--half" / "blobs").mkdir(parents=True)
    (dest / "models--not-a-repo").mkdir()
    inv = inventory.scan(dest)
    assert inv.staging == (Leftover("a/ghost", ghost, busy=False),)
    assert inv.unpublished == (Unpublished("a/half", Layout.HF_CACHE, busy=False),)
    rows = {(r.repo, r.layout): r.state for r in status.scan(dest)}
    assert rows[("a/ghost", "-")] == status.PARTIAL and rows[("a/half", "hf-cache")] == status.PARTIAL


def test_a_corrupt_marker_is_listed_without_a_manifest(cache: tuple[Path, HubServer]) -> None:
    """status shows it as corrupt; gc does not evict what it cannot read."""
    dest, _ = cache
    Store(dest).marker_path(DIR_SPEC).write_text("{not json")
    inst = by_repo(inventory.scan(dest))[DIR_SPEC.repo]
    assert inst.manifest is None and inst.superseded == () and inst.verified is None
    rows = {(r.repo, r.layout): r.state for r in status.scan(dest)}
    assert rows[(DIR_SPEC.repo, "dir")] == status.CORRUPT
    assert rows[(HF_SPEC.repo, "hf-cache")] == status.COMPLETE
    plan = gc.plan(dest, gc.disk_usage(dest)[0] + (1 << 62))
    assert [e.repo for e in plan.evictions] == [HF_SPEC.repo]


def test_lock_state_and_last_verification(cache: tuple[Path, HubServer]) -> None:
    """A held lock makes the model busy; a verification counts only for the commit it checked."""
    dest, hub = cache
    store = Store(dest)
    record(store, DIR_SPEC, verify(store, DIR_SPEC, deep=True))
    with store.lock(DIR_SPEC) as got:
        assert got
        inst = by_repo(inventory.scan(dest))[DIR_SPEC.repo]
    assert inst.busy
    assert inst.verified is not None and inst.verified.deep and inst.verified.sound
    assert inst.manifest is not None and inst.verified.commit == inst.manifest.commit
    new_commit(hub, dest, DIR_SPEC)
    assert by_repo(inventory.scan(dest))[DIR_SPEC.repo].verified is None


def test_an_empty_or_foreign_directory_has_nothing(tmp_path: Path) -> None:
    """No state directory: no models, no leftovers."""
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert inventory.scan(tmp_path) == inventory.Inventory(tmp_path, (), (), ())
