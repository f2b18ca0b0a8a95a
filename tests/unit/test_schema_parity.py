"""The chart's values.schema.json and the agent's parse() accept and refuse the same configs.

Documents are chart values ({models, config}); the agent reads what the chart's configmap
template makes of them (model-cache.config in templates/_helpers.tpl: `config` plus `models`,
through Helm's toYaml). The schema part is generated from agent/node/config.py by
scripts/gen-config-schema.py; these tests say the generated file is current and that the two
agree, example by example, on hand-picked and generated documents.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.node import config as agent_config
from agent.node.config import ConfigError, parse

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "charts" / "model-cache" / "values.schema.json"
GENERATOR = REPO / "scripts" / "gen-config-schema.py"

Values = dict[str, Any]


# --- the chart's side: schema and template ----------------------------------------------------


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_schema", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _go_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    """`pattern` as Helm's validator (Go regexp) reads it: `$` is the end of the text.

    Python's `$` also matches before a final newline, so "hf\\n" would pass `^(hf|...)$` here
    and fail in `helm install`.
    """
    if isinstance(instance, str) and not re.search(re.sub(r"(?<!\\)\$", r"\\Z", pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _validator() -> Any:
    """A validator for {models, config} with exactly the chart's rules for those two values."""
    props = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))["properties"]
    schema = {
        "type": "object",
        "required": ["models", "config"],
        "properties": {"models": props["models"], "config": props["config"]},
    }
    cls = jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": _go_pattern})
    cls.check_schema(schema)
    return cls(schema)


def schema_accepts(values: Values) -> bool:
    """Whether values.schema.json lets these values through."""
    return bool(_validator().is_valid(values))


class _GoText(str):
    """A number as Go's strconv.FormatFloat(x, 'g', -1, 64) writes it, emitted as plain YAML."""


def _go_float(x: float) -> _GoText:
    sign, digits, exp = Decimal(repr(x)).normalize().as_tuple()
    assert isinstance(exp, int)
    e10 = len(digits) + exp - 1
    if -4 <= e10 < 6:  # shortest 'g' switches to an exponent outside [1e-4, 1e6)
        return _GoText(format(Decimal(repr(x)), "f"))
    mantissa = "".join(map(str, digits))
    mantissa = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
    return _GoText(f"{'-' if sign else ''}{mantissa}e{'-' if e10 < 0 else '+'}{abs(e10):02d}")


def _helm_numbers(value: Any) -> Any:
    """Numbers as Helm passes them to the agent: float64 in values, JSON then yaml.v2 in toYaml.

    An integral float64 within int64 comes out as an int ("2"), any other in Go's 'g' format
    ("1e-05", "1.2345675e+06"), which YAML 1.1 alone would read as a string.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        f = float(value)
        return int(f) if f.is_integer() and -(2**63) <= f < 2**63 else _go_float(f)
    if isinstance(value, list):
        return [_helm_numbers(v) for v in value]
    return {k: _helm_numbers(v) for k, v in value.items()}


class _HelmDumper(yaml.SafeDumper):
    """Writes YAML as Helm's toYaml (Go yaml.v2) does, for what the agent can tell apart."""


# yaml.v2 reads "1e3" as a float, so it quotes such a string, where PyYAML would not.
_HelmDumper.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)
_HelmDumper.add_representer(
    _GoText,
    lambda dumper, text: dumper.represent_scalar(
        dumper.resolve(yaml.ScalarNode, str(text), (True, False)),  # type: ignore[no-untyped-call]
        str(text),
    ),
)


def render(values: Values) -> str:
    """The ConfigMap's config.yaml: `config` as it is, plus `models` (as the template does)."""
    doc = {**values["config"], "models": values["models"]}
    return yaml.dump(_helm_numbers(doc), Dumper=_HelmDumper, sort_keys=True)


def agent_error(values: Values) -> str | None:
    """The agent's complaint about the rendered config, or None if it takes it."""
    try:
        parse(render(values), "cfg")
    except ConfigError as exc:
        return str(exc)
    return None


# --- what JSON Schema cannot say ------------------------------------------------------------
# Four rules compare two values or add durations up; json_schema() lists them. Where only
# they make the agent refuse what the schema accepts, undo each and look again.


