"""Whatever the preloader's umask, another uid (the model server's) can read what it published."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.devhub import HubServer
from agent.devhub.demo_model import DEMO_REPO_ID
from agent.spec import Layout, ModelSpec
from agent.store import Store
from tests.conftest import base_env

NOBODY = 65534
# Only the preloader opens these: readers never do, so their modes are its own business.
PRIVATE = (".preload/locks", ".preload/staging")


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is 0700 on the way down)."""
    base = Path(tempfile.mkdtemp(prefix="preload-modes-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def preload_with_umask(tmp_path: Path, hub: HubServer, dest: Path, *extra: str) -> None:
    """Run `preload` under umask 077 (as a locked-down init container may)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "--model",
            DEMO_REPO_ID,
            "--dest",
            str(dest),
            "--endpoint",
            hub.url,
            *extra,
        ],
        env=base_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=lambda: os.umask(0o077),
    )
    assert proc.returncode == 0, proc.stderr


def reader_modes(dest: Path) -> dict[str, int]:
    """Mode bits of every directory and file under DIR that readers may open (links skipped)."""
    modes = {".": stat.S_IMODE(dest.stat().st_mode)}
    for dirpath, dirs, names in os.walk(dest):
        rel = Path(dirpath).relative_to(dest)
        dirs[:] = [d for d in dirs if (rel / d).as_posix() not in PRIVATE]
        for name in dirs + names:
            st = os.lstat(Path(dirpath) / name)
            if not stat.S_ISLNK(st.st_mode):
                modes[(rel / name).as_posix()] = stat.S_IMODE(st.st_mode)
    return modes


@pytest.mark.parametrize("layout", ["dir", "hf-cache"])
def test_umask_077_still_publishes_world_readable(
    hub: HubServer, tmp_path: Path, open_base: Path, layout: str
) -> None:
    """Every directory readers traverse is 0755 and every file 0444, and uid 65534 reads the weights."""
    dest = open_base / "cache"
    preload_with_umask(tmp_path, hub, dest, "--layout", layout)
    modes = reader_modes(dest)
    wrong = {
        path: oct(mode)
        for path, mode in modes.items()
        if mode != (0o755 if (dest / path).is_dir() else 0o444)
    }
    assert not wrong, wrong
    assert ".preload/markers" in modes and ".preload" in modes
    if os.geteuid() != 0:
        pytest.skip("reading as another uid needs root (os.setuid)")
    spec = ModelSpec(DEMO_REPO_ID, layout=Layout(layout))
    store = Store(dest)
    m = store.read_marker(spec)
    assert m is not None
    weights = store.reader_path(spec, m) / "model.safetensors"
    marker = store.marker_path(spec)
    code = (
        f"import os, sys; os.setgid({NOBODY}); os.setuid({NOBODY}); "
        "[open(p, 'rb').read() for p in sys.argv[1:]]"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(weights), str(marker)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
