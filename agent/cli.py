"""The `preload` command line: parse and validate, call the core, map errors to exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar

import click

from agent import __version__, log
from agent.errors import ExitCode, PreloadError, UsageError
from agent.spec import FileFilter, Layout, ModelSpec, parse_duration, parse_model

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
    """A size such as 1048576, 64MiB, 1GiB."""

    name = "size"
    _units: ClassVar[dict[str, int]] = {
        "": 1,
        "b": 1,
        "k": 1 << 10,
        "kib": 1 << 10,
        "m": 1 << 20,
        "mib": 1 << 20,
        "g": 1 << 30,
        "gib": 1 << 30,
    }

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        num = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(num) :]
        if not num.isdigit() or unit not in self._units:
            self.fail(f"invalid size {value!r}: use e.g. 32MiB, 1GiB", param, ctx)
        return int(num) * self._units[unit]


F = TypeVar("F", bound=Callable[..., Any])


def _opt(*names: str, env: str, **kw: Any) -> Callable[[F], F]:
    """A click option that always has an environment twin, shown in --help."""
    decorator: Callable[[F], F] = click.option(*names, envvar=env, show_envvar=True, **kw)
    return decorator


log_format_option = _opt(
    "--log-format",
    env="PRELOAD_LOG_FORMAT",
    type=click.Choice(["auto", "json", "console"]),
    default="auto",
    help="Log rendering; auto = JSON unless stderr is a terminal.",
)


@click.group(invoke_without_command=True, context_settings=CONTEXT)
@_opt("--model", env="PRELOAD_MODEL", help="Model to preload: ORG/NAME[@REVISION].")
@_opt(
    "--dest",
    env="PRELOAD_DEST",
    type=click.Path(path_type=Path),
    help="Cache directory (e.g. /data/models).",
)
@_opt(
    "--revision",
    env="PRELOAD_REVISION",
    default=None,
    help="Branch, tag or 40-hex commit [default: main].",
)
@_opt(
    "--layout",
    env="PRELOAD_LAYOUT",
    type=click.Choice([layout.value for layout in Layout]),
    default=Layout.DIR.value,
    help="dir: files at DEST/ORG/NAME; hf-cache: the hub cache layout (HF_HUB_CACHE=DEST).",
)
@_opt(
    "--include",
    env="PRELOAD_INCLUDE",
    multiple=True,
    help="Only files matching this glob (repeatable).",
)
@_opt(
    "--exclude",
    env="PRELOAD_EXCLUDE",
    multiple=True,
    help="Skip files matching this glob (repeatable).",
)
@_opt(
    "--all-files",
    env="PRELOAD_ALL_FILES",
    is_flag=True,
    help="Fetch every file, even duplicate weight formats.",
)
@_opt(
    "--source",
    "sources",
    env="PRELOAD_SOURCE",
    multiple=True,
    help="Where to get the model, tried in order: 'hf' (the hub) or a directory/file:// URL "
    "[default: hf].",
)
@_opt(
    "--endpoint",
    env="HF_ENDPOINT",
    default="https://huggingface.co",
    help="Hub or mirror base URL.",
)
@_opt(
    "--token-file",
    env="PRELOAD_TOKEN_FILE",
    type=click.Path(path_type=Path),
    help="File holding the hub token (else HF_TOKEN).",
)
@_opt(
    "--max-workers",
    env="PRELOAD_MAX_WORKERS",
    type=click.IntRange(1, 128),
    default=16,
    help="Parallel connections.",
)
@_opt(
    "--chunk-size",
    env="PRELOAD_CHUNK_SIZE",
    type=ByteSize(),
    default="32MiB",
    help="Range size for splitting large files.",
)
@_opt(
    "--timeout",
    env="PRELOAD_TIMEOUT",
    type=Duration(),
    default="0",
    help="Give up after this long (0 = never).",
)
@_opt(
    "--read-timeout",
    env="PRELOAD_READ_TIMEOUT",
    type=Duration(),
    default="30s",
    help="A stall this long counts as a failed read.",
)
@_opt(
    "--refresh",
    env="PRELOAD_REFRESH",
    is_flag=True,
    help="Re-resolve the branch even if a complete copy exists.",
)
@_opt(
    "--progress-interval",
    env="PRELOAD_PROGRESS_INTERVAL",
    type=Duration(),
    default="5s",
    help="Seconds between progress lines.",
)
@log_format_option
@click.version_option(__version__, prog_name="preload")
@click.pass_context
def cli(ctx: click.Context, /, **kw: Any) -> None:
    """Preload a model onto this node's cache, verified and atomically published.

    Without a subcommand: preload --model ORG/NAME --dest DIR.
    """
    log.configure(kw["log_format"])
    if ctx.invoked_subcommand is not None:
        return
    if not kw["model"] or not kw["dest"]:
        raise click.UsageError("--model and --dest are required (or give a subcommand; see --help)")
    run_preload(**kw)


def run_preload(**kw: Any) -> None:
    """Validate the options and run one preload."""
    from agent.preload import PreloadOptions, preload
    from agent.sources import factories
    from agent.sources.hub import HubSource, default_token

    repo, revision = parse_model(kw["model"], kw["revision"])
    spec = ModelSpec(
        repo=repo,
        revision=revision,
        layout=Layout(kw["layout"]),
        files=FileFilter(tuple(kw["include"]), tuple(kw["exclude"]), kw["all_files"]),
    )
    dest: Path = kw["dest"]
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--dest {dest} exists and is not a directory")
    opts = PreloadOptions(
        max_workers=kw["max_workers"],
        chunk_size=kw["chunk_size"],
        timeout=kw["timeout"],
        refresh=kw["refresh"],
        progress_interval=kw["progress_interval"] or 5.0,
    )
    token_file = str(kw["token_file"]) if kw["token_file"] else None

    def hub() -> HubSource:
        return HubSource(
            kw["endpoint"],
            default_token(token_file),
            read_timeout=kw["read_timeout"] or 30.0,
            max_connections=kw["max_workers"],
        )

    preload(spec, dest, factories(kw["sources"], hub), opts)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: one clear line and a documented exit code for every failure."""
    try:
        cli.main(args=argv, prog_name="preload", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("preload: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE)
    except PreloadError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    sys.exit(ExitCode.OK)


def _fail(message: str, code: int) -> NoReturn:
    log.get().error("failed", error=log.scrub(message), exit_code=int(code))
    sys.exit(code)
