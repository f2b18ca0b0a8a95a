"""Run the `preload` console script under an altered runtime, for bench_hub.py's A/B experiments.

    bench_hub.py --preload-wrap ".venv/bin/python bench/hub_wrap.py --gc freeze"

`--gc freeze` moves everything imported so far out of the collector's reach before the transfer
starts (gc.freeze), `--gc off` disables the cyclic collector: both test whether collections of
the long-lived import graph cost CPU during a download. The process keeps its pid (no fork), so
the benchmark's RSS and byte counters still see the real downloader.
"""

from __future__ import annotations

import argparse
import gc
import runpy
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gc", choices=["on", "off", "freeze"], default="on")
    parser.add_argument("script")
    args, rest = parser.parse_known_args()
    if args.gc == "off":
        gc.disable()
    elif args.gc == "freeze":
        # Import what a transfer imports, then freeze: later collections skip those objects.
        import httpx  # noqa: F401
        import huggingface_hub  # noqa: F401

        import agent.cli
        import agent.engine.preload
        import agent.sources.hub  # noqa: F401

        gc.freeze()
    sys.argv = [args.script, *rest]
    runpy.run_path(args.script, run_name="__main__")


if __name__ == "__main__":
    main()
