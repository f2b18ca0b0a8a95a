"""`preload labels`: the node label key the agent sets for a model, for writing selectors."""

from __future__ import annotations

import click

from agent.cli.options import CONTEXT, model_option, opt, revision_option
from agent.node.labels import DEFAULT_PREFIX, check_prefix, label_key
from agent.spec import parse_model


@click.command("labels", context_settings=CONTEXT)
@model_option("Model: ORG/NAME[@REVISION], as in the agent's config.", required=True)
@revision_option("The revision the config asks for.", show_default="main")
@opt(
    "--node-label-prefix",
    "prefix",
    env="PRELOAD_NODE_LABEL_PREFIX",
    default=DEFAULT_PREFIX,
    help="Label prefix: the chart's nodeLabels.prefix, as given to the agent.",
)
def labels_command(model: str, revision: str | None, prefix: str) -> None:
    """Print the node label key the agent sets for MODEL (value ready, downloading or failed).

    \b
    Example, a required node affinity on warm nodes:
      key: <printed key>, operator: In, values: [ready]
    """
    repo, rev = parse_model(model, revision)
    click.echo(label_key(repo, rev, check_prefix(prefix)))
