"""`preload demo`: the real flow (preload -> verify -> ready) against the built-in loopback hub, and
`preload demo --serve`: that hub alone, in the foreground, to try every command offline."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TextIO

from agent.devhub.demo_model import DEMO_REPO_ID, demo_repo
from agent.devhub.server import HubServer
from agent.engine.preload import PreloadOptions, preload
from agent.errors import UsageError
from agent.ops.verify import record, verify
from agent.sources.hub import HubSource
from agent.spec import Layout, ModelSpec
from agent.store import Store
from agent.units import fmt_bytes


def run_demo(dest: Path, layout: Layout, out: TextIO) -> None:
    """Serve the demo model on loopback, preload it, verify every byte (recorded, as `preload verify`
    does), rerun warm; a summary of a dozen lines."""
    spec = ModelSpec(DEMO_REPO_ID, layout=layout)
    store = Store(dest)
    with HubServer([demo_repo()]) as hub:
        out.write(f"demo hub on {hub.url} serving {DEMO_REPO_ID} (LFS files via {hub.cdn_url})\n")
        sources = [lambda: HubSource(hub.url, None)]
        result = preload(spec, dest, sources, PreloadOptions())
        m = result.manifest
        what = f"{len(m.files)} files, {fmt_bytes(m.total_bytes)}"
        if result.already_complete:
            out.write(
                f"1. preload  {what} already complete in {dest} from an earlier run: nothing fetched "
                f"(commit {m.commit[:12]}; delete {dest} to see a cold run)\n"
            )
        else:
            out.write(
                f"1. preload  {what} in {result.seconds:.2f}s "
                f"(commit {m.commit[:12]}, every file hashed while it arrived)\n"
            )
        report = verify(store, spec, deep=True)
        record(store, spec, report)  # as `preload verify` does: `preload status` shows it
        if not report.sound:
            raise report.error()
        algos = ", ".join(sorted({f.digest.algo for f in m.files}))
        out.write(
            f"2. verify   {report.files}/{report.files} files re-hashed from disk match ({algos}); "
            "recorded for `preload status`\n"
        )
        hub.reset_log()
        again = preload(spec, dest, sources, PreloadOptions())
        out.write(f"3. ready    {result.path}\n")
        out.write(
            f"   warm rerun: already complete in {again.seconds * 1000:.0f} ms with "
            f"{len(hub.requests())} hub requests\n"
        )
        skipped = f", {len(m.skipped)} left out by the default filter" if m.skipped else ""
        out.write(f"manifest   {store.marker_path(spec)} ({len(m.files)} files{skipped})\n")
        out.write(
            f"next       preload status --dest {dest}; `preload demo --serve` serves this hub to try "
            "every command (README: Try every command offline)\n"
        )
        out.flush()


def serve_demo(port: int, out: TextIO, host: str = "127.0.0.1") -> None:
    """Serve the demo model on `host:port` until SIGINT or SIGTERM; writes nothing to disk."""
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    try:
        server = HubServer([demo_repo()], host=host, port=port).start()
    except OSError as exc:
        raise UsageError(
            f"cannot serve the demo hub on {host}:{port}: {exc.strerror}; pick another --port"
        ) from exc
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        out.write(
            f"demo hub serving {DEMO_REPO_ID} at {server.url} (LFS files via {server.cdn_url})\n"
            f"use it with: preload --endpoint {server.url} --model {DEMO_REPO_ID} --dest demo-cache\n"
            "stop it with Ctrl-C (or SIGTERM)\n"
        )
        out.flush()
        done.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
