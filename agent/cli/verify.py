"""`preload verify`: check a published model, optionally repair it."""

from __future__ import annotations

import os
from typing import Any

import click

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
@source_option("Where --repair refetches from, tried in order: 'hf' or a directory.")
@endpoint_option
@token_file_option
@max_workers_option("Parallelism.")
def verify_command(**kw: Any) -> None:
    """Check a published model: exit 0 when sound, 4 when damaged, 8 when missing or incomplete."""
    import json

    from agent.engine.preload import PreloadOptions
    from agent.ops.verify import record, repair, verify
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
    if kw["repair"] and report.marker and not report.sound:
        hub = hub_factory(endpoint, check_token_file(kw["token_file"]), kw["max_workers"])
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
