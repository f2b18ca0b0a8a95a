"""`preload diagnose`: the cache volume's and the CPU's figures, and what each model will cost."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli.options import (
    CONTEXT,
    ByteSize,
    check_endpoint,
    check_token_file,
    dest_option,
    endpoint_option,
    hub_factory,
    opt,
    token_file_option,
)

LISTING_CONNECTIONS = 2  # a listing is a request or two per model


@click.command("diagnose", context_settings=CONTEXT)
@dest_option("Cache directory (the volume to measure).", must_exist=True, required=True)
@opt(
    "--test-size",
    env="PRELOAD_TEST_SIZE",
    type=ByteSize(),
    default="256MiB",
    help="Size of the temporary file written and read back with O_DIRECT (small enough for a "
    "running node; larger is steadier).",
)
@opt(
    "--link-gbps",
    env="PRELOAD_LINK_GBPS",
    type=click.FloatRange(min=0.001),
    default=25.0,
    help="Link rate in Gbit/s assumed for the predicted download times.",
)
@opt(
    "--config",
    "config_path",
    env="PRELOAD_CONFIG",
    type=click.Path(path_type=Path, dir_okay=False),
    help="An agent config: predict for the models it names (sized from the cache when published, "
    "else from their sources' listing) instead of those found under --dest.",
)
@endpoint_option
@token_file_option
@opt("--json", "as_json", env="PRELOAD_JSON", is_flag=True, help="Print JSON instead of a report.")
def diagnose_command(
    dest: Path,
    test_size: int,
    link_gbps: float,
    config_path: Path | None,
    endpoint: str,
    token_file: Path | None,
    as_json: bool,
) -> None:
    """Measure the cache volume (sequential O_DIRECT write and cold read, free space) and this CPU's
    sha256 rate; predict, for each model under DEST (or named in --config), the time to read it
    cold (what vLLM's load costs) and to download it verified at --link-gbps."""
    import json

    from agent.ops.diagnose import configured, diagnose, render

    models = None
    if config_path is not None:
        from agent.node.config import load
        from agent.sources.registry import factories

        config = load(config_path)  # a bad file is a usage error before anything is measured
        hub = hub_factory(check_endpoint(endpoint), check_token_file(token_file), LISTING_CONNECTIONS)
        models = [(m.spec, factories(m.sources, hub)) for m in config.models]
    d = diagnose(dest, test_size, link_gbps * 1e9 / 8)
    if models is not None:
        d = configured(d, dest, models)
    if as_json:
        click.echo(json.dumps(d.to_dict(), indent=1))
    else:
        click.echo(render(d), nl=False)
