"""`preload verify`: check a published model, optionally repair it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from agent.cli.options import (
    CONTEXT,
    check_endpoint,
    check_token_file,
    dest_option,
    endpoint_option,
    hub_factory,
    layout_option,
    max_workers_option,
    model_option,
    opt,
    revision_option,
    source_option,
    token_file_option,
)
from agent.spec import Layout, ModelSpec, parse_model

if TYPE_CHECKING:
    from agent.manifest import Manifest

# A repair against a host that refuses connections fails after this many attempts (about a
# second of waits), not after the minute the usual budget allows: nothing is listening there.
REPAIR_REFUSED_ATTEMPTS = 3


@click.command("verify", context_settings=CONTEXT)
@model_option("Model to check: ORG/NAME[@REVISION].", required=True)
@dest_option("Cache directory.", required=True)
@layout_option("Which published copy to check.")
@revision_option("Require this branch, tag or commit (must agree with @REV).", "the published one")
@opt(
    "--deep",
    env="PRELOAD_DEEP",
    legacy_env=("PRELOAD_VERIFY_DEEP",),
    is_flag=True,
    help="Re-hash every file (files in parallel).",
)
@opt(
    "--repair",
    env="PRELOAD_REPAIR",
    legacy_env=("PRELOAD_VERIFY_REPAIR",),
    is_flag=True,
    help="Refetch only the bad files, then republish.",
)
@opt(
    "--json",
    "as_json",
    env="PRELOAD_JSON",
    legacy_env=("PRELOAD_VERIFY_JSON",),
    is_flag=True,
    help="Print the report as JSON.",
)
@source_option(
    "Where --repair refetches from, tried in order: 'hf', a directory or a bucket. Default: where "
    "the model came from (its manifest's source)."
)
@endpoint_option
@token_file_option
@max_workers_option("Parallelism.")
def verify_command(**kw: Any) -> None:
    """Check a published model: exit 0 when sound, 4 when damaged, 8 when missing or incomplete."""
    import json

    from agent import log
    from agent.engine.preload import PreloadOptions
    from agent.manifest import public_endpoint
    from agent.ops.verify import record, repair, verify
    from agent.retry import RetryPolicy
    from agent.sources.registry import factories
    from agent.store import Store

    repo, revision = parse_model(kw["model"], kw["revision"])
    endpoint = check_endpoint(kw["endpoint"])  # refused up front, as the plain preload does
    spec = ModelSpec(repo=repo, layout=Layout(kw["layout"]))
    store = Store(kw["dest"])
    # Hashing threads beyond the cores only queue; the disk is the other limit.
    workers = min(kw["max_workers"], 2 * (os.cpu_count() or 2))
    pinned = revision if kw["revision"] is not None or "@" in kw["model"] else None
    report = verify(store, spec, deep=kw["deep"], revision=pinned, workers=workers)
    # Recorded before any repair: what was found bad stays bad for every reader if the repair fails.
    record(store, spec, report)
    m = store.read_marker(spec)
    if kw["repair"] and report.marker and not report.sound and m is not None:
        sources, endpoint = repair_origin(click.get_current_context(), m, kw["sources"], endpoint)
        log.get().info(
            "verify_repair", repo=spec.repo, sources=list(sources), endpoint=public_endpoint(endpoint)
        )
        hub = hub_factory(endpoint, check_token_file(kw["token_file"]), kw["max_workers"])
        opts = PreloadOptions(
            max_workers=kw["max_workers"], retry=RetryPolicy(refused_attempts=REPAIR_REFUSED_ATTEMPTS)
        )
        report = repair(store, spec, report, factories(sources, hub), opts)
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


def repair_origin(
    ctx: click.Context, m: Manifest, given_sources: tuple[str, ...], given_endpoint: str
) -> tuple[tuple[str, ...], str]:
    """Where a repair refetches from: where the model came from, unless the user said otherwise.

    --source and --endpoint override the manifest's `source` and `endpoint` when given on the
    command line (also before `verify`) or through this tool's own twins, PRELOAD_SOURCE and
    PRELOAD_ENDPOINT. HF_ENDPOINT does not: it is the hub client's setting, often set for a
    whole pod, and says nothing about where this copy came from; it only applies when the
    manifest records no endpoint.
    """
    from agent.sources.registry import HUB

    if _explicit(ctx, "sources", "PRELOAD_SOURCE"):
        sources = given_sources
    elif m.source != HUB:
        # A directory or bucket (its name as the registry reads it) that took its hashes from
        # the hub's listing needs the hub again.
        sources = (m.source, HUB) if m.endpoint else (m.source,)
    else:
        sources = (HUB,)
    explicit = _explicit(ctx, "endpoint", "PRELOAD_ENDPOINT")
    endpoint = given_endpoint if explicit or m.endpoint is None else check_endpoint(m.endpoint)
    return sources, endpoint


def _explicit(ctx: click.Context, param: str, own_env: str) -> bool:
    """Whether the user gave `param`: on the command line, or through our own environment twin."""
    source = ctx.get_parameter_source(param)
    return source is ParameterSource.COMMANDLINE or (
        source is ParameterSource.ENVIRONMENT and bool(os.environ.get(own_env))
    )
