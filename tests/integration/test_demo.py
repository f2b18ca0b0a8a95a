"""The README's first command: `preload demo` shows preload -> verify -> ready offline."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import RunPreload


def test_demo_runs_the_real_flow(tmp_path: Path, run_preload: RunPreload) -> None:
    """The demo preloads from its loopback hub, re-verifies every file, and rereads with zero requests."""
    dest = tmp_path / "demo"
    r = run_preload("demo", "--dest", str(dest))
    assert r.code == 0, r.stderr
    assert "1. preload" in r.stdout and "2. verify   8/8" in r.stdout and "3. ready" in r.stdout
    assert "with 0 hub requests" in r.stdout
    manifest = json.loads(r.stdout[r.stdout.index("{") :])
    assert manifest["repo"] == "demo-org/tiny-model" and manifest["file_count"] == 8
    assert (dest / "demo-org" / "tiny-model" / "model.safetensors").is_file()
