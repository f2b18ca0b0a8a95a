"""`preload diagnose`: the cache volume's and the CPU's figures, and what each model will cost."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli.options import CONTEXT, ByteSize, dest_option, opt


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
@opt("--json", "as_json", env="PRELOAD_JSON", is_flag=True, help="Print JSON instead of a report.")
def diagnose_command(dest: Path, test_size: int, link_gbps: float, as_json: bool) -> None:
    """Measure the cache volume (sequential O_DIRECT write and cold read, free space) and this CPU's
    sha256 rate; predict, for each model under DEST, the time to read it cold (what vLLM's load
    costs) and to download it verified at --link-gbps."""
    import json

    from agent.ops.diagnose import diagnose, render

    d = diagnose(dest, test_size, link_gbps * 1e9 / 8)
    if as_json:
        click.echo(json.dumps(d.to_dict(), indent=1))
    else:
        click.echo(render(d), nl=False)
