"""What the commands share: parameter types, option factories, endpoint and token checks, the hub."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import click

from agent.errors import UsageError
from agent.spec import DEFAULT_ENDPOINT, Layout, parse_duration
from agent.units import fmt_bytes, parse_percent, parse_size

if TYPE_CHECKING:
    from agent.sources.base import Source, SourceFactory

ENDPOINT_ENV = ("PRELOAD_ENDPOINT", "HF_ENDPOINT")  # the first one set wins
# The root's options that a subcommand takes from before its name, beyond those it has itself (those
# are applied to it): --log-format for all; the agent's preloads take the transfer options.
TRANSFER_OPTIONS = (
    "endpoint",
    "token_file",
    "max_workers",
    "max_host_connections",
    "chunk_size",
    "max_request_span",
    "read_timeout",
    "drop_cache",
    "progress_interval",
    "peers",
    "peer_token_file",
)
ROOT_OPTIONS_FOR = {"agent": TRANSFER_OPTIONS}
GLOBAL_ROOT_OPTIONS = ("log_format",)
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


class Duration(click.ParamType):  # type: ignore[type-arg]
    """A duration such as 90, 30s, 5m, 1h30m; 0 means no limit."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float | int):
            return float(value)
        try:
            return parse_duration(str(value))
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


class ByteSize(click.ParamType):  # type: ignore[type-arg]
    """A size as people type it (agent.units.parse_size): 1048576, 64MiB, 1.5GiB, 500G, 1TB; "auto"
    (where allowed) is 0."""

    name = "size"

    def __init__(self, auto: bool = False, minimum: int = 0) -> None:
        self.auto = auto
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if self.auto and str(value).strip().lower() == "auto":
            return 0
        try:
            size = parse_size(str(value))
        except UsageError as exc:
            self.fail(str(exc), param, ctx)
        if size < self.minimum:
            self.fail(f"{value!r} is too small: at least {fmt_bytes(self.minimum)}", param, ctx)
        return size


class Percent(click.ParamType):  # type: ignore[type-arg]
    """A percentage from 0 to 100, with or without the sign: 20 or 20% (agent.units.parse_percent)."""

    name = "percent"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float | int):
            return float(value)
        try:
            return parse_percent(str(value))
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


class CacheDir(click.ParamType):  # type: ignore[type-arg]
    """A cache directory: refused, one way for every command, when it exists and is not a directory
    (or, with `must_exist`, when it does not exist)."""

    name = "directory"

    def __init__(self, must_exist: bool = False) -> None:
        self.must_exist = must_exist

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(value)
        if path.exists() and not path.is_dir():
            self.fail(f"{path} exists and is not a directory", param, ctx)
        if self.must_exist and not path.exists():
            self.fail(f"{path} does not exist", param, ctx)
        return path


