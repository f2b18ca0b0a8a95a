"""The `preload` command line: parse and validate, call the core, map errors to exit codes."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar
from urllib.parse import urlsplit

import click

from agent import __version__, log
from agent.errors import ExitCode, PreloadError, UsageError
from agent.spec import DEFAULT_ENDPOINT, FileFilter, Layout, ModelSpec, parse_duration, parse_model

M_ARENA_MAX = -8  # glibc mallopt parameter
ENDPOINT_ENV = ("PRELOAD_ENDPOINT", "HF_ENDPOINT")  # the first one set wins
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
    """A size such as 1048576, 64MiB, 1GiB; "auto" (where allowed) is 0."""

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

    def __init__(self, auto: bool = False) -> None:
        self.auto = auto

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if self.auto and text == "auto":
            return 0
        num = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(num) :]
        if not num.isdigit() or unit not in self._units:
            self.fail(f"invalid size {value!r}: use e.g. 32MiB, 1GiB", param, ctx)
        return int(num) * self._units[unit]


F = TypeVar("F", bound=Callable[..., Any])


def _opt(*names: str, env: str | Sequence[str], **kw: Any) -> Callable[[F], F]:
    """A click option that always has an environment twin and a default, both shown in --help."""
    if "show_default" not in kw:
        if kw.get("is_flag"):
            kw["show_default"] = "off"
        elif kw.get("default") is None and not kw.get("required"):
            kw["show_default"] = "none"
    envvar = env if isinstance(env, str) else list(env)
    decorator: Callable[[F], F] = click.option(*names, envvar=envvar, show_envvar=True, **kw)
    return decorator


endpoint_option = _opt(
    "--endpoint",
    env=ENDPOINT_ENV,
    default=DEFAULT_ENDPOINT,
    help="Hub or mirror base URL, http(s)://HOST[:PORT][/PATH].",
)
token_file_option = _opt(
    "--token-file",
    env="PRELOAD_TOKEN_FILE",
    type=click.Path(path_type=Path),
    show_default="none: HF_TOKEN, else anonymous",
    help="File holding the hub token.",
)
log_format_option = _opt(
    "--log-format",
    env="PRELOAD_LOG_FORMAT",
    type=click.Choice(["auto", "json", "console"]),
    default="auto",
    help="Log lines on stderr; auto (beyond json|console): console when stdout and stderr are both "
    "terminals, else JSON.",
)


@click.group(invoke_without_command=True, context_settings=CONTEXT)
@_opt(
    "--model",
    env="PRELOAD_MODEL",
    show_default="none; required without a subcommand",
    help="Model to preload: ORG/NAME[@REVISION].",
)
@_opt(
    "--dest",
    env="PRELOAD_DEST",
    type=click.Path(path_type=Path),
    show_default="none; required without a subcommand",
    help="Cache directory (e.g. /data/models).",
)
@_opt(
    "--revision",
    env="PRELOAD_REVISION",
    default=None,
    show_default="main",
    help="Branch, tag or 40-hex commit.",
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
    show_default="hf",
    help="Where to get the model, tried in order: 'hf' (the hub) or a directory/file:// URL.",
)
@endpoint_option
@token_file_option
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
    type=ByteSize(auto=True),
    default="auto",
    help="Range size for splitting large files; auto spreads --max-workers connections over the files "
    "by size (a file gets one stream when there are more files than connections).",
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
    "--drop-cache",
    env="PRELOAD_DROP_CACHE",
    is_flag=True,
    help="Drop copied pages from the page cache as they are written (it counts against a pod's "
    "memory limit).",
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
    from agent.engine.preload import PreloadOptions, preload
    from agent.sources.base import Source
    from agent.sources.registry import factories
    from agent.store import usage

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
    endpoint = check_endpoint(kw["endpoint"])
    token_file = check_token_file(kw["token_file"])
    opts = PreloadOptions(
        max_workers=kw["max_workers"],
        chunk_size=kw["chunk_size"],
        timeout=kw["timeout"],
        refresh=kw["refresh"],
        progress_interval=kw["progress_interval"] or 5.0,
        drop_cache=kw["drop_cache"],
    )

    def hub() -> Source:
        # Deferred: httpx is not needed when the model is already complete (warm start).
        from agent.sources.hub import HubSource, default_token

        return HubSource(
            endpoint,
            default_token(token_file),
            read_timeout=kw["read_timeout"] or 30.0,
            max_connections=kw["max_workers"],
        )

    preload(spec, dest, factories(kw["sources"], hub, kw["drop_cache"]), opts)
    usage.touch(dest, spec)  # garbage collection evicts the least recently used first


@cli.command("verify", context_settings=CONTEXT)
@_opt("--model", env="PRELOAD_MODEL", required=True, help="Model to check: ORG/NAME[@REVISION].")
@_opt("--dest", env="PRELOAD_DEST", required=True, type=click.Path(path_type=Path), help="Cache directory.")
@_opt(
    "--layout",
    env="PRELOAD_LAYOUT",
    type=click.Choice([layout.value for layout in Layout]),
    default=Layout.DIR.value,
    help="Which published copy to check.",
)
@_opt("--deep", env="PRELOAD_VERIFY_DEEP", is_flag=True, help="Re-hash every file (files in parallel).")
@_opt(
    "--repair", env="PRELOAD_VERIFY_REPAIR", is_flag=True, help="Refetch only the bad files, then republish."
)
@_opt("--json", "as_json", env="PRELOAD_VERIFY_JSON", is_flag=True, help="Print the report as JSON.")
@_opt(
    "--source",
    "sources",
    env="PRELOAD_SOURCE",
    multiple=True,
    show_default="hf",
    help="Where --repair refetches from, tried in order: 'hf' or a directory.",
)
@endpoint_option
@token_file_option
@_opt(
    "--max-workers", env="PRELOAD_MAX_WORKERS", type=click.IntRange(1, 128), default=16, help="Parallelism."
)
def verify_command(**kw: Any) -> None:
    """Check a published model: exit 0 when sound, 4 when damaged, 8 when missing or incomplete."""
    import json

    from agent.engine.preload import PreloadOptions
    from agent.ops.verify import record, repair, verify
    from agent.sources.registry import factories
    from agent.store import Store

    repo, revision = parse_model(kw["model"])
    spec = ModelSpec(repo=repo, layout=Layout(kw["layout"]))
    store = Store(kw["dest"])
    # Hashing threads beyond the cores only queue; the disk is the other limit.
    workers = min(kw["max_workers"], 2 * (os.cpu_count() or 2))
    pinned = revision if "@" in kw["model"] else None
    report = verify(store, spec, deep=kw["deep"], revision=pinned, workers=workers)
    if kw["repair"] and report.marker and not report.sound:
        endpoint, token_file = check_endpoint(kw["endpoint"]), check_token_file(kw["token_file"])
        hub = _hub_factory(endpoint, token_file, kw["max_workers"])
        opts = PreloadOptions(max_workers=kw["max_workers"])
        report = repair(store, spec, report, factories(kw["sources"], hub), opts)
    record(store, spec, report)
    if kw["as_json"]:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        click.echo(report.summary())
        for label in ("missing", "corrupt", "extra"):
            for name in getattr(report, label):
                click.echo(f"  {label}: {name}")
    if not report.sound:
        raise report.error()


@cli.command("status", context_settings=CONTEXT)
@_opt("--dest", env="PRELOAD_DEST", required=True, type=click.Path(path_type=Path), help="Cache directory.")
@_opt("--json", "as_json", env="PRELOAD_STATUS_JSON", is_flag=True, help="Print JSON instead of a table.")
def status_command(dest: Path, as_json: bool) -> None:
    """List every model under DEST (both layouts) with revision, size, state and last verification."""
    import json

    from agent.ops.status import render_table, scan

    rows = scan(dest)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=1))
    else:
        click.echo(render_table(rows), nl=False)


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


def _hub_factory(
    endpoint: str, token_file: str | None, max_workers: int, read_timeout: float = 30.0
) -> Callable[[], Any]:
    """A hub source factory for subcommands that may need to refetch."""
    from agent.sources.hub import HubSource, default_token

    def hub() -> HubSource:
        token = default_token(token_file)
        return HubSource(endpoint, token, read_timeout=read_timeout, max_connections=max_workers)

    return hub


@cli.command(context_settings=CONTEXT)
@_opt(
    "--dest",
    env="PRELOAD_DEST",
    type=click.Path(path_type=Path),
    default="demo-cache",
    help="Where to put the demo model.",
)
@_opt(
    "--layout",
    env="PRELOAD_LAYOUT",
    type=click.Choice([layout.value for layout in Layout]),
    default=Layout.DIR.value,
    help="Cache layout to demonstrate.",
)
def demo(dest: Path, layout: str) -> None:
    """Run preload -> verify -> ready against a built-in loopback hub (no internet needed)."""
    from agent.devhub.demo import run_demo

    run_demo(dest, Layout(layout), sys.stdout)


# -- agent, wait, gc (the DaemonSet side; see docs/agent.md) ---------------------------------


@cli.command("agent", context_settings=CONTEXT)
@_opt(
    "--config",
    "config_path",
    env="PRELOAD_CONFIG",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Agent config YAML (e.g. a mounted ConfigMap); reloaded when it changes.",
)
@_opt(
    "--dest",
    env="PRELOAD_DEST",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Node cache directory (e.g. the hostPath /data/models).",
)
@_opt("--listen", env="PRELOAD_LISTEN", default="0.0.0.0:8080", help="HTTP API address, HOST:PORT.")
@_opt(
    "--max-concurrent",
    env="PRELOAD_MAX_CONCURRENT",
    type=click.IntRange(1, 64),
    default=None,
    show_default="config maxConcurrent, else 2",
    help="Models preloaded at once.",
)
@click.pass_context
def agent_command(
    ctx: click.Context, config_path: Path, dest: Path, listen: str, max_concurrent: int | None
) -> None:
    """Keep this node's cache matching the config; serve /livez, /readyz, /v1/models, /metrics.

    The transfer options of `preload` itself (--endpoint, --token-file, --max-workers, --chunk-size,
    --read-timeout, --drop-cache, --progress-interval) apply to the agent's preloads: give them
    before `agent` or through their environment twins.
    """
    from agent.engine.preload import PreloadOptions
    from agent.node.api import parse_listen
    from agent.node.daemon import Daemon, serve

    root = ctx.find_root().params
    address = parse_listen(listen)
    opts = PreloadOptions(
        max_workers=root["max_workers"],
        chunk_size=root["chunk_size"],
        progress_interval=root["progress_interval"] or 5.0,
        drop_cache=root["drop_cache"],
    )
    hub = _hub_factory(
        check_endpoint(root["endpoint"]),
        check_token_file(root["token_file"]),
        root["max_workers"],
        root["read_timeout"] or 30.0,
    )
    daemon = Daemon(config_path, dest, hub, opts, max_concurrent)
    sys.exit(serve(daemon, address))


@cli.command("wait", context_settings=CONTEXT)
@_opt("--model", env="PRELOAD_MODEL", required=True, help="Model to wait for: ORG/NAME[@REVISION].")
@_opt(
    "--dest",
    env="PRELOAD_DEST",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    show_default="none; give --dest or --agent",
    help="Node cache mounted in this pod: watch it directly, no network needed.",
)
@_opt(
    "--agent",
    "agent_url",
    env="PRELOAD_AGENT",
    default=None,
    show_default="none; give --dest or --agent",
    help="Base URL of this node's agent, e.g. http://model-cache-agent:8080.",
)
@_opt(
    "--timeout",
    env="PRELOAD_TIMEOUT",
    type=Duration(),
    default="0",
    help="Give up after this long (0 = never).",
)
@_opt(
    "--revision",
    env="PRELOAD_REVISION",
    default=None,
    show_default="any published revision",
    help="Require this branch, tag or commit.",
)
@_opt(
    "--layout",
    env="PRELOAD_LAYOUT",
    type=click.Choice([layout.value for layout in Layout]),
    default=Layout.DIR.value,
    help="Layout the model is expected in.",
)
def wait_command(
    model: str, dest: Path | None, agent_url: str | None, timeout: float, revision: str | None, layout: str
) -> None:
    """Exit 0 once the model is ready on this node (an init container's job)."""
    from agent.ops import wait

    dest, agent_url = _one_mode(dest, agent_url)
    repo, rev = parse_model(model, revision)
    any_revision = revision is None and "@" not in model
    spec = ModelSpec(repo=repo, revision=rev, layout=Layout(layout))
    if dest is not None:
        wait.wait_dest(spec, dest, timeout, any_revision)
    else:
        assert agent_url is not None
        if not agent_url.startswith(("http://", "https://")):
            raise UsageError(f"--agent {agent_url!r}: expected an http:// or https:// URL")
        wait.wait_agent(agent_url, spec, timeout, any_revision)


def _one_mode(dest: Path | None, agent_url: str | None) -> tuple[Path | None, str | None]:
    """Exactly one of --dest and --agent; one given on the command line beats the other's env twin
    (a pod spec may set PRELOAD_DEST for every container)."""
    if dest is not None and agent_url is not None:
        ctx = click.get_current_context()
        explicit = click.core.ParameterSource.COMMANDLINE
        dest_cli = ctx.get_parameter_source("dest") is explicit
        agent_cli = ctx.get_parameter_source("agent_url") is explicit
        if dest_cli != agent_cli:
            return (dest, None) if dest_cli else (None, agent_url)
    if (dest is None) == (agent_url is None):
        raise click.UsageError("give exactly one of --dest or --agent")
    return dest, agent_url


@cli.command("gc", context_settings=CONTEXT)
@_opt(
    "--dest",
    env="PRELOAD_DEST",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="Node cache directory to clean.",
)
@_opt(
    "--keep-free",
    env="PRELOAD_KEEP_FREE",
    type=click.FloatRange(0, 100),
    default=None,
    show_default="none; give this or --keep-free-bytes",
    help="Evict until this percent of the filesystem is free.",
)
@_opt(
    "--keep-free-bytes",
    env="PRELOAD_KEEP_FREE_BYTES",
    type=ByteSize(),
    default=None,
    show_default="none; give this or --keep-free",
    help="Evict until this many bytes are free (e.g. 200GiB).",
)
@_opt(
    "--keep",
    env="PRELOAD_KEEP",
    multiple=True,
    show_default="none",
    help="Never evict this model ORG/NAME (repeatable); its superseded revisions may go.",
)
@_opt("--dry-run", env="PRELOAD_DRY_RUN", is_flag=True, help="Only report what would be removed.")
def gc_command(
    dest: Path, keep_free: float | None, keep_free_bytes: int | None, keep: tuple[str, ...], dry_run: bool
) -> None:
    """Free disk space: unused models least recently used first, then superseded revisions."""
    from agent.errors import DiskSpaceError
    from agent.ops import gc
    from agent.spec import validate_repo_id

    if (keep_free is None) == (keep_free_bytes is None):
        raise click.UsageError("give exactly one of --keep-free or --keep-free-bytes")
    kept = [validate_repo_id(k) for k in keep]
    target = keep_free_bytes if keep_free_bytes is not None else gc.target_for_percent(dest, keep_free or 0.0)
    report = gc.collect(dest, target, keep=kept, dry_run=dry_run)
    for line in gc.describe(report, dry_run):
        click.echo(line)
    if report.short and not dry_run:
        raise DiskSpaceError(f"{dest}: still short of the free-space target after removing all it may")


def _limit_malloc_arenas() -> None:
    """Cap glibc's per-thread heaps at 2: with 16 fetch threads they fragment and peak RSS grows
    with the model (bench/results/hub.md: 293 MB -> 94 MB on a 12 GiB model)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: one clear line and a documented exit code for every failure."""
    _limit_malloc_arenas()
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
