"""`preload status`: every model under DIR, in both layouts, with its state. Stats only, no hashing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.errors import UsageError
from agent.manifest import Manifest
from agent.ops.verify import last_verified, verify
from agent.spec import Layout, ModelSpec
from agent.store import Store
from agent.units import fmt_bytes, iso_seconds

COMPLETE = "complete"
PARTIAL = "partial"
CORRUPT = "corrupt"
UNVERIFIED_SOURCE = "unverified-source"


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
    rows: dict[tuple[str, str], ModelStatus] = {}
    for lay in Layout:
        for marker in sorted((store.state / "markers" / lay.value).glob("*/*.json")):
            spec = ModelSpec(f"{marker.parent.name}/{marker.stem}", layout=lay)
            rows[(spec.repo, lay.value)] = _from_marker(store, spec)
    for repo, layout in _unpublished(store, rows):
        rows[(repo, layout)] = ModelStatus(repo, layout, PARTIAL, busy=_busy(store, repo, layout))
    return [rows[k] for k in sorted(rows)]


def _from_marker(store: Store, spec: ModelSpec) -> ModelStatus:
    busy = _busy(store, spec.repo, spec.layout.value)
    m = store.read_marker(spec)
    if m is None:
        return ModelStatus(spec.repo, spec.layout.value, CORRUPT, busy=busy)
    report = verify(store, spec, rehash=False)
    last = last_verified(store, spec)
    if last is not None and last.commit != m.commit:
        last = None
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
        busy=busy,
        problems=problems,
    )


def _state(m: Manifest, problems: int, last_failed: bool) -> str:
    if problems or last_failed:
        return CORRUPT
    return UNVERIFIED_SOURCE if m.hash_origin == "source-computed" else COMPLETE


def _unpublished(store: Store, rows: dict[tuple[str, str], ModelStatus]) -> list[tuple[str, str]]:
    """Models with staging files or a hub-cache folder but no marker: an interrupted transfer."""
    found = []
    for d in sorted((store.state / "staging").glob("*--*")):
        repo = d.name.replace("--", "/", 1)
        # A staging folder does not say its layout; it only matters when no layout is published.
        if not any(r == repo for r, _ in rows):
            found.append((repo, "-"))
    for d in sorted(store.root.glob("models--*--*")):
        repo = d.name.removeprefix("models--").replace("--", "/", 1)
        if (repo, Layout.HF_CACHE.value) not in rows:
            found.append((repo, Layout.HF_CACHE.value))
    return found


def _busy(store: Store, repo: str, layout: str) -> bool:
    try:
        spec = ModelSpec(repo, layout=Layout(layout) if layout != "-" else Layout.DIR)
        return store.busy(spec)
    except ValueError:
        return False


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
