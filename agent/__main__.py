"""`python -m agent` runs the `preload` command."""

from agent.cli import main

main()