def _repair(values: Values, error: str) -> Values | None:
    """The values without what caused this cross-field error, or None if it is another error."""
    values = json.loads(json.dumps(values))  # a deep copy
    config, models = values["config"], values["models"]
    if m := re.fullmatch(r"cfg: model (.+) is listed twice", error):
        repo = m.group(1)
        ids = [(e if isinstance(e, str) else e["id"]).partition("@")[0] for e in models]
        del models[len(ids) - 1 - ids[::-1].index(repo)]
    elif re.fullmatch(r"cfg: gc: lowWatermarkPercent .* must be below highWatermarkPercent .*", error):
        del config["gc"]
    elif m := re.fullmatch(r"cfg: models\[(\d+)\]: model .* names revision .* but --revision says .*", error):
        del models[int(m.group(1))]["revision"]
    elif error.startswith("cfg: startupJitter: ") and "is too long" in error:
        if not isinstance(config["startupJitter"], str):
            return None  # a number is bounded by the schema's maximum
        del config["startupJitter"]
    else:
        return None
    return values


def assert_same_verdict(values: Values) -> None:
    """The schema and the agent agree, but for the cross-field rules the schema cannot state."""
    accepted = schema_accepts(values)
    error = agent_error(values)
    if accepted == (error is None):
        return
    assert accepted, f"the agent takes what the schema refuses: {values!r}\n{render(values)}"
    repaired = values
    while error is not None:
        undone = _repair(repaired, error)
        assert undone is not None, f"the schema takes what the agent refuses: {error}\n{render(values)}"
        repaired, error = undone, agent_error(undone)


# --- the generated schema --------------------------------------------------------------------


def test_committed_schema_is_the_generated_one() -> None:
    """values.schema.json holds exactly what scripts/gen-config-schema.py writes."""
    current = SCHEMA_FILE.read_text(encoding="utf-8")
    assert _load_generator().render(current) == current, "run: python scripts/gen-config-schema.py"


def test_schema_covers_every_key_the_parser_knows() -> None:
    """Adding a key to the parser without it in json_schema() fails here."""
    props = agent_config.json_schema()["properties"]
    assert set(props) == agent_config._TOP_KEYS
    assert set(props["defaults"]["properties"]) == agent_config._DEFAULTS_KEYS
    assert set(props["gc"]["properties"]) == agent_config._GC_KEYS
    model = next(s for s in props["models"]["items"]["anyOf"] if s.get("type") == "object")
    assert set(model["properties"]) == agent_config._MODEL_KEYS


def test_chart_defaults_and_ci_values_pass_both() -> None:
    """values.yaml and every ci/*-values.yaml pass the schema and the agent."""
    chart = SCHEMA_FILE.parent
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    for path in sorted((chart / "ci").glob("*-values.yaml")):
        values = yaml.safe_load(path.read_text())
        merged = {
            "models": values.get("models", defaults["models"]),
            "config": {**defaults["config"], **values.get("config", {})},
        }
        assert schema_accepts(merged) and agent_error(merged) is None, path.name


# --- named cases (the reported disagreements among them) ------------------------------------


def _values(models: Any = (), **config: Any) -> Values:
    return {"models": list(models) if isinstance(models, tuple) else models, "config": config}


