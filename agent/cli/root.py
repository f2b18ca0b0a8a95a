"""The root `preload` group: its options, and the preload it runs when no subcommand is given."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from agent import __version__, log
from agent.cli.options import (
    CONTEXT,
    GLOBAL_ROOT_OPTIONS,
    ROOT_OPTIONS_FOR,
    ByteSize,
    Duration,
    check_endpoint,
    check_token_file,
    dest_option,
    endpoint_option,
    hub_factory,
    layout_option,
    log_format_option,
    max_workers_option,
    model_option,
    opt,
    revision_option,
    source_option,
    timeout_option,
    token_file_option,
)
from agent.cli.peering import peer_options, peering
from agent.spec import FileFilter, Layout, ModelSpec, parse_model

REQUIRED_AT_ROOT = "none; required without a subcommand"


class PreloadGroup(click.Group):
    """The root group: options given before a subcommand apply to it or are a usage error.

    A root option given on the command line (its environment twin does not count: a pod sets
    PRELOAD_DEST for every container) is passed on to a subcommand that has an option of that name
    (`preload --dest D status` is `preload status --dest D`); --log-format applies to every command,
    and the agent takes the transfer options from here (ROOT_OPTIONS_FOR). Any other is refused
    rather than silently dropped.
    """

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        if name is None or cmd is None or ctx.resilient_parsing:
            return name, cmd, rest
        return name, cmd, [*_passed_on(self, ctx, name, cmd, rest), *rest]


def _passed_on(
    group: click.Group, ctx: click.Context, name: str, cmd: click.Command, rest: list[str]
) -> list[str]:
    """The root's command-line options, as arguments of subcommand `name` (or a usage error)."""
    taken = {*GLOBAL_ROOT_OPTIONS, *ROOT_OPTIONS_FOR.get(name, ())}
    own = {p.name: p for p in cmd.params if isinstance(p, click.Option)}
    args: list[str] = []
    for param in group.params:
        if not isinstance(param, click.Option) or param.name is None or param.name in taken:
            continue
        if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        flag, target = param.opts[0], own.get(param.name)
        if target is None:
            raise click.UsageError(
                f"{flag} before '{name}' is not an option of 'preload {name}': it belongs to a plain "
                f"preload (no subcommand); see 'preload {name} --help'",
                ctx,
            )
        spelled = target.opts[0]
        if any(a == spelled or a.startswith(spelled + "=") for a in rest):
            raise click.UsageError(
                f"{flag} is given both before and after '{name}': give it once, after '{name}'", ctx
            )
        value = ctx.params[param.name]
        if target.is_flag:
            args += [spelled] if value else []
        else:
            args += [a for v in (value if target.multiple else (value,)) for a in (spelled, str(v))]
    return args


