"""`preload status`: every model under DIR, in both layouts, with its state. Stats only, no hashing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.errors import UsageError
from agent.manifest import Manifest
from agent.ops.verify import verify
from agent.store import Store, inventory
from agent.units import fmt_bytes, iso_seconds

COMPLETE = "complete"
PARTIAL = "partial"
CORRUPT = "corrupt"
UNVERIFIED_SOURCE = "unverified-source"
UNKNOWN_LAYOUT = "-"  # partial files whose layout nothing on disk says yet


@dataclass(frozen=True)
class ModelStatus:
    """One row of `preload status`."""

    repo: str
    layout: str
    state: str
    revision: str | None = None
    commit: str | None = None
    bytes: int = 0
    files: int = 0
    hash_origin: str | None = None
    source: str | None = None
    verified_at: str | None = None
    verified_deep: bool | None = None
    busy: bool = False  # a preload holds the model's lock right now
    problems: int = 0  # missing + corrupt + extra files seen by the fast check

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def scan(root: Path) -> list[ModelStatus]:
    """Every model with a marker, plus leftovers of unfinished transfers, sorted by repo and layout."""
    if not root.is_dir():
        raise UsageError(f"--dest {root} is not a directory")
    store = Store(root)
    inv = inventory.scan(root)
    rows: dict[tuple[str, str], ModelStatus] = {}
    for inst in inv.models:
        rows[(inst.spec.repo, inst.spec.layout.value)] = _from_marker(store, inst)
    # A staging folder does not say its layout; it only matters when no layout is published.
    published = {repo for repo, _ in rows}
    for left in inv.staging:
        if left.repo not in published:
            rows[(left.repo, UNKNOWN_LAYOUT)] = ModelStatus(
                left.repo, UNKNOWN_LAYOUT, PARTIAL, busy=left.busy
            )
    for un in inv.unpublished:
        rows[(un.repo, un.layout.value)] = ModelStatus(un.repo, un.layout.value, PARTIAL, busy=un.busy)
    return [rows[k] for k in sorted(rows)]


def _from_marker(store: Store, inst: inventory.Installed) -> ModelStatus:
    spec, m, last = inst.spec, inst.manifest, inst.verified
    if m is None:
        return ModelStatus(spec.repo, spec.layout.value, CORRUPT, busy=inst.busy)
    report = verify(store, spec, rehash=False)
    problems = len(report.missing) + len(report.corrupt) + len(report.extra)
    return ModelStatus(
        repo=spec.repo,
        layout=spec.layout.value,
        state=_state(m, problems, last is not None and not last.sound),
        revision=m.revision,
        commit=m.commit,
        bytes=m.total_bytes,
        files=len(m.files),
        hash_origin=m.hash_origin,
        source=m.source,
        verified_at=iso_seconds(last.at) if last else None,
        verified_deep=last.deep if last else None,
        busy=inst.busy,
        problems=problems,
    )


def _state(m: Manifest, problems: int, last_failed: bool) -> str:
    if problems or last_failed:
        return CORRUPT
    return UNVERIFIED_SOURCE if m.hash_origin == "source-computed" else COMPLETE


def render_table(rows: list[ModelStatus]) -> str:
    """A plain aligned table for humans."""
    if not rows:
        return "no models\n"
    header = ("MODEL", "LAYOUT", "REVISION", "COMMIT", "SIZE", "FILES", "STATE", "LAST VERIFIED")
    lines = [header]
    for r in rows:
        state = r.state + (" (busy)" if r.busy else "")
        verified = "never" if r.verified_at is None else r.verified_at + (" deep" if r.verified_deep else "")
        lines.append(
            (
                r.repo,
                r.layout,
                r.revision or "-",
                (r.commit or "-")[:12],
                fmt_bytes(r.bytes) if r.commit else "-",
                str(r.files) if r.commit else "-",
                state,
                verified if r.commit else "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n" for line in lines
    )
