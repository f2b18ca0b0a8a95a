"""The demo model is real: its weights and tokenizer load with the real libraries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from agent.devhub.demo_model import DEMO_REPO_ID, demo_files, demo_repo


def _write(tmp_path: Path) -> Path:
    for file in demo_files():
        target = tmp_path / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.data or b"")
    return tmp_path


def test_files_and_repo_id() -> None:
    """The demo repo has the files a small sentence-transformers model has."""
    repo = demo_repo()
    assert repo.repo_id == DEMO_REPO_ID
    assert set(repo.files()) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "1_Pooling/config.json",
        "model.safetensors",
        "pytorch_model.bin",
    }
    weights = repo.files()["model.safetensors"]
    assert weights.is_lfs and repo.files()["pytorch_model.bin"].is_lfs
    assert 100_000 < weights.size < 1_000_000


def test_build_is_deterministic() -> None:
    """Two builds give identical bytes and the same commit."""
    assert [f.data for f in demo_files()] == [f.data for f in demo_files()]
    assert demo_repo().commit == demo_repo().commit


def test_safetensors_load_and_match_config(tmp_path: Path) -> None:
    """safetensors loads the weights, and their shapes agree with config.json."""
    folder = _write(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    hidden = config["hidden_size"]
    word = tensors["embeddings.word_embeddings.weight"]
    assert word.shape == (config["vocab_size"], hidden) and word.dtype == np.float32
    layers = {k.split(".")[2] for k in tensors if k.startswith("encoder.layer.")}
    assert len(layers) == config["num_hidden_layers"]
    inter = tensors["encoder.layer.0.intermediate.dense.weight"]
    assert inter.shape == (config["intermediate_size"], hidden)
    assert np.all(tensors["embeddings.LayerNorm.weight"] == 1.0)
    assert 0 < float(np.abs(word).max()) <= 0.02


def test_tokenizer_loads_and_encodes(tmp_path: Path) -> None:
    """tokenizers loads tokenizer.json and encodes with [CLS]/[SEP] and [UNK]."""
    folder = _write(tmp_path)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    config = json.loads((folder / "config.json").read_text())
    assert tokenizer.get_vocab_size() == config["vocab_size"]
    encoding = tokenizer.encode("The model cache zebra")
    assert encoding.tokens == ["[CLS]", "the", "model", "cache", "[UNK]", "[SEP]"]
    special = json.loads((folder / "special_tokens_map.json").read_text())
    assert tokenizer.token_to_id(special["pad_token"]) == config["pad_token_id"]
