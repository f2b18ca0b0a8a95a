"""`preload demo`: the whole flow against a loopback hub (agent/devhub, left out of the image)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.core import ParameterSource

from agent.cli.options import CONTEXT, dest_option, layout_option, opt
from agent.errors import ExitCode
from agent.spec import Layout

DEMO_PORT = 8765  # `preload demo --serve`'s default port, named in README.md ("Try every command offline")


@click.command("demo", context_settings=CONTEXT)
@dest_option(
    "Where to put the demo model (its own twin: a pod's PRELOAD_DEST is never the demo's).",
    env="PRELOAD_DEMO_DEST",
    default="demo-cache",
)
@layout_option("Cache layout to demonstrate.", env="PRELOAD_DEMO_LAYOUT")
@opt(
    "--serve",
    env="PRELOAD_DEMO_SERVE",
    is_flag=True,
    help="Only serve the demo hub on loopback, in the foreground until Ctrl-C, to try the other "
    "commands with --endpoint; writes nothing.",
)
@opt(
    "--port",
    env="PRELOAD_DEMO_PORT",
    type=click.IntRange(1, 65535),
    default=DEMO_PORT,
    help="Port the demo hub listens on with --serve (127.0.0.1).",
)
@click.pass_context
def demo(ctx: click.Context, dest: Path, layout: str, serve: bool, port: int) -> None:
    """Run preload -> verify -> ready against a built-in loopback hub (no internet needed).

    With --serve, only serve that hub (http://127.0.0.1:8765 by default) until Ctrl-C.
    """
    given = {
        n for n in ("dest", "layout", "port") if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE
    }
    if serve and given & {"dest", "layout"}:
        raise click.UsageError("--dest and --layout have no effect with --serve (it writes nothing)")
    if not serve and "port" in given:
        raise click.UsageError("--port goes with --serve (the demo run uses a free port)")
    try:
        from agent.devhub.demo import run_demo, serve_demo
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("agent.devhub"):
            raise
        click.echo(
            "preload: the demo hub is not installed in this image (agent/devhub is left out); "
            "run `preload demo` from a source checkout",
            err=True,
        )
        sys.exit(ExitCode.USAGE)
    if serve:
        serve_demo(port, sys.stdout)
    else:
        run_demo(dest, Layout(layout), sys.stdout)