NAMED: list[tuple[str, Values, bool]] = [
    ("allFiles", _values([{"id": "a/b", "allFiles": True}]), True),
    ("allFiles-not-bool", _values([{"id": "a/b", "allFiles": "yes"}]), False),
    ("duration-500us", _values(verifyInterval="500us"), False),
    ("duration-1d", _values(verifyInterval="1d"), True),
    ("duration-30s", _values(verifyInterval="30s"), True),
    ("duration-1h30m", _values(verifyInterval="1h30m"), True),
    ("duration-1.5h", _values(verifyInterval="1.5h"), True),
    ("duration-0", _values(verifyInterval="0"), True),
    ("duration-int-0", _values(verifyInterval=0), True),
    ("duration-int-600", _values(verifyInterval=600), True),
    ("duration-go-exponent", _values(verifyInterval=1234567.5), True),
    ("duration--1", _values(verifyInterval="-1"), False),
    ("duration-int--1", _values(verifyInterval=-1), False),
    ("duration-inf", _values(verifyInterval="inf"), False),
    ("duration-nan", _values(verifyInterval="nan"), False),
    ("duration-1e3", _values(verifyInterval="1e3"), False),
    ("duration-upper", _values(verifyInterval="1H"), False),
    ("duration-space", _values(verifyInterval=" 30s"), False),
    ("duration-bool", _values(verifyInterval=True), False),
    ("jitter-1h", _values(startupJitter="1h"), True),
    ("jitter-3600", _values(startupJitter=3600), True),
    ("jitter-3601", _values(startupJitter=3601), False),
    ("source-file-url", _values(defaults={"sources": ["file:///nfs"]}), True),
    ("source-file-localhost", _values([{"id": "a/b", "sources": ["file://localhost/nfs", "hf"]}]), True),
    ("source-file-host", _values(defaults={"sources": ["file://host/nfs"]}), False),
    ("source-file-query", _values(defaults={"sources": ["file:///nfs?x=1"]}), False),
    ("source-abs", _values(defaults={"sources": ["/abs/dir", "hf"]}), True),
    ("source-relative", _values(defaults={"sources": ["models/dir"]}), False),
    ("source-home", _values(defaults={"sources": ["~/models"]}), False),
    ("source-s3-short-bucket", _values(defaults={"sources": ["s3://x"]}), False),
    ("source-s3", _values(defaults={"sources": ["s3://models/prod", "hf"]}), True),
    ("source-s3-bucket-only", _values([{"id": "a/b", "sources": ["s3://models"]}]), True),
    ("source-s3-dotdot", _values(defaults={"sources": ["s3://models/a/../b"]}), False),
    ("source-s3-empty-part", _values(defaults={"sources": ["s3://models/a//b"]}), False),
    ("source-s3-query", _values(defaults={"sources": ["s3://models/a?versionId=1"]}), False),
    ("source-ftp", _values(defaults={"sources": ["ftp://x"]}), False),
    ("source-abs-with-scheme", _values(defaults={"sources": ["/a://b"]}), False),
    ("source-empty-list", _values(defaults={"sources": []}), False),
    ("bare-string-model", _values(["org/model@v1.0"]), True),
    ("bare-string-bad", _values(["org/model@"]), False),
    ("id-with-newline", _values([{"id": "org/model\n"}]), False),
    ("id-double-dash", _values([{"id": "org/mo--del"}]), False),
    ("id-trailing-dot", _values([{"id": "org./model"}]), False),
    ("id-96", _values([{"id": "o/" + "m" * 96}]), True),
    ("id-97", _values([{"id": "o/" + "m" * 97}]), False),
    ("id-rev-with-dashes", _values([{"id": "org/model@a--b"}]), True),
    ("id-name-dot-lock", _values([{"id": "org/model.lock"}]), True),
    ("id-rev-dot-lock", _values([{"id": "org/model@v.lock"}]), False),
    ("id-rev-brace", _values([{"id": "org/model@{x"}]), True),
    ("id-rev-at-brace", _values([{"id": "org/model@@{x"}]), False),
    ("revision-null", _values([{"id": "a/b", "revision": None}]), False),
    ("revision-int", _values([{"id": "a/b", "revision": 1234}]), False),
    ("revision-slashes", _values([{"id": "a/b", "revision": "refs/pr/1"}]), True),
    ("revision-255", _values([{"id": "a/b", "revision": "r" * 255}]), True),
    ("revision-256", _values([{"id": "a/b", "revision": "r" * 256}]), False),
    ("include-string", _values([{"id": "a/b", "include": "*.json"}]), True),
    ("include-empty-string", _values([{"id": "a/b", "include": ""}]), False),
    ("maxConcurrent-64", _values(maxConcurrent=64), True),
    ("maxConcurrent-65", _values(maxConcurrent=65), False),
    ("maxConcurrent-2.0", _values(maxConcurrent=2.0), True),
    ("gc-float", _values(gc={"highWatermarkPercent": 92.5, "lowWatermarkPercent": 85.5}), True),
    ("gc-low-0", _values(gc={"highWatermarkPercent": 90, "lowWatermarkPercent": 0}), False),
    ("gc-tiny", _values(gc={"highWatermarkPercent": 0.00005, "lowWatermarkPercent": 0.00001}), True),
    ("gc-partial", _values(gc={"highWatermarkPercent": 95}), True),
    ("config-unknown-key", _values(verify_interval="10m"), False),
    ("config-empty", _values(), True),
]


@pytest.mark.parametrize(("values", "accepted"), [(v, a) for _, v, a in NAMED], ids=[n for n, _, _ in NAMED])
def test_named_cases(values: Values, accepted: bool) -> None:
    """Schema and agent both give the expected verdict."""
    assert schema_accepts(values) is accepted, "schema"
    assert (agent_error(values) is None) is accepted, agent_error(values)


