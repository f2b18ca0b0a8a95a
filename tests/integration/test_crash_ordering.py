"""Kill the process between every durable step: never ready early, always completes on rerun."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.crashpoints import POINTS
from agent.devhub import HubServer
from agent.devhub.demo_model import DEMO_REPO_ID, demo_files
from agent.spec import Layout, ModelSpec
from agent.store import Store
from tests.conftest import RunPreload


@pytest.mark.parametrize("layout", ["dir", "hf-cache"])
@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_step_of_publish(
    hub: HubServer, tmp_path: Path, run_preload: RunPreload, point: str, layout: str
) -> None:
    """SIGKILL at each crash point: ready only if the marker was written; the rerun completes."""
    dest = tmp_path / "cache"
    args = ("--model", DEMO_REPO_ID, "--dest", str(dest), "--layout", layout)
    r = run_preload(*args, env={"HF_ENDPOINT": hub.url, "PRELOAD_CRASH_AT": point})
    assert r.code == -9, f"the crash point {point} was not reached:\n{r.stderr}"
    spec = ModelSpec(DEMO_REPO_ID, layout=Layout(layout))
    ready = Store(dest).ready(spec)
    assert (ready is not None) == (point == "after_marker")
    r = run_preload(*args, env={"HF_ENDPOINT": hub.url})
    assert r.code == 0, r.stderr
    m = Store(dest).ready(spec)
    assert m is not None
    base = Store(dest).model_path(spec, m.commit)
    expected = {f.path: f for f in demo_files()}
    for f in m.files:
        assert (base / f.path).read_bytes() == expected[f.path].read(0, f.size)
