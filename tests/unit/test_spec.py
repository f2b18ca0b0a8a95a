"""Model ids, revisions, durations and the default vLLM file filter."""

from __future__ import annotations

import pytest

from agent.errors import UsageError
from agent.spec import FileFilter, parse_duration, parse_model, validate_repo_id

REPO_FILES = [
    "config.json",
    "model-00001-of-00002.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "original/consolidated.00.pth",
    "consolidated.safetensors",
    "model.gguf",
    "tokenizer.json",
    "1_Pooling/config.json",
]


@pytest.mark.parametrize(
    "good", ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-0.5B", "a/b", "org_1/x.y"]
)
def test_valid_repo_ids_pass(good: str) -> None:
    """Real-world hub ids are accepted unchanged."""
    assert validate_repo_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "gpt2", "a/b/c", "../x", "a/..", "a/b c", "a/-b", "a/b-", "a--b/c", "/a/b", "a/b\n", "a\n/b"]
)
def test_invalid_repo_ids_fail(bad: str) -> None:
    """Ids that are not ORG/NAME, or could traverse paths, are usage errors."""
    with pytest.raises(UsageError):
        validate_repo_id(bad)


def test_model_with_revision_and_conflicts() -> None:
    """@REV is split off; a matching --revision is fine, a different one is an error."""
    assert parse_model("a/b@v1.0") == ("a/b", "v1.0")
    assert parse_model("a/b", None) == ("a/b", "main")
    assert parse_model("a/b@refs/pr/1", "refs/pr/1") == ("a/b", "refs/pr/1")
    with pytest.raises(UsageError):
        parse_model("a/b@v1", "v2")
    for bad in ("a/b@", "a/b@x..y", "a/b@-x", "a/b@x y", "a/b@x.lock"):
        with pytest.raises(UsageError):
            parse_model(bad)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25)]
)
def test_durations(text: str, seconds: float) -> None:
    """Plain seconds and unit suffixes parse to seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "5x", "-3", "1h-2m", "m5"])
def test_bad_durations(bad: str) -> None:
    """Anything else is a usage error."""
    with pytest.raises(UsageError):
        parse_duration(bad)


def test_default_filter_skips_duplicate_weights_when_safetensors_exist() -> None:
    """With safetensors present, .bin/.pth/.gguf/original/consolidated* are skipped; the rest kept."""
    assert FileFilter().select(REPO_FILES) == [
        "1_Pooling/config.json",
        "config.json",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
    ]


def test_default_filter_keeps_everything_without_safetensors() -> None:
    """A .bin-only repo keeps its weights."""
    files = ["config.json", "pytorch_model.bin"]
    assert FileFilter().select(files) == files


def test_include_exclude_override_and_all_files() -> None:
    """--include/--exclude replace the default filter; --all-files takes everything."""
    assert FileFilter(include=("*.json",)).select(REPO_FILES) == [
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
    ]
    assert "pytorch_model.bin" in FileFilter(exclude=("*.gguf",)).select(REPO_FILES)
    assert FileFilter(exclude=("1_Pooling/",)).select(["1_Pooling/config.json", "a"]) == ["a"]
    assert FileFilter(all_files=True).select(REPO_FILES) == sorted(REPO_FILES)


def test_mistral_format_only_weights_are_kept() -> None:
    """A repo whose only safetensors are `consolidated*` keeps them: they are not duplicates."""
    files = ["consolidated.safetensors", "params.json", "tekken.json"]
    assert FileFilter().select(files) == files
    both = [*files, "model-00001-of-00002.safetensors", "config.json"]
    assert FileFilter().select(both) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "params.json",
        "tekken.json",
    ]