class PreloadOption(click.Option):
    """A click option whose default reads one way in --help (no parentheses around described
    defaults) and whose environment twin may have hidden former names, still read."""

    def __init__(self, *args: Any, legacy_env: Sequence[str] = (), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.legacy_env = tuple(legacy_env)

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        if isinstance(self.show_default, str):
            extra["default"] = self.show_default
        return extra

    def get_error_hint(self, ctx: click.Context | None) -> str:
        """The option's name only: click would name the env twin even when it was not used."""
        return " / ".join(f"'{name}'" for name in self.opts)

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        value = super().resolve_envvar_value(ctx)
        for name in self.legacy_env:
            if value is not None:
                break
            value = os.environ.get(name) or None
        return value


F = TypeVar("F", bound=Callable[..., Any])


def opt(*names: str, env: str | Sequence[str], **kw: Any) -> Callable[[F], F]:
    """A click option that always has an environment twin and a default, both shown in --help.

    Twins are named PRELOAD_<OPTION> (upper case, dashes as underscores) for every command but
    `demo`, whose options read PRELOAD_DEMO_<OPTION>; `legacy_env=` keeps former names working.
    """
    if "show_default" not in kw:
        if kw.get("is_flag"):
            kw["show_default"] = "off"
        elif kw.get("default") is None and not kw.get("required"):
            kw["show_default"] = "none"
    envvar = env if isinstance(env, str) else list(env)
    decorator: Callable[[F], F] = click.option(
        *names, cls=PreloadOption, envvar=envvar, show_envvar=True, **kw
    )
    return decorator


# -- Options several commands take: one name, env twin and type each; the help says what it is for here.


def model_option(help: str, **kw: Any) -> Callable[[F], F]:
    """--model ORG/NAME[@REVISION] (PRELOAD_MODEL)."""
    return opt("--model", env="PRELOAD_MODEL", help=help, **kw)


def dest_option(
    help: str, *, must_exist: bool = False, env: str = "PRELOAD_DEST", **kw: Any
) -> Callable[[F], F]:
    """--dest DIR, the cache directory (PRELOAD_DEST): every command refuses, with the same message
    and exit 2, a --dest that exists and is not a directory."""
    return opt("--dest", env=env, type=CacheDir(must_exist), help=help, **kw)


def revision_option(help: str, show_default: str) -> Callable[[F], F]:
    """--revision BRANCH|TAG|COMMIT (PRELOAD_REVISION); absent unless given."""
    return opt("--revision", env="PRELOAD_REVISION", default=None, show_default=show_default, help=help)


def layout_option(help: str, env: str = "PRELOAD_LAYOUT") -> Callable[[F], F]:
    """--layout dir|hf-cache (PRELOAD_LAYOUT), dir by default."""
    return opt(
        "--layout",
        env=env,
        type=click.Choice([layout.value for layout in Layout]),
        default=Layout.DIR.value,
        help=help,
    )


def source_option(help: str) -> Callable[[F], F]:
    """--source (repeatable, PRELOAD_SOURCE), the hub when none is given; the parameter is `sources`."""
    return opt("--source", "sources", env="PRELOAD_SOURCE", multiple=True, show_default="hf", help=help)


def max_workers_option(help: str, default: int = 16, most: int = 512) -> Callable[[F], F]:
    """--max-workers 1..`most` (PRELOAD_MAX_WORKERS), `default` (16) by default."""
    return opt(
        "--max-workers", env="PRELOAD_MAX_WORKERS", type=click.IntRange(1, most), default=default, help=help
    )


timeout_option = opt(
    "--timeout",
    env="PRELOAD_TIMEOUT",
    type=Duration(),
    default="0",
    help="Give up after this long, a duration such as 90, 30s, 5m, 1h30m (0 = never).",
)
endpoint_option = opt(
    "--endpoint",
    env=ENDPOINT_ENV,
    default=DEFAULT_ENDPOINT,
    help="Hub or mirror base URL, http(s)://HOST[:PORT][/PATH].",
)
token_file_option = opt(
    "--token-file",
    env="PRELOAD_TOKEN_FILE",
    type=click.Path(path_type=Path),
    show_default="none: HF_TOKEN, else anonymous",
    help="File holding the hub token.",
)
log_format_option = opt(
    "--log-format",
    env="PRELOAD_LOG_FORMAT",
    type=click.Choice(["auto", "json", "console"]),
    default="auto",
    help="Log lines on stderr; auto (beyond json|console): console when stdout and stderr are both "
    "terminals, else JSON.",
)


# -- Checks and the hub source ---------------------------------------------------------------


def check_endpoint(url: str) -> str:
    """The hub base URL if it is http(s)://HOST[:PORT][/PATH], else a usage error (credentials hidden)."""
    text = url.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # e.g. a port that is not a number or out of range
        valid = False
    if not valid:
        shown = re.sub(r"^([A-Za-z][\w+.-]*://)?[^/@]*@", r"\1***@", text)  # no userinfo in logs
        raise UsageError(
            f"invalid endpoint {shown[:200]!r} (--endpoint, PRELOAD_ENDPOINT or HF_ENDPOINT): "
            "expected http(s)://HOST[:PORT][/PATH]"
        )
    return text


def check_token_file(path: Path | None) -> str | None:
    """The token file's path if it holds a token, else a usage error (the token is not returned)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            empty = not f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"cannot read --token-file {path}: {reason}") from exc
    if empty:
        raise UsageError(f"--token-file {path} is empty")
    return str(path)


def hub_factory(
    endpoint: str,
    token_file: str | None,
    max_workers: int,
    read_timeout: float = 30.0,
    max_span: int | None = None,
) -> SourceFactory:
    """A factory for the hub source, for commands that may need to fetch (`max_span`: the longest
    range one request may ask for; None: the source's default).

    The import is deferred to the first call: httpx is not needed when the model is already complete
    (warm start).
    """

    def hub() -> Source:
        from agent.sources.hub import MAX_SPAN, HubSource, default_token

        token = default_token(token_file)
        return HubSource(
            endpoint,
            token,
            read_timeout=read_timeout,
            max_connections=max_workers,
            max_span=max_span or MAX_SPAN,
        )

    return hub
