"""The `preload` entry point: the commands registered in one place, errors mapped to exit codes."""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import NoReturn

import click

from agent import log
from agent.cli.agent import agent_command
from agent.cli.demo import demo
from agent.cli.diagnose import diagnose_command
from agent.cli.gc import gc_command
from agent.cli.labels import labels_command
from agent.cli.push import push_command
from agent.cli.root import cli
from agent.cli.status import status_command
from agent.cli.verify import verify_command
from agent.cli.wait import wait_command
from agent.errors import ExitCode, PreloadError

M_ARENA_MAX = -8  # glibc mallopt parameter

# Every subcommand of `preload`; the agent, wait and gc are the DaemonSet side (docs/agent.md).
for command in (
    verify_command,
    status_command,
    demo,
    agent_command,
    wait_command,
    gc_command,
    push_command,
    diagnose_command,
    labels_command,
):
    cli.add_command(command)


def _limit_malloc_arenas() -> None:
    """Cap glibc's per-thread heaps at 2: with 16 fetch threads they fragment and peak RSS grows
    with the model (bench/results/hub.md: 293 MB -> 94 MB on a 12 GiB model)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: one clear line and a documented exit code for every failure."""
    _limit_malloc_arenas()
    try:
        cli.main(args=argv, prog_name="preload", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("preload: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE)
    except PreloadError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    sys.exit(ExitCode.OK)


def _fail(message: str, code: int) -> NoReturn:
    log.get().error("failed", error=log.scrub(message), exit_code=int(code))
    sys.exit(code)
