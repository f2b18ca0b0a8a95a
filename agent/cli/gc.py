"""`preload gc`: free disk space in a node cache."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli.options import CONTEXT, ByteSize, Percent, dest_option, opt


@click.command("gc", context_settings=CONTEXT)
@dest_option("Node cache directory to clean.", must_exist=True, required=True)
@opt(
    "--keep-free",
    env="PRELOAD_KEEP_FREE",
    type=Percent(),
    default=None,
    show_default="none; give this or --keep-free-bytes",
    help="Evict until this percentage of the filesystem is free: 0 to 100, e.g. 20 or 20%.",
)
@opt(
    "--keep-free-bytes",
    env="PRELOAD_KEEP_FREE_BYTES",
    type=ByteSize(),
    default=None,
    show_default="none; give this or --keep-free",
    help="Evict until this much is free: bytes or a size such as 200GiB, 1.5TiB, 500G, 1TB.",
)
@opt(
    "--keep",
    env="PRELOAD_KEEP",
    multiple=True,
    show_default="none",
    help="Never evict this model ORG/NAME (repeatable); its superseded revisions may go.",
)
@opt(
    "--dry-run",
    env="PRELOAD_DRY_RUN",
    is_flag=True,
    help="Only report what would be removed (exit 0 even when the target stays out of reach).",
)
def gc_command(
    dest: Path, keep_free: float | None, keep_free_bytes: int | None, keep: tuple[str, ...], dry_run: bool
) -> None:
    """Free disk space: unused models least recently used first, then superseded revisions.

    Exits 5 when the target is still out of reach after removing all it may (models in use or kept).
    """
    from agent.errors import DiskSpaceError
    from agent.ops import gc
    from agent.spec import validate_repo_id

    if (keep_free is None) == (keep_free_bytes is None):
        raise click.UsageError("give exactly one of --keep-free or --keep-free-bytes")
    kept = [validate_repo_id(k) for k in keep]
    target = keep_free_bytes if keep_free_bytes is not None else gc.target_for_percent(dest, keep_free or 0.0)
    report = gc.collect(dest, target, keep=kept, dry_run=dry_run)
    for line in gc.describe(report, dry_run):
        click.echo(line)
    if report.short and not dry_run:
        raise DiskSpaceError(f"{dest}: still short of the free-space target after removing all it may")
