"""`preload diagnose`: the disk and CPU figures, the per-model predictions, the report, the metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent import log
from agent.cli.main import main  # registers the subcommands too
from agent.cli.root import cli
from agent.devhub import HubFile, HubRepo
from agent.errors import ExitCode, UsageError
from agent.node import metrics
from agent.ops.diagnose import BLOCK, Diagnosis, diagnose, estimates, render
from tests.hubfixtures import HubFactory

MB = 1_000_000


def _node(**kw: float) -> Diagnosis:
    figures: dict[str, float] = {"write_bps": 2000 * MB, "read_bps": 2000 * MB, "hash_bps": 1000 * MB}
    figures.update(kw)
    return Diagnosis(
        "/data/models", BLOCK, True, figures["write_bps"], figures["read_bps"], 10**12, 2 * 10**12,
        figures["hash_bps"], 2, 1250 * MB, (),
    )  # fmt: skip


def test_a_small_run_measures_the_volume_and_leaves_nothing(tmp_path: Path) -> None:
    """Write, read and hash rates are measured; the temporary file is gone afterwards."""
    d = diagnose(tmp_path, 2 * BLOCK)
    assert d.write_bps > 0 and d.read_bps > 0 and d.hash_bps > 0
    assert d.free_bytes > 0 and d.total_bytes >= d.free_bytes and d.cores >= 1
    assert d.models == () and d.test_bytes == 2 * BLOCK
    assert list(tmp_path.iterdir()) == []


def test_a_test_file_over_half_the_free_space_is_refused(tmp_path: Path) -> None:
    """On a nearly full volume the probe would hurt the node: a usage error instead."""
    with pytest.raises(UsageError, match="half"):
        diagnose(tmp_path, 1 << 60)


def test_predictions_follow_the_slowest_of_link_disk_and_hashing() -> None:
    """Cold read from the read rate; download bounded by link, disk write, or sha256 on the files' cores."""
    node = _node()
    one, many = estimates(node, [("a/one", "dir", 10 * 10**9, 1), ("a/many", "dir", 10 * 10**9, 4)])
    assert one.cold_read_s == 5.0, "10 GB at 2000 MB/s"
    assert one.download_s == 10.0, "one file: one core hashes, 1000 MB/s"
    assert many.download_s == 8.0, "four files: two cores hash 2000 MB/s, the link carries 1250 MB/s"
    slow_disk = replace(node, write_bps=500 * MB)
    assert estimates(slow_disk, [("a/many", "dir", 10 * 10**9, 4)])[0].download_s == 20.0, "the disk"


def test_the_report_and_the_json_name_every_figure(tmp_path: Path) -> None:
    """The text report has a row per model; --json parses and carries the same figures."""
    node = replace(_node(), models=estimates(_node(), [("org/model", "dir", 10**9, 1)]))
    text = render(node)
    assert "cold read 2,000 MB/s" in text and "org/model" in text and "limit: link" in text
    result = CliRunner().invoke(cli, ["diagnose", "--dest", str(tmp_path), "--test-size", "4MiB", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["test_bytes"] == BLOCK and doc["write_bps"] > 0 and doc["models"] == []


def test_the_agent_exports_the_figures() -> None:
    """The start-up diagnosis becomes gauges, one cold-read prediction per model."""
    node = replace(_node(), models=estimates(_node(), [("org/model", "dir", 10**9, 1)]))
    metrics.record_diagnosis(node)
    text = metrics.exposition()[0].decode()
    assert "model_cache_disk_read_bytes_per_second 2e+09" in text
    assert 'model_cache_model_cold_read_seconds{model="org/model"} 0.5' in text


def test_an_agent_config_gets_a_prediction_per_named_model(
    hub_factory: HubFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--config: the models it names, in its order: a published one sized by its manifest, one not
    here yet by its listing (its include/exclude applied), one no source lists gets a row saying
    why; models under DIR that the config does not name are left out."""
    big = b"w" * (3 * MB)
    hub = hub_factory(
        [
            HubRepo("org/here", [HubFile("config.json", data=b"{}"), HubFile("model.safetensors", data=big)]),
            HubRepo(
                "org/there",
                [
                    HubFile("config.json", data=b'{"a": 1}'),
                    HubFile("model.safetensors", data=big + big),
                    HubFile("notes.bin", data=b"n" * MB),
                ],
            ),
            HubRepo("org/unnamed", [HubFile("config.json", data=b"{}")]),
        ]
    )
    dest = tmp_path / "cache"
    dest.mkdir()
    monkeypatch.setattr(log, "configure", lambda _format: None)  # keep logging off the runner's stream
    runner = CliRunner()
    for repo in ("org/here", "org/unnamed"):
        done = runner.invoke(cli, ["--model", repo, "--dest", str(dest), "--endpoint", hub.url])
        assert done.exit_code == 0, done.output
    config = tmp_path / "config.yaml"
    config.write_text(
        "models:\n  - id: org/missing\n  - id: org/there\n    exclude: ['*.bin']\n  - org/here\n"
    )
    args = [
        "diagnose",
        "--dest",
        str(dest),
        "--test-size",
        "4MiB",
        "--config",
        str(config),
        "--endpoint",
        hub.url,
    ]
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    rows = {m["repo"]: m for m in json.loads(result.output)["models"]}
    assert list(rows) == ["org/missing", "org/there", "org/here"]
    assert rows["org/here"]["sized_by"] == "cache" and rows["org/here"]["bytes"] == len(big) + 2
    assert rows["org/there"]["sized_by"] == "listing" and rows["org/there"]["bytes"] == 2 * len(big) + 8
    doc = json.loads(result.output)
    assert rows["org/there"]["cold_read_s"] == round(rows["org/there"]["bytes"] / doc["read_bps"], 2)
    assert (
        rows["org/missing"]["sized_by"].startswith("unknown: ")
        and "not found" in rows["org/missing"]["sized_by"]
    )
    assert rows["org/missing"]["bytes"] == 0
    text = runner.invoke(cli, args)
    assert text.exit_code == 0, text.output
    assert "not here yet" in text.output and "org/missing  dir       unknown: " in text.output


def test_a_bad_config_is_a_usage_error_before_anything_is_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config the agent would refuse is refused here too (exit 2), and no test file is written."""
    config = tmp_path / "config.yaml"
    config.write_text("models:\n  - id: not-a-model-id\n")
    dest = tmp_path / "cache"
    dest.mkdir()
    monkeypatch.setattr(log, "configure", lambda _format: None)  # keep logging off capsys' stream
    with pytest.raises(SystemExit) as exited:
        main(["diagnose", "--dest", str(dest), "--config", str(config)])
    assert exited.value.code == ExitCode.USAGE
    assert list(dest.iterdir()) == []
