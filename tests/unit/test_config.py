"""Agent config parsing and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.node.config import ConfigError, load, parse
from agent.spec import Layout

FULL = """
models:
  - id: meta-llama/Llama-3.1-8B-Instruct
    revision: main
    required: true
    pinned: true
  - id: org/other-model
    sources: [/nfs-models, hf]
    layout: hf-cache
    include: ["*.safetensors", "*.json"]
    exclude: [original/]
    required: false
  - org/third@v1.0
defaults: {sources: [hf], layout: dir}
maxConcurrent: 3
verifyInterval: 5m
startupJitter: 30s
gc: {highWatermarkPercent: 85, lowWatermarkPercent: 70}
"""


def test_full_example_parses() -> None:
    """Every documented key lands in the right field, with defaults filled in."""
    c = parse(FULL)
    first, second, third = c.models
    assert first.id == "meta-llama/Llama-3.1-8B-Instruct" and first.pinned and first.required
    assert first.sources == ("hf",) and first.spec.layout is Layout.DIR
    assert second.sources == ("/nfs-models", "hf") and second.spec.layout is Layout.HF_CACHE
    assert second.spec.files.include == ("*.safetensors", "*.json") and not second.required
    assert third.spec.revision == "v1.0" and not third.pinned
    assert (c.max_concurrent, c.verify_interval, c.startup_jitter) == (3, 300.0, 30.0)
    assert (c.gc.high_watermark_percent, c.gc.low_watermark_percent) == (85.0, 70.0)


def test_empty_file_is_an_empty_config() -> None:
    """No models is valid: the agent is ready and does nothing."""
    c = parse("")
    assert c.models == () and c.max_concurrent == 2


def test_defaults_apply_to_models() -> None:
    """defaults.sources and defaults.layout are used where a model says nothing."""
    c = parse("defaults: {sources: [/shared, hf], layout: hf-cache}\nmodels: [a/b]\n")
    assert c.models[0].sources == ("/shared", "hf") and c.models[0].spec.layout is Layout.HF_CACHE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [{id: a/b, colour: red}]", "unknown key(s) colour"),
        ("modelz: []", "unknown key(s) modelz"),
        ("models: [{revision: main}]", "id is required"),
        ("models: [{id: not-a-repo}]", "invalid model id"),
        ("models: [{id: a/b, revision: 'bad..rev'}]", "invalid revision"),
        ("models: [a/b, a/b]", "listed twice"),
        ("models: [{id: a/b, layout: flat}]", "unknown layout"),
        ("models: [{id: a/b, required: 'yes'}]", "expected true or false"),
        ("models: [{id: a/b, sources: []}]", "non-empty list"),
        ("models: {id: a/b}", "models must be a list"),
        ("maxConcurrent: 0", "maxConcurrent"),
        ("maxConcurrent: true", "maxConcurrent"),
        ("verifyInterval: soon", "invalid duration"),
        ("startupJitter: 2h", "startupJitter: '2h' is too long; at most 1h"),
        ("gc: {highWatermarkPercent: 70, lowWatermarkPercent: 80}", "must be below"),
        ("gc: {highWatermarkPercent: 120}", "percentage"),
        ("models: [a/b", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_invalid_configs_are_clear_errors(text: str, message: str) -> None:
    """Each defect is one ConfigError that names what is wrong."""
    with pytest.raises(ConfigError, match=r"^cfg") as err:
        parse(text, "cfg")
    assert message in str(err.value)


def test_startup_jitter_up_to_an_hour_is_valid() -> None:
    """startupJitter is bounded at one hour, inclusive."""
    assert parse("startupJitter: 1h").startup_jitter == 3600.0


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file is reported with its path."""
    with pytest.raises(ConfigError, match="cannot read config"):
        load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("verifyInterval: nan", "invalid duration 'nan'"),
        ("verifyInterval: .nan", "finite number of seconds"),
        ("verifyInterval: .inf", "finite number of seconds"),
        ("verifyInterval: '1e3'", "invalid duration '1e3'"),
        ("verifyInterval: 1H", "invalid duration '1H'"),
        ("verifyInterval: ' 30s'", "invalid duration ' 30s'"),
        ("verifyInterval: 500us", "invalid duration '500us'"),
        ("verifyInterval: -1", "finite number of seconds"),
        ("verifyInterval: '-1'", "invalid duration '-1'"),
        ("defaults: {sources: [models]}", "unsupported source 'models'"),
        ("defaults: {sources: ['~/models']}", "unsupported source"),
        ("defaults: {sources: ['file://host/x']}", "unsupported source"),
        ("defaults: {sources: ['file://[x/']}", "unsupported source"),
        ("defaults: {sources: ['/a://b']}", "unsupported source"),
        ('models: [{id: "a/b\\n"}]', "invalid model id"),
        ("models: [{id: a/b, revision: null}]", "revision: expected a non-empty string"),
        ("maxConcurrent: 65", "maxConcurrent"),
    ],
)
def test_what_the_schema_also_refuses(text: str, message: str) -> None:
    """Values the spec's own checks let through, refused like the chart's schema does."""
    with pytest.raises(ConfigError) as err:
        parse(text, "cfg")
    assert message in str(err.value)


def test_durations_sources_and_filters() -> None:
    """Days, fractions and plain seconds; file:// sources; allFiles; a bare include string."""
    c = parse(
        "verifyInterval: 1d\nstartupJitter: 0.5h\n"
        "models: [{id: a/b, sources: ['file:///nfs', hf], allFiles: true, include: '*.json'}]\n"
    )
    assert (c.verify_interval, c.startup_jitter) == (86400.0, 1800.0)
    (m,) = c.models
    assert m.sources == ("file:///nfs", "hf") and m.spec.files.all_files
    assert m.spec.files.include == ("*.json",)
    assert parse("verifyInterval: 90").verify_interval == 90.0
    assert parse("verifyInterval: '0'").verify_interval == 0.0


def test_go_style_floats_from_helm_are_numbers() -> None:
    """Helm writes 0.00001 as 1e-05 and 1234567.5 as 1.2345675e+06: both are numbers here."""
    c = parse(
        "gc: {highWatermarkPercent: 5e-05, lowWatermarkPercent: 1e-05}\nverifyInterval: 1.2345675e+06\n"
    )
    assert (c.gc.high_watermark_percent, c.gc.low_watermark_percent) == (5e-05, 1e-05)
    assert c.verify_interval == 1234567.5
