"""`preload status`: list the models in a cache."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli.options import CONTEXT, dest_option, opt


@click.command("status", context_settings=CONTEXT)
@dest_option("Cache directory.", required=True)
@opt(
    "--json",
    "as_json",
    env="PRELOAD_JSON",
    legacy_env=("PRELOAD_STATUS_JSON",),
    is_flag=True,
    help="Print JSON instead of a table.",
)
def status_command(dest: Path, as_json: bool) -> None:
    """List every model under DEST (both layouts) with revision, size, state and last verification."""
    import json

    from agent.ops.status import render_table, scan

    rows = scan(dest)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=1))
    else:
        click.echo(render_table(rows), nl=False)
