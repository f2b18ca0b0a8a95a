"""README.md "Try every command offline": its commands, as written, against `preload demo --serve`.

The block between the try-offline markers is run by bash exactly as the README shows it, but for
the two ports (8765: the demo hub, 8766: the agent), which become free ones, and `.venv/bin/preload`,
which is a shim for this interpreter's `python -m agent` in the test's own working directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import base_env, free_port

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- try-offline:begin -->", "<!-- try-offline:end -->"


def readme_block() -> str:
    """The shell commands between the markers (the fenced block's body)."""
    text = README.read_text()
    section = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    m = re.search(r"```sh\n(.*?)```", section, re.S)
    assert m, "no ```sh block between the try-offline markers"
    return m.group(1)


@pytest.fixture
def served_demo(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """`preload demo --serve --port P` in its own process; (its first output line, P)."""
    port = free_port()
    cwd = tmp_path / "serve-cwd"
    cwd.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "demo", "--serve", "--port", str(port)],
        cwd=cwd,
        env=base_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    said = [proc.stdout.readline() for _ in range(3)]
    assert "stop it with Ctrl-C" in said[2], said
    try:
        yield said[0], port
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert not any(cwd.iterdir())  # --serve writes nothing


def test_readme_documents_the_serve_command() -> None:
    """The section names `preload demo --serve` and its default port, which the CLI really uses."""
    from agent.cli.demo import DEMO_PORT

    text = README.read_text()
    section = text[text.index("## Try every command offline") : text.index(END)]
    assert ".venv/bin/preload demo --serve" in section and f"127.0.0.1:{DEMO_PORT}" in section


def test_every_readme_command_works_as_written(tmp_path: Path, served_demo: tuple[str, int]) -> None:
    """The whole block runs with `bash -e` against the served demo hub and does what it says."""
    first, hub_port = served_demo
    assert f"http://127.0.0.1:{hub_port}" in first
    work = tmp_path / "checkout"
    shim = work / ".venv" / "bin" / "preload"
    shim.parent.mkdir(parents=True)
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m agent "$@"\n')
    shim.chmod(0o755)
    script = readme_block().replace(":8765", f":{hub_port}").replace(":8766", f":{free_port()}")
    env = base_env(tmp_path, {"PATH": os.environ["PATH"], "PYTHONPATH": str(README.parent)})
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "sound (deep: 8 files" in out
    assert "verify exited 8" in out and "1 missing" in out
    assert "repaired 1" in out
    assert "wait exited 7" in out or "wait exited 7" in proc.stderr
    assert re.search(r"demo-org/tiny-model\s+dir\s+main", out) and "hf-cache" in out
    assert "target" in out  # gc's report
    assert '"state": "ready"' in out or '"state":"ready"' in out
    assert "published revision is main" in proc.stderr
    assert (work / "demo-cache" / "demo-org" / "tiny-model" / "config.json").is_file()
