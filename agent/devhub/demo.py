"""`preload demo`: the real flow (preload -> verify -> ready) against the built-in loopback hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from agent.devhub.demo_model import DEMO_REPO_ID, demo_repo
from agent.devhub.server import HubServer
from agent.engine.preload import PreloadOptions, preload
from agent.errors import IntegrityError
from agent.integrity import hash_file
from agent.sources.hub import HubSource
from agent.spec import Layout, ModelSpec
from agent.store import Store
from agent.units import fmt_bytes


def run_demo(dest: Path, layout: Layout, out: TextIO) -> None:
    """Serve the demo model on loopback, preload it, re-verify every byte, show the manifest."""
    spec = ModelSpec(DEMO_REPO_ID, layout=layout)
    with HubServer([demo_repo()]) as hub:
        out.write(f"demo hub on {hub.url} serving {DEMO_REPO_ID} (LFS files via {hub.cdn_url})\n")
        result = preload(spec, dest, [lambda: HubSource(hub.url, None)], PreloadOptions(refresh=True))
        m = result.manifest
        out.write(
            f"1. preload  {len(m.files)} files, {fmt_bytes(m.total_bytes)} in {result.seconds:.2f}s "
            f"(commit {m.commit[:12]}, every file hashed while it arrived)\n"
        )
        base = Store(dest).version_dir(spec, m.commit) if layout is Layout.DIR else result.path
        for f in m.files:
            got = hash_file(base / f.path, f.digest.algo, f.size).hexdigest()
            if got != f.digest.hex:
                raise IntegrityError(f"demo: {f.path} does not match its {f.digest.algo}")
        algos = sorted({f.digest.algo for f in m.files})
        count = len(m.files)
        out.write(f"2. verify   {count}/{count} files re-hashed from disk match ({', '.join(algos)})\n")
        hub.reset_log()
        again = preload(spec, dest, [lambda: HubSource(hub.url, None)], PreloadOptions())
        out.write(f"3. ready    {result.path}\n")
        out.write(
            f"   warm rerun: already complete in {again.seconds * 1000:.0f} ms with "
            f"{len(hub.requests())} hub requests\n"
        )
        marker = Store(dest).marker_path(spec)
        out.write(f"manifest ({marker}):\n")
        out.write(json.dumps(json.loads(marker.read_text()), indent=2) + "\n")
        out.flush()
