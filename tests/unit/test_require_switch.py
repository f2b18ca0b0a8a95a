"""MODEL_CACHE_TEST_REQUIRE turns a missing tool's skip into a failure (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REQUIRABLE, REQUIRE_ENV, required_tools, tool_unavailable


def test_without_the_switch_a_missing_tool_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default a test that cannot run its tool is skipped."""
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no helm here"):
        tool_unavailable("helm", "no helm here")


@pytest.mark.parametrize(
    ("value", "tool"), [("helm,podman", "podman"), (" checkov ", "checkov"), ("all", "helm")]
)
def test_a_required_tool_fails(monkeypatch: pytest.MonkeyPatch, value: str, tool: str) -> None:
    """A tool the switch names (or `all`) fails the test, saying why."""
    monkeypatch.setenv(REQUIRE_ENV, value)
    with pytest.raises(pytest.fail.Exception, match=f"{tool} is required .*: it is gone"):
        tool_unavailable(tool, "it is gone")


def test_other_tools_still_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the named tools are required."""
    monkeypatch.setenv(REQUIRE_ENV, "helm")
    with pytest.raises(pytest.skip.Exception):
        tool_unavailable("podman", "no podman")
    monkeypatch.setenv(REQUIRE_ENV, "all")
    assert required_tools() == set(REQUIRABLE)


def test_a_misspelt_tool_is_a_usage_error() -> None:
    """An unknown name stops the run at start-up instead of requiring nothing."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", __file__],
        env={**os.environ, REQUIRE_ENV: "all,podmann"},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "podmann" in proc.stderr
