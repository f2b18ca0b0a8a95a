"""The agent's YAML config (what a ConfigMap mounts): parsed into frozen values, fully validated.

```yaml
models:
  - id: meta-llama/Llama-3.1-8B-Instruct
    revision: main        # branch, tag or commit; resolved to a commit once
    required: true        # counts for /readyz
    pinned: true          # never garbage-collected
  - id: org/other-model
    sources: [/nfs-models, hf]
defaults: {sources: [hf], layout: dir}
maxConcurrent: 2
verifyInterval: 10m
startupJitter: 0s
gc: {highWatermarkPercent: 90, lowWatermarkPercent: 80}
```
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.errors import UsageError
from agent.sources.registry import check as check_source
from agent.sources.s3loc import S3_URL_FORBIDDEN, S3_URL_PATTERN
from agent.spec import FileFilter, Layout, ModelSpec, parse_duration, parse_model

DEFAULT_MAX_CONCURRENT = 2
DEFAULT_VERIFY_INTERVAL = 600.0
MAX_STARTUP_JITTER = 3600.0  # longer only delays a node's cache for no gain
MAX_CONFIG_BYTES = 1 << 20


# --- the grammar, shared with the chart ----------------------------------------------------
# The chart's values.schema.json is written from json_schema() below by
# scripts/gen-config-schema.py, so `helm install` refuses what the agent would refuse at start.
# Each pattern is checked here *in addition to* the spec's own validators (which stay the
# authority on ids and revisions); tests/unit/test_schema_parity.py shows the two agree.
# Patterns use only syntax Python, Go's RE2 (Helm's validator) and ECMA-262 read alike:
# no \d (Unicode digits in Python), no lookaround (RE2 has none); the parser uses fullmatch,
# as `$` in Python also matches before a trailing newline.
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"  # one half of ORG/NAME (spec._NAME_RE)
_REV_CHAR = r"[^ ~\^:?*\[\\\x00-\x1f\x7f]"  # not spec._BAD_REF_CHARS, not a control character
_REV_FIRST = r"[^ ~\^:?*\[\\\x00-\x1f\x7f/.-]"
_REVISION = f"{_REV_FIRST}{_REV_CHAR}{{0,254}}"  # at most 255 characters
REVISION_PATTERN = f"^{_REVISION}$"
REVISION_FORBIDDEN = r"\.\.|//|@\{|[/.]$|\.lock$"
# ORG/NAME, optionally @REVISION (the same revision rules, applied after the first '@').
ID_PATTERN = f"^{_PART}/{_PART}(@{_REVISION})?$"
ID_FORBIDDEN = r"\.\.|^[^@]*--|^[^@]*[.-](/|@|$)|@.*(//|@\{|[/.]$|\.lock$)"
# A number of seconds, or number+unit terms (Go style plus days; lowercase, no spaces).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+)$"
# `hf`, an absolute directory, a file:// URL of one (no host but localhost, no query), or a
# bucket (s3.S3_URL_PATTERN). Relative paths would be relative to the agent's working
# directory: never what a node means.
SOURCE_PATTERN = rf"^(hf|/[^\x00-\x1f\x7f]*|file://(localhost)?/[^?#\x00-\x1f\x7f]*|{S3_URL_PATTERN})$"
# parse_location reads any '://' as a URL and refuses it; then the bucket URL's own exclusions.
SOURCE_FORBIDDEN = rf"^/.*://|{S3_URL_FORBIDDEN}"
MAX_CONCURRENT = 64
MAX_PERCENT = 100.0

_ID_RE, _REVISION_RE = re.compile(ID_PATTERN), re.compile(REVISION_PATTERN)
_ID_BAD_RE, _REVISION_BAD_RE = re.compile(ID_FORBIDDEN), re.compile(REVISION_FORBIDDEN)
_DURATION_RE = re.compile(DURATION_PATTERN)
_SOURCE_RE, _SOURCE_BAD_RE = re.compile(SOURCE_PATTERN), re.compile(SOURCE_FORBIDDEN)


class ConfigError(UsageError):
    """The config file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class ModelConfig:
    """One configured model."""

    spec: ModelSpec
    sources: tuple[str, ...] = ("hf",)
    required: bool = True
    pinned: bool = False

    @property
    def id(self) -> str:
        """The repo id, the model's key in the API."""
        return self.spec.repo