@click.group(cls=PreloadGroup, invoke_without_command=True, context_settings=CONTEXT)
@model_option("Model to preload: ORG/NAME[@REVISION].", show_default=REQUIRED_AT_ROOT)
@dest_option("Cache directory (e.g. /data/models).", show_default=REQUIRED_AT_ROOT)
@revision_option("Branch, tag or 40-hex commit.", show_default="main")
@layout_option("dir: files at DEST/ORG/NAME; hf-cache: the hub cache layout (HF_HUB_CACHE=DEST).")
@opt(
    "--include",
    env="PRELOAD_INCLUDE",
    multiple=True,
    help="Only files matching this glob (repeatable).",
)
@opt(
    "--exclude",
    env="PRELOAD_EXCLUDE",
    multiple=True,
    help="Skip files matching this glob (repeatable).",
)
@opt(
    "--all-files",
    env="PRELOAD_ALL_FILES",
    is_flag=True,
    help="Fetch every file, even duplicate weight formats.",
)
@source_option(
    "Where to get the model, tried in order: 'hf' (the hub), a directory/file:// URL, or a bucket "
    "s3://BUCKET/PREFIX."
)
@endpoint_option
@token_file_option
@max_workers_option(
    "Most connections per download: each file starts as one stream and ranged connections are "
    "added while the aggregate rate rises (backing off on 429/503 and rising latency), up to this.",
    default=128,
    most=512,
)
@opt(
    "--max-host-connections",
    env="PRELOAD_MAX_HOST_CONNECTIONS",
    type=click.IntRange(0, 4096),
    default=0,
    show_default="--max-workers",
    help="Most connections to one host across every download of the process at once (the agent "
    "runs several); 0: the same as --max-workers.",
)
@opt(
    "--chunk-size",
    env="PRELOAD_CHUNK_SIZE",
    type=ByteSize(auto=True),
    default="auto",
    help="Range size for splitting large files, e.g. 64MiB or 100MB; auto spreads --max-workers "
    "connections over the files by size (a file gets one stream when there are more files than "
    "connections).",
)
@opt(
    "--max-request-span",
    env="PRELOAD_MAX_REQUEST_SPAN",
    type=ByteSize(minimum=1 << 20),
    default="16GiB",
    help="Longest byte range asked for in one HTTP request; longer ranges become consecutive "
    "requests (the hub's CDN serves at most 50 GB per GET).",
)
@peer_options
@timeout_option
@opt(
    "--read-timeout",
    env="PRELOAD_READ_TIMEOUT",
    type=Duration(),
    default="30s",
    help="A stall this long (a duration: 30s, 2m) counts as a failed read.",
)
@opt(
    "--refresh",
    env="PRELOAD_REFRESH",
    is_flag=True,
    help="Re-resolve the branch even if a complete copy exists.",
)
@opt(
    "--drop-cache",
    env="PRELOAD_DROP_CACHE",
    is_flag=True,
    help="Drop copied pages from the page cache as they are written (it counts against a pod's "
    "memory limit).",
)
@opt(
    "--progress-interval",
    env="PRELOAD_PROGRESS_INTERVAL",
    type=Duration(),
    default="5s",
    help="Time between progress lines, a duration such as 5s, 1m or 90 (seconds).",
)
@log_format_option
@click.version_option(__version__, prog_name="preload")
@click.pass_context
def cli(ctx: click.Context, /, **kw: Any) -> None:
    """Preload a model onto this node's cache, verified and atomically published.

    Without a subcommand: preload --model ORG/NAME --dest DIR. Options given before a subcommand
    apply to it when it has them (--log-format to all; the agent takes the transfer options);
    any other is a usage error.
    """
    log.configure(kw["log_format"])
    if ctx.invoked_subcommand is not None:
        return
    if not kw["model"] or not kw["dest"]:
        raise click.UsageError("--model and --dest are required (or give a subcommand; see --help)")
    run_preload(**kw)


def run_preload(**kw: Any) -> None:
    """Validate the options and run one preload."""
    # Deferred: `preload --help` and the subcommands need none of the engine.
    from agent.engine.preload import PreloadOptions, preload
    from agent.sources.registry import factories
    from agent.store import usage

    repo, revision = parse_model(kw["model"], kw["revision"])
    spec = ModelSpec(
        repo=repo,
        revision=revision,
        layout=Layout(kw["layout"]),
        files=FileFilter(tuple(kw["include"]), tuple(kw["exclude"]), kw["all_files"]),
    )
    dest: Path = kw["dest"]  # CacheDir refused one that is not a directory
    endpoint = check_endpoint(kw["endpoint"])
    token_file = check_token_file(kw["token_file"])
    opts = PreloadOptions(
        max_workers=kw["max_workers"],
        max_host_connections=kw["max_host_connections"],
        chunk_size=kw["chunk_size"],
        timeout=kw["timeout"],
        refresh=kw["refresh"],
        progress_interval=kw["progress_interval"] or 5.0,
        drop_cache=kw["drop_cache"],
    )
    hub = hub_factory(
        endpoint, token_file, kw["max_workers"], kw["read_timeout"] or 30.0, kw["max_request_span"]
    )
    sources = factories(kw["sources"], hub, kw["drop_cache"], kw["max_workers"], kw["read_timeout"] or 30.0)
    peers = peering(kw["peers"], kw["peer_token_file"], port=None)
    if peers is not None:
        sources = [peers.wrap(f) for f in sources]
    # The import graph is long-lived: frozen, the cyclic collector's passes during the transfer
    # (a few per second, from per-block temporaries) no longer walk it (perf: ~2% of the CPU).
    gc.freeze()
    preload(spec, dest, sources, opts)
    usage.touch(dest, spec)  # garbage collection evicts the least recently used first
