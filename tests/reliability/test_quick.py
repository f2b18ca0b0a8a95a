"""CI: the quick form of the reliability suite, one test per scenario of tests/reliability/run.py.

Each test runs its scenario in-process, as `run.py --quick` does, in its own work directory and
with its own RNG seeded from SEED and the scenario's key (so a failure replays on its own). The
full form and the table stay with `make reliability`.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import run
from tests.reliability.common import Ctx, Row
from tests.reliability.run import SCENARIOS, Scenario

SEED = 1
HEADER = "| scenario | trials | passed | data lost | corrupt ready | notes |"


def failed(row: Row) -> str:
    """A row's counts and first failures, for an assertion message."""
    head = f"{row.scenario}: {row.passed}/{row.trials} passed, corrupt ready {row.corrupt_ready}"
    return "\n  - ".join([head, *row.failures, *row.notes])


@pytest.fixture
def work() -> Iterator[Path]:
    """The scenario's work directory, deleted afterwards, passed or failed (as run.py does).

    A short path directly in the temp root, like run.py's: a test's tmp_path is too long for the
    AF_UNIX socket that row 6b binds inside a model directory. `run.py --only KEY --keep` keeps it.
    """
    path = Path(tempfile.mkdtemp(prefix="preload-reliability-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize(("key", "scenario"), SCENARIOS, ids=[key for key, _ in SCENARIOS])
def test_scenario_quick_form(key: str, scenario: Scenario, work: Path) -> None:
    """The scenario's quick form passes every trial and never reports a corrupt model ready."""
    ctx = Ctx(work=work, quick=True, trials=20, rng=random.Random(f"{SEED}:{key}"))
    got = scenario(ctx)
    rows = got if isinstance(got, list) else [got]
    assert rows, f"{key} produced no row"
    for row in rows:
        assert row.trials > 0, failed(row)
        assert row.corrupt_ready == 0, failed(row)
        assert row.passed == row.trials, failed(row)
        assert row.ok, failed(row)


def test_every_scenario_key_is_unique() -> None:
    """run.py lists every scenario once, so each test id names exactly one scenario."""
    keys = [key for key, _ in SCENARIOS]
    assert len(keys) == len(set(keys)) >= 15
    assert all(callable(fn) for _, fn in SCENARIOS)


def test_runner_writes_the_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """run.py's entry point (what `make reliability` runs) writes the table and rows, exit 0."""
    out, rows_json = tmp_path / "reliability.md", tmp_path / "rows.json"
    files = ["--out", str(out), "--json", str(rows_json)]
    code = run.main(["--quick", "--seed", str(SEED), "--only", "hostile-dir", *files])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = json.loads(rows_json.read_text())
    assert rows and all(r["trials"] > 0 and r["passed"] == r["trials"] for r in rows), printed
    assert sum(r["corrupt_ready"] for r in rows) == 0
    table = out.read_text()
    assert HEADER in table and "quick (CI) form, seed 1" in table
    assert all(f"| {r['scenario']} | {r['trials']} | {r['passed']} |" in table for r in rows)


def test_table_marks_a_failed_row_and_escapes_pipes() -> None:
    """A failing row's first failures land in its notes, with `|` escaped so the table holds."""
    bad = Row("x. a row")
    bad.trial(True)
    bad.trial(False, "wrong | bytes\nready")
    table = run.render([bad], quick=True, seed=SEED, seconds=1.0)
    line = next(t for t in table.splitlines() if t.startswith("| x. a row |"))
    assert line.startswith("| x. a row | 2 | 1 | 0 | 0 |")
    assert "FAILED: wrong \\| bytes ready" in line and HEADER in table
