"""`preload gc` as a real process: what it removes, what it spares, and what it says."""

from __future__ import annotations

from pathlib import Path

from agent.devhub.demo_model import demo_repo
from agent.errors import ExitCode
from agent.spec import ModelSpec
from agent.store import Store
from tests.conftest import RunPreload
from tests.hubfixtures import HubFactory
from tests.integration.agentproc import DEMO, small_repo


def test_gc_evicts_unkept_lru_first_and_spares_kept_and_locked(
    tmp_path: Path, hub_factory: HubFactory, run_preload: RunPreload
) -> None:
    """--keep-free 100: every unkept, unlocked model goes, least recently used first."""
    hub = hub_factory([demo_repo(), small_repo("a/old"), small_repo("a/busy")])
    dest = tmp_path / "cache"
    env = {"HF_ENDPOINT": hub.url}
    for repo in ("a/old", "a/busy", DEMO):
        assert run_preload("--model", repo, "--dest", str(dest), env=env).code == 0
    dry = run_preload("gc", "--dest", str(dest), "--keep-free", "100%", "--keep", DEMO, "--dry-run")
    assert dry.code == 0, dry.stderr  # a dry run removes nothing: it reports, and exits 0
    assert dry.stdout.splitlines()[-1].endswith("(still short)")
    assert [line.split(":")[0] for line in dry.stdout.splitlines()[:2]] == [
        "would remove model a/old (dir)",
        "would remove model a/busy (dir)",
    ]
    assert Store(dest).ready(ModelSpec("a/old")) is not None
    with Store(dest).lock(ModelSpec("a/busy")):
        run = run_preload("gc", "--dest", str(dest), "--keep-free", "100", "--keep", DEMO)
    assert run.code == ExitCode.DISK_SPACE  # 100% free is out of reach: said, not hidden
    assert run.stdout.splitlines()[0].startswith("removed model a/old (dir)")
    assert "kept a/busy: in use" in run.stdout and "still short" in run.stdout
    store = Store(dest)
    assert store.ready(ModelSpec("a/old")) is None and not (dest / "a" / "old").exists()
    assert store.ready(ModelSpec("a/busy")) is not None and store.ready(ModelSpec(DEMO)) is not None


def test_gc_with_room_to_spare_removes_nothing(
    tmp_path: Path, hub_factory: HubFactory, run_preload: RunPreload
) -> None:
    """A target already met: exit 0, nothing removed."""
    hub = hub_factory([demo_repo()])
    dest = tmp_path / "cache"
    assert run_preload("--model", DEMO, "--dest", str(dest), env={"HF_ENDPOINT": hub.url}).code == 0
    run = run_preload("gc", "--dest", str(dest), "--keep-free-bytes", "1")
    assert run.code == 0 and run.stdout.startswith("free ")
    assert Store(dest).ready(ModelSpec(DEMO)) is not None


def test_gc_needs_exactly_one_target(tmp_path: Path, run_preload: RunPreload) -> None:
    """Neither or both of --keep-free and --keep-free-bytes is a usage error."""
    assert run_preload("gc", "--dest", str(tmp_path)).code == ExitCode.USAGE
    both = run_preload("gc", "--dest", str(tmp_path), "--keep-free", "10", "--keep-free-bytes", "1GiB")
    assert both.code == ExitCode.USAGE
    assert (
        run_preload("gc", "--dest", str(tmp_path), "--keep-free", "10", "--keep", "bad").code
        == ExitCode.USAGE
    )


def test_gc_takes_sizes_and_percentages_as_people_type_them(
    tmp_path: Path, hub_factory: HubFactory, run_preload: RunPreload
) -> None:
    """--keep-free 20% and --keep-free-bytes 1.5GiB / 1TB / 1T are accepted; gc prints binary units."""
    hub = hub_factory([demo_repo()])
    dest = tmp_path / "cache"
    assert run_preload("--model", DEMO, "--dest", str(dest), env={"HF_ENDPOINT": hub.url}).code == 0
    pct = run_preload("gc", "--dest", str(dest), "--keep-free", "0%")
    assert pct.code == 0 and "target 0 B" in pct.stdout, pct.stdout + pct.stderr
    for size, shown in (("1.5GiB", "1.5 GiB"), ("1TB", "931.3 GiB"), ("1T", "1.0 TiB")):
        run = run_preload("gc", "--dest", str(dest), "--keep-free-bytes", size, "--dry-run")
        assert run.code == 0 and f"target {shown}" in run.stdout, run.stdout + run.stderr
