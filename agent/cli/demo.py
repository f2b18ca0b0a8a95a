"""`preload demo`: the whole flow against a loopback hub (agent/devhub, left out of the image)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agent.cli.options import CONTEXT, dest_option, layout_option
from agent.errors import ExitCode
from agent.spec import Layout


@click.command("demo", context_settings=CONTEXT)
@dest_option("Where to put the demo model.", default="demo-cache")
@layout_option("Cache layout to demonstrate.")
def demo(dest: Path, layout: str) -> None:
    """Run preload -> verify -> ready against a built-in loopback hub (no internet needed)."""
    try:
        from agent.devhub.demo import run_demo
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("agent.devhub"):
            raise
        click.echo(
            "preload: the demo hub is not installed in this image (agent/devhub is left out); "
            "run `preload demo` from a source checkout",
            err=True,
        )
        sys.exit(ExitCode.USAGE)
    run_demo(dest, Layout(layout), sys.stdout)