CROSS_FIELD: list[tuple[str, Values]] = [
    ("duplicate", _values(["a/b", {"id": "a/b@v1"}])),
    ("low-above-high", _values(gc={"highWatermarkPercent": 70, "lowWatermarkPercent": 80})),
    ("low-above-default-high", _values(gc={"lowWatermarkPercent": 95})),
    ("revision-conflict", _values([{"id": "a/b@v1", "revision": "v2"}])),
    ("jitter-string-too-long", _values(startupJitter="61m")),
]


@pytest.mark.parametrize("values", [v for _, v in CROSS_FIELD], ids=[n for n, _ in CROSS_FIELD])
def test_cross_field_rules_are_the_agents_alone(values: Values) -> None:
    """What JSON Schema cannot state: the schema lets it through, the agent refuses it."""
    assert schema_accepts(values)
    error = agent_error(values)
    assert error is not None and _repair(values, error) is not None, error
    assert_same_verdict(values)


# --- generated documents ------------------------------------------------------------------------
# Each value is mostly well formed and sometimes not (edge cases, wrong types, unknown keys),
# so that a document is often valid as a whole and its faults come one or two at a time.


def mostly(
    good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], odds: int = 4
) -> st.SearchStrategy[Any]:
    """`good` about `odds` times as often as `bad` (one_of would merge repeated branches)."""
    return st.sampled_from([True] * odds + [False]).flatmap(lambda ok: good if ok else bad)


