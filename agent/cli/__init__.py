"""The `preload` command line: parse and validate, call the core, map errors to exit codes.

options.py holds what the commands share, root.py the root group and its default preload, one module
each subcommand; main.py registers them all and maps errors to exit codes.
"""

from agent.cli.main import main
from agent.cli.options import check_endpoint
from agent.cli.root import cli

__all__ = ["check_endpoint", "cli", "main"]
