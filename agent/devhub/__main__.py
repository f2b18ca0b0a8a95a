"""`python -m agent.devhub`: serve a directory (or the demo model) as a hub repo until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from agent.devhub.demo_model import demo_repo
from agent.devhub.repo import directory_repo
from agent.devhub.server import DEFAULT_TOKEN, HubServer


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a directory (or the demo model) as a hub repo until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m agent.devhub", description=main.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--serve-dir", type=Path, help="directory whose files form the repo")
    source.add_argument("--demo", action="store_true", help="serve the built-in tiny demo model")
    parser.add_argument("--repo", default="local/model", help="repo id (org/name) to serve it as")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=0, help="hub port (0: any free port)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (0: any free port)")
    parser.add_argument("--cdn-url", help="redirect LFS files to this blob server instead")
    parser.add_argument("--token", action="append", help="accepted token (repeatable)")
    parser.add_argument("--gated", action="store_true", help="require a token to download")
    parser.add_argument("--private", action="store_true", help="hide the repo without a token")
    parser.add_argument("--cdn-rate-limit-bps", type=int, help="per-connection CDN rate cap")
    args = parser.parse_args(argv)
    if args.demo:
        repo = demo_repo(gated=args.gated, private=args.private)
    else:
        if not args.serve_dir.is_dir():
            parser.error(f"not a directory: {args.serve_dir}")
        repo = directory_repo(args.repo, args.serve_dir, gated=args.gated, private=args.private)
    server = HubServer(
        [repo],
        host=args.host,
        port=args.port,
        cdn_port=args.cdn_port,
        cdn_url=args.cdn_url,
        tokens=args.token or (DEFAULT_TOKEN,),
        cdn_rate_limit_bps=args.cdn_rate_limit_bps,
    )
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with server:
        print(server.url, flush=True)
        print(f"serving {repo.repo_id} at {repo.commit} (CDN {server.cdn_url})", file=sys.stderr)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