def with_unknown(known: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A mapping that now and then carries a key the agent does not know."""
    extra = st.dictionaries(
        st.sampled_from(["colour", "Id", "all_files", "verify_interval", "Models"]), st.integers(), min_size=1
    )
    return st.builds(lambda k, x: {**k, **x}, known, mostly(st.just({}), extra, odds=8))


_scalar = st.one_of(
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),  # JSON, so Helm values, has neither
    st.text(max_size=6),
)
# No null where Helm would drop the key (config, defaults, gc): only in model entries.
wrong = st.one_of(
    _scalar, st.lists(_scalar, max_size=2), st.dictionaries(st.text(max_size=3), _scalar, max_size=2)
)

durations = mostly(
    st.one_of(
        st.sampled_from(["30s", "1h30m", "1d", "0", "1.5h", "90", "250ms", "1h", "59m60s", "10m", "0.5s"]),
        st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,2})?(ms|s|m|h|d)?([0-9]{1,2}(ms|s|m|h|d))?\Z"),
        st.integers(0, 4000),
        st.floats(0, 1e7),
    ),
    st.one_of(
        st.sampled_from(["500us", "-1", "61m", "3600.5", "2h", "1H", " 30s", "inf", "nan", "1e3", "", "s"]),
        st.sampled_from(["+5", ".5", "5.", "1h 30m", "\u0661s", "10ns", "1.5.h"]),
        st.text(alphabet="0123456789.smhdu -+e", max_size=6),
        st.integers(-5, -1),
        st.floats(-10, 0, exclude_max=True),
        wrong,
    ),
)
_name = st.sampled_from(["a", "b", "Llama-3.1", "x.y", "m_1", "Qwen2.5-0.5B", "a.lock"])
_bad_name = st.sampled_from(["a..b", "a--b", "a.", "a-", "-a", "_a", "", "a b", "m" * 97])
_rev_suffix = st.sampled_from(["", "", "@main", "@v1.0", "@a--b", "@{x", "@refs/pr/1"])
_bad_rev_suffix = st.sampled_from(["@", "@-x", "@a b", "@..", "@x.lock", "@x/", "@@{", "\n"])
ids = mostly(
    st.builds(lambda o, n, r: f"{o}/{n}{r}", _name, _name, _rev_suffix),
    st.one_of(
        st.builds(lambda o, n, r: f"{o}/{n}{r}", mostly(_name, _bad_name, 1), _bad_name, _rev_suffix),
        st.builds(lambda o, n, r: f"{o}/{n}{r}", _name, _name, _bad_rev_suffix),
        st.sampled_from(["a/b/c", "ab", "org/model\n", "a/b@x\n"]),
        st.text(alphabet="ab9._-/@", min_size=1, max_size=8),
    ),
)
revisions = mostly(
    st.sampled_from(["main", "v1.0", "refs/pr/1", "a" * 40, "a--b", "{x", "r" * 255, "\u00e9t\u00e9"]),
    st.one_of(
        st.sampled_from(["a..b", "x.lock", "-x", ".x", "/x", "x/", "x.", "a//b", "a@{1}", "a b", "a~1"]),
        st.sampled_from(["a:b", "a^", "a?", "a*", "a[", "a\\b", "a\x7f", "a\nb", "", "r" * 256]),
        st.text(alphabet="ab0.-_/@{~:^ \n\x7f", min_size=1, max_size=8),
        st.text(max_size=4),
        wrong,
        st.none(),
    ),
    odds=2,
)
_source = mostly(
    st.sampled_from(
        [
            *("hf", "/abs/dir", "file:///nfs", "file://localhost/nfs", "/", "file:///", "/a b", "/a?b"),
            *("s3://bkt", "s3://bkt/", "s3://My_Bkt.1/a/b/", "s3://bkt/..x/y", "s3://bkt/a(1)/b=2"),
        ]
    ),
    st.one_of(
        st.sampled_from(
            ["file://host/nfs", "relative/path", "./x", "~/x", "s3://x", "ftp://x", "HF", "/a://b"]
        ),
        st.sampled_from(
            [
                "s3://a..b/x",
                "s3://bkt/./x",
                "s3://bkt/x/..",
                "s3://bkt//",
                "s3://bkt/a b",
                "S3://bkt",
                "s3:/bkt",
            ]
        ),
        st.sampled_from(["file:///a?b", "file:///a#b", "file://", "", "/a\nb", "file:relative", "FILE:///x"]),
        st.sampled_from(["hf://x", "file:///a%20b", "file://[x/"]),
        st.text(alphabet="/:hf.ab?#~", min_size=1, max_size=8),
        wrong,
    ),
)
sources = mostly(st.lists(_source, min_size=1, max_size=3), st.one_of(st.just([]), wrong), odds=6)
layouts = mostly(
    st.sampled_from(["dir", "hf-cache"]), st.one_of(st.sampled_from(["flat", "HF-CACHE", ""]), wrong)
)
_glob = mostly(st.sampled_from(["*.json", "original/", "*", "*.safetensors"]), st.one_of(st.just(""), wrong))
globs = mostly(st.lists(_glob, max_size=3), st.one_of(_glob, wrong), odds=3)
bools = mostly(st.booleans(), wrong)
percents = mostly(
    st.one_of(st.integers(1, 100), st.floats(0, 100, exclude_min=True), st.sampled_from([0.00005, 1e-10])),
    st.one_of(st.integers(-10, 0), st.integers(101, 200), st.floats(100, 1e6, exclude_min=True), wrong),
)
model_objects = with_unknown(
    st.builds(
        lambda model_id, rest: {"id": model_id, **rest} if model_id is not None else rest,
        mostly(ids, st.none(), odds=12),  # None: the entry has no id
        st.fixed_dictionaries(
            {},
            optional={
                "revision": revisions,
                "required": bools,
                "pinned": bools,
                "layout": layouts,
                "sources": sources,
                "include": globs,
                "exclude": globs,
                "allFiles": bools,
            },
        ),
    )
)
models = mostly(st.lists(mostly(st.one_of(ids, model_objects), wrong, odds=8), max_size=3), wrong, odds=10)
configs = with_unknown(
    st.fixed_dictionaries(
        {},
        optional={
            "defaults": mostly(
                with_unknown(st.fixed_dictionaries({}, optional={"sources": sources, "layout": layouts})),
                wrong,
            ),
            "maxConcurrent": mostly(st.integers(1, 64), st.sampled_from([0, -1, 65, 2.0, 2.5, True, "2"])),
            "verifyInterval": durations,
            "startupJitter": durations,
            "gc": mostly(
                with_unknown(
                    st.fixed_dictionaries(
                        {}, optional={"highWatermarkPercent": percents, "lowWatermarkPercent": percents}
                    )
                ),
                wrong,
            ),
        },
    )
)


@settings(
    derandomize=True,  # the same examples on every run: CI stays deterministic
    database=None,
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.builds(lambda m, c: {"models": m, "config": c}, models, configs))
@example(_values([{"id": "a/b", "allFiles": True}]))
@example(_values(verifyInterval="500us"))
@example(_values(verifyInterval="1d"))
@example(_values(defaults={"sources": ["file:///nfs"]}))
@example(_values(startupJitter="1.5h"))
@example(_values([{"id": "a/b", "sources": ["relative/path"]}]))
def test_schema_and_agent_agree(values: Values) -> None:
    """Any values: the schema accepts them exactly when the agent accepts what the chart renders."""
    assert_same_verdict(values)