@dataclass(frozen=True)
class GcConfig:
    """Disk watermarks: above `high` percent used, evict down to `low` percent used."""

    high_watermark_percent: float = 90.0
    low_watermark_percent: float = 80.0


@dataclass(frozen=True)
class AgentConfig:
    """The whole agent config."""

    models: tuple[ModelConfig, ...] = ()
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    verify_interval: float = DEFAULT_VERIFY_INTERVAL  # 0 = never
    startup_jitter: float = 0.0
    gc: GcConfig = field(default_factory=GcConfig)

    def model(self, repo: str) -> ModelConfig | None:
        """The configured model with this id, if any."""
        return next((m for m in self.models if m.id == repo), None)


def load(path: Path) -> AgentConfig:
    """Read and validate a config file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    return parse(data, str(path))


def parse(data: bytes | str, origin: str = "config") -> AgentConfig:
    """Validate YAML text; every defect is one ConfigError naming the offending key."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{origin}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = yaml.load(data, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if doc is None:
        doc = {}
    top = _mapping(doc, origin, _TOP_KEYS)
    defaults = _mapping(top.get("defaults", {}), f"{origin}: defaults", _DEFAULTS_KEYS)
    default_sources = _sources(defaults.get("sources", ["hf"]), f"{origin}: defaults.sources")
    default_layout = _layout(defaults.get("layout", "dir"), f"{origin}: defaults.layout")
    raw_models = top.get("models", [])
    if not isinstance(raw_models, list):
        raise ConfigError(f"{origin}: models must be a list")
    models = tuple(
        _model(m, f"{origin}: models[{i}]", default_sources, default_layout) for i, m in enumerate(raw_models)
    )
    seen: set[str] = set()
    for m in models:
        if m.id in seen:
            raise ConfigError(f"{origin}: model {m.id} is listed twice")
        seen.add(m.id)
    return AgentConfig(
        models=models,
        max_concurrent=_int(
            top.get("maxConcurrent", DEFAULT_MAX_CONCURRENT), f"{origin}: maxConcurrent", 1, MAX_CONCURRENT
        ),
        verify_interval=_duration(
            top.get("verifyInterval", DEFAULT_VERIFY_INTERVAL), f"{origin}: verifyInterval"
        ),
        startup_jitter=_duration(
            top.get("startupJitter", 0), f"{origin}: startupJitter", maximum=MAX_STARTUP_JITTER
        ),
        gc=_gc(top.get("gc", {}), f"{origin}: gc"),
    )


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-05` and `1e+06` as floats.

    The chart renders values with Go's YAML, which writes such floats without a '.', and
    YAML 1.1 (PyYAML) would read them as strings: a valid percentage or duration in
    values.yaml would then fail here.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)

_TOP_KEYS = {"models", "defaults", "maxConcurrent", "verifyInterval", "startupJitter", "gc"}
_DEFAULTS_KEYS = {"sources", "layout"}
_MODEL_KEYS = {"id", "revision", "required", "pinned", "layout", "sources", "include", "exclude", "allFiles"}
_GC_KEYS = {"highWatermarkPercent", "lowWatermarkPercent"}


def _model(raw: Any, where: str, sources: tuple[str, ...], layout: Layout) -> ModelConfig:
    if isinstance(raw, str):
        raw = {"id": raw}
    m = _mapping(raw, where, _MODEL_KEYS)
    if "id" not in m:
        raise ConfigError(f"{where}: id is required")
    model_id = _str(m["id"], f"{where}.id")
    # `revision: null` is an error like any other null, not "main": say a revision or leave it out.
    revision = _str(m["revision"], f"{where}.revision") if "revision" in m else None
    try:
        repo, rev = parse_model(model_id, revision)
    except UsageError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    # parse_model's checks, plus what they let through: "a/b\n" (its `$` allows a final newline).
    if not _ID_RE.fullmatch(model_id) or _ID_BAD_RE.search(model_id):
        raise ConfigError(
            f"{where}.id: invalid model id {model_id!r}: expected ORG/NAME or ORG/NAME@REVISION"
        )
    if revision is not None and (not _REVISION_RE.fullmatch(revision) or _REVISION_BAD_RE.search(revision)):
        raise ConfigError(f"{where}.revision: invalid revision {revision!r}")
    files = FileFilter(
        _globs(m.get("include", []), f"{where}.include"),
        _globs(m.get("exclude", []), f"{where}.exclude"),
        _bool(m.get("allFiles", False), f"{where}.allFiles"),
    )
    spec = ModelSpec(repo, rev, _layout(m.get("layout", layout.value), f"{where}.layout"), files)
    return ModelConfig(
        spec=spec,
        sources=_sources(m["sources"], f"{where}.sources") if "sources" in m else sources,
        required=_bool(m.get("required", True), f"{where}.required"),
        pinned=_bool(m.get("pinned", False), f"{where}.pinned"),
    )


def _gc(raw: Any, where: str) -> GcConfig:
    m = _mapping(raw, where, _GC_KEYS)
    high = _percent(m.get("highWatermarkPercent", 90), f"{where}.highWatermarkPercent")
    low = _percent(m.get("lowWatermarkPercent", 80), f"{where}.lowWatermarkPercent")
    if low >= high:
        raise ConfigError(
            f"{where}: lowWatermarkPercent ({low:g}) must be below highWatermarkPercent ({high:g})"
        )
    return GcConfig(high, low)


def _mapping(raw: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        allowed_list = ", ".join(sorted(allowed))
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {allowed_list}")
    return raw


def _str(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{where}: expected a non-empty string, got {raw!r}")
    return raw


def _bool(raw: Any, where: str) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    return raw


def _int(raw: Any, where: str, low: int, high: int) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
        raise ConfigError(f"{where}: expected an integer from {low} to {high}, got {raw!r}")
    return raw


def _percent(raw: Any, where: str) -> float:
    if not isinstance(raw, int | float) or isinstance(raw, bool) or not 0 < raw <= MAX_PERCENT:
        raise ConfigError(f"{where}: expected a percentage above 0 and at most 100, got {raw!r}")
    return float(raw)


def _duration(raw: Any, where: str, maximum: float | None = None) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ConfigError(f"{where}: expected a duration such as 30s, 10m or 1h, got {raw!r}")
    if isinstance(raw, str):
        # parse_duration alone also takes what float() does: "nan", "inf", "1e3", " 1H ".
        if not _DURATION_RE.fullmatch(raw):
            raise ConfigError(
                f"{where}: invalid duration {raw!r}: use seconds (90) or units ms, s, m, h, d (30s, 1h30m)"
            )
        try:
            seconds = parse_duration(raw)
        except UsageError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    elif not math.isfinite(raw) or raw < 0:
        raise ConfigError(
            f"{where}: invalid duration {raw!r}: expected a finite number of seconds, at least 0"
        )
    else:
        seconds = float(raw)
    if maximum is not None and seconds > maximum:
        raise ConfigError(f"{where}: {raw!r} is too long; at most {_fmt_duration(maximum)}")
    return seconds


def _fmt_duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _layout(raw: Any, where: str) -> Layout:
    try:
        return Layout(raw)
    except ValueError:
        raise ConfigError(
            f"{where}: unknown layout {raw!r}; use {' or '.join(x.value for x in Layout)}"
        ) from None


def _sources(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: expected a non-empty list such as [hf] or [/nfs-models, hf]")
    out = tuple(_str(s, f"{where}[{i}]") for i, s in enumerate(raw))
    for i, name in enumerate(out):
        if not _SOURCE_RE.fullmatch(name) or _SOURCE_BAD_RE.search(name):
            raise ConfigError(
                f"{where}[{i}]: unsupported source {name!r}: use hf, an absolute directory, file:///path "
                "or s3://BUCKET[/PREFIX]"
            )
        if name != "hf":
            try:
                check_source(name)  # the agent's sources are built by the registry: it must agree
            except UsageError as exc:
                raise ConfigError(f"{where}[{i}]: {exc}") from exc
    return out


def _globs(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of glob patterns")
    return tuple(_str(g, f"{where}[{i}]") for i, g in enumerate(raw))


# --- the same rules as JSON Schema (draft-07), for the chart's values.schema.json ---------------


def json_schema() -> dict[str, Any]:
    """The config file's JSON Schema: what parse() accepts, as far as JSON Schema can say it.

    Beyond it (parse() alone checks them): a model listed twice, lowWatermarkPercent not below
    highWatermarkPercent (with defaults filled in), ORG/NAME@REV together with a different
    `revision`, and a startupJitter string longer than MAX_STARTUP_JITTER.
    """
    duration = {"type": "string", "pattern": DURATION_PATTERN}
    seconds: dict[str, Any] = {"type": "number", "minimum": 0}

    def durations(description: str, maximum: float | None = None) -> dict[str, Any]:
        number = seconds if maximum is None else {**seconds, "maximum": maximum}
        return {"description": description, "anyOf": [duration, number]}

    model_id = {
        "type": "string",
        "description": "Hub repo id ORG/NAME, optionally ORG/NAME@REVISION",
        "allOf": [{"pattern": ID_PATTERN}, {"not": {"pattern": ID_FORBIDDEN}}],
    }
    source = {
        "type": "string",
        "description": "`hf` (the hub at hf.endpoint), an absolute directory path (e.g. "
        "sharedSource.mountPath), a file:///path URL or a bucket s3://BUCKET[/PREFIX]",
        "allOf": [{"pattern": SOURCE_PATTERN}, {"not": {"pattern": SOURCE_FORBIDDEN}}],
    }
    sources = {"type": "array", "minItems": 1, "items": source, "description": "Tried in order"}
    layout = {"type": "string", "enum": [x.value for x in Layout]}
    glob = {"type": "string", "minLength": 1}
    globs = {"anyOf": [glob, {"type": "array", "items": glob}], "description": "Glob pattern(s)"}
    boolean = {"type": "boolean"}
    percent = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_PERCENT}
    model_props: dict[str, Any] = {
        "id": model_id,
        "revision": {
            "type": "string",
            "description": "Branch, tag or commit (default main)",
            "maxLength": 255,
            "allOf": [{"pattern": REVISION_PATTERN}, {"not": {"pattern": REVISION_FORBIDDEN}}],
        },
        "required": boolean,
        "pinned": boolean,
        "layout": layout,
        "sources": sources,
        "include": globs,
        "exclude": globs,
        "allFiles": boolean,
    }
    top_props: dict[str, Any] = {
        "models": {
            "type": "array",
            "description": "Models every selected node keeps in its cache",
            "items": {
                "anyOf": [
                    model_id,
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["id"],
                        "properties": model_props,
                    },
                ]
            },
        },
        "defaults": _object({"sources": sources, "layout": layout}),
        "maxConcurrent": {"type": "integer", "minimum": 1, "maximum": MAX_CONCURRENT},
        "verifyInterval": durations("Seconds or e.g. 30s, 10m, 1h30m, 1d; 0 = never"),
        "startupJitter": durations(
            f"Seconds or e.g. 30s, 10m; at most {_fmt_duration(MAX_STARTUP_JITTER)}", MAX_STARTUP_JITTER
        ),
        "gc": _object({"highWatermarkPercent": percent, "lowWatermarkPercent": percent}),
    }
    return {"$schema": "http://json-schema.org/draft-07/schema#", **_object(top_props)}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties}
