"""`preload push`: upload a ready model from a cache to a bucket (the Job that seeds it once)."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli.options import (
    CONTEXT,
    ByteSize,
    dest_option,
    layout_option,
    max_workers_option,
    model_option,
    opt,
    revision_option,
)


@click.command("push", context_settings=CONTEXT)
@model_option("Model to push: ORG/NAME[@REVISION], ready in --dest.", required=True)
@dest_option("Cache directory holding the ready model.", must_exist=True, required=True)
@revision_option("Branch, tag or 40-hex commit of the ready model.", show_default="main")
@layout_option("The layout the model was preloaded in (the bucket gets the same tree).")
@opt(
    "--to",
    env="PRELOAD_TO",
    required=True,
    help="Bucket and prefix to push to, s3://BUCKET/PREFIX (nodes then use it as --source).",
)
@max_workers_option("Parallel part uploads.")
@opt(
    "--part-size",
    env="PRELOAD_PART_SIZE",
    type=ByteSize(auto=True),
    default="auto",
    help="Multipart part size, e.g. 64MiB; auto: 8 MiB, raised for files that would need more than "
    "9000 parts.",
)
def push_command(
    model: str, dest: Path, revision: str | None, layout: str, to: str, max_workers: int, part_size: int
) -> None:
    """Upload a ready, verified model to an S3-compatible bucket; its manifest goes last.

    Every byte is checked against the manifest as it is read; objects already in the bucket with
    the same content are not sent again. Credentials and endpoint: as every AWS tool finds them.
    """
    from agent.ops.push import PushOptions, push
    from agent.sources.s3loc import parse_s3_url
    from agent.spec import Layout, ModelSpec, parse_model

    repo, rev = parse_model(model, revision)
    location = parse_s3_url(to)
    spec = ModelSpec(repo=repo, revision=rev, layout=Layout(layout))
    result = push(spec, dest, location, PushOptions(max_workers=max_workers, part_size=part_size))
    click.echo(
        f"pushed {spec.repo}@{result.manifest.commit[:12]} to {result.url}: {result.uploaded_files} file(s) "
        f"uploaded, {result.unchanged_files} unchanged"
    )
