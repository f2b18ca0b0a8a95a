"""The `preload` command line: parse and validate, call the core, map errors to exit codes."""

from agent.cli.main import check_endpoint, cli, main

__all__ = ["check_endpoint", "cli", "main"]
