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

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.errors import UsageError
from agent.sources.directory import parse_location
from agent.spec import FileFilter, Layout, ModelSpec, parse_duration, parse_model

DEFAULT_MAX_CONCURRENT = 2
DEFAULT_VERIFY_INTERVAL = 600.0
MAX_STARTUP_JITTER = 3600.0  # longer only delays a node's cache for no gain
MAX_CONFIG_BYTES = 1 << 20


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
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if doc is None:
        doc = {}
    top = _mapping(doc, origin, _TOP_KEYS)
    defaults = _mapping(top.get("defaults", {}), f"{origin}: defaults", {"sources", "layout"})
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
            top.get("maxConcurrent", DEFAULT_MAX_CONCURRENT), f"{origin}: maxConcurrent", 1, 64
        ),
        verify_interval=_duration(
            top.get("verifyInterval", DEFAULT_VERIFY_INTERVAL), f"{origin}: verifyInterval"
        ),
        startup_jitter=_duration(
            top.get("startupJitter", 0), f"{origin}: startupJitter", maximum=MAX_STARTUP_JITTER
        ),
        gc=_gc(top.get("gc", {}), f"{origin}: gc"),
    )


_TOP_KEYS = {"models", "defaults", "maxConcurrent", "verifyInterval", "startupJitter", "gc"}
_MODEL_KEYS = {"id", "revision", "required", "pinned", "layout", "sources", "include", "exclude", "allFiles"}


def _model(raw: Any, where: str, sources: tuple[str, ...], layout: Layout) -> ModelConfig:
    if isinstance(raw, str):
        raw = {"id": raw}
    m = _mapping(raw, where, _MODEL_KEYS)
    if "id" not in m:
        raise ConfigError(f"{where}: id is required")
    model_id = _str(m["id"], f"{where}.id")
    revision = m.get("revision")
    try:
        repo, rev = parse_model(model_id, None if revision is None else _str(revision, f"{where}.revision"))
    except UsageError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
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
    m = _mapping(raw, where, {"highWatermarkPercent", "lowWatermarkPercent"})
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
    if not isinstance(raw, int | float) or isinstance(raw, bool) or not 0 < raw <= 100:
        raise ConfigError(f"{where}: expected a percentage above 0 and at most 100, got {raw!r}")
    return float(raw)


def _duration(raw: Any, where: str, maximum: float | None = None) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ConfigError(f"{where}: expected a duration such as 30s, 10m or 1h, got {raw!r}")
    try:
        seconds = parse_duration(str(raw))
    except UsageError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
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
        if name != "hf":
            try:
                parse_location(name)
            except UsageError as exc:
                raise ConfigError(f"{where}[{i}]: {exc}") from exc
    return out


def _globs(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of glob patterns")
    return tuple(_str(g, f"{where}[{i}]") for i, g in enumerate(raw))
