"""`preload diagnose`: the disk and CPU figures, the per-model predictions, the report, the metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import agent.cli.main  # noqa: F401 - registers the subcommands
from agent.cli.root import cli
from agent.errors import UsageError
from agent.node import metrics
from agent.ops.diagnose import BLOCK, Diagnosis, diagnose, estimates, render

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
