"""`preload wait`: block until a model is ready on this node (an init container's job)."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli.options import (
    CONTEXT,
    dest_option,
    layout_option,
    model_option,
    opt,
    revision_option,
    timeout_option,
)
from agent.errors import UsageError
from agent.spec import Layout, ModelSpec, parse_model

ONE_MODE = "none; give --dest or --agent"


@click.command("wait", context_settings=CONTEXT)
@model_option("Model to wait for: ORG/NAME[@REVISION].", required=True)
@dest_option(
    "Node cache mounted in this pod: watch it directly, no network needed.",
    default=None,
    show_default=ONE_MODE,
)
@opt(
    "--agent",
    "agent_url",
    env="PRELOAD_AGENT",
    default=None,
    show_default=ONE_MODE,
    help="Base URL of this node's agent, e.g. http://model-cache-agent:8080.",
)
@timeout_option
@revision_option("Require this branch, tag or commit.", show_default="any published revision")
@layout_option("Layout the model is expected in.")
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
