"""The hub token as the hub client finds it, without importing the client where that is plain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.sources.hub import default_token


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No token in the environment, a home with no token file: returns HF_HOME."""
    for key in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_OIDC_RESOURCE",
        "HUGGINGFACE_CO_STAGING",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_an_environment_token_wins_and_is_cleaned(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_TOKEN first, then HUGGING_FACE_HUB_TOKEN, newlines and spaces removed, as the client does."""
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_legacy")
    assert default_token(None) == "hf_legacy"
    monkeypatch.setenv("HF_TOKEN", " hf_abc\n")
    assert default_token(None) == "hf_abc"


def test_a_token_file_is_read_by_the_client(clean_env: Path) -> None:
    """A token file under HF_HOME (which the client may refresh): the client's own answer."""
    clean_env.mkdir()
    (clean_env / "token").write_text("hf_from_file\n")
    # In a fresh process: the client fixes its token path when first imported, and another test
    # of this run may have imported it under another HF_HOME.
    code = "from agent.sources.hub import default_token; print(default_token(None))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["hf_from_file"]


def test_no_token_anywhere_is_none_without_importing_the_client(clean_env: Path) -> None:
    """Anonymous: None, and huggingface_hub (~0.1 core-second to import) is never loaded."""
    code = (
        "import sys; from agent.sources.hub import default_token; "
        "print(default_token(None), 'huggingface_hub' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "False"]
