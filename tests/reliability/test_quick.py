"""CI: the quick form of the reliability suite (tests/reliability/run.py --quick), about 3 minutes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).with_name("run.py")


@pytest.mark.slow
def test_quick_reliability_suite(tmp_path: Path) -> None:
    """Every scenario's quick form passes every trial and never reports a corrupt model ready."""
    out, rows_json = tmp_path / "reliability.md", tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "--quick", "--seed", "1", "--out", str(out), "--json", str(rows_json)],
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert rows_json.exists(), proc.stdout + proc.stderr
    rows = json.loads(rows_json.read_text())
    assert len(rows) >= 14, proc.stdout
    assert sum(r["corrupt_ready"] for r in rows) == 0, proc.stdout
    failed = [r for r in rows if r["trials"] == 0 or r["passed"] != r["trials"]]
    assert not failed, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| scenario | trials | passed | data lost | corrupt ready | notes |" in out.read_text()
