"""The manifest: what a complete model is made of. Written last, as the completion marker."""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent import __version__
from agent.errors import IntegrityError
from agent.integrity import PENDING_SHA256, Digest, safe_relpath
from agent.spec import COMMIT_RE

FORMAT_VERSION = 2  # 2: `skipped`, the listed files left out by the selection
TOOL = "model-cache-preloader"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a model as a source lists it: where, how big, what hash."""

    path: str
    size: int
    digest: Digest
    blob_id: str | None = None  # git object id; differs from `digest` for LFS files


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to trust a published model."""

    repo: str
    revision: str
    commit: str
    layout: str
    source: str
    files: tuple[RemoteFile, ...]
    started_at: float
    completed_at: float
    endpoint: str | None = None
    hash_origin: str = "source"
    # Files the commit has but the selection left out: with `files`, the commit's whole
    # listing, so a later run with another selection can tell offline whether it is covered.
    skipped: tuple[RemoteFile, ...] = ()
    tool_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Sum of all file sizes."""
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        """Serialise; the format is versioned and documented in docs/format.md."""
        doc: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "tool": TOOL,
            "tool_version": self.tool_version,
            "repo": self.repo,
            "revision": self.revision,
            "commit": self.commit,
            "layout": self.layout,
            "source": self.source,
            "endpoint": self.endpoint,
            "hash_origin": self.hash_origin,
            "total_bytes": self.total_bytes,
            "file_count": len(self.files),
            "started_at": _iso(self.started_at),
            "completed_at": _iso(self.completed_at),
            "files": [_file_doc(f) for f in self.files],
            "skipped": [_file_doc(f) for f in self.skipped],
        }
        if self.extra:
            doc["extra"] = self.extra
        return json.dumps(doc, indent=1, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate; any defect raises IntegrityError."""
        try:
            doc = json.loads(text)
            if doc["format"] != FORMAT_VERSION or doc["tool"] != TOOL:
                raise IntegrityError(f"unsupported manifest format {doc.get('format')!r}")
            files = tuple(_parse_file(f) for f in doc["files"])
            skipped = tuple(_parse_file(f) for f in doc["skipped"])
            if len({f.path for f in files + skipped}) != len(files) + len(skipped):
                raise IntegrityError("manifest lists a file twice")
            if not COMMIT_RE.match(doc["commit"]) and doc["hash_origin"] != "source-computed":
                raise IntegrityError(f"manifest commit {doc['commit']!r} is not a commit id")
            m = cls(
                repo=str(doc["repo"]),
                revision=str(doc["revision"]),
                commit=str(doc["commit"]),
                layout=str(doc["layout"]),
                source=str(doc["source"]),
                files=files,
                started_at=_parse_iso(doc["started_at"]),
                completed_at=_parse_iso(doc["completed_at"]),
                endpoint=doc.get("endpoint"),
                hash_origin=str(doc.get("hash_origin", "source")),
                skipped=skipped,
                tool_version=str(doc["tool_version"]),
                extra=dict(doc.get("extra") or {}),
            )
            if doc["total_bytes"] != m.total_bytes:
                raise IntegrityError("manifest total_bytes disagrees with its files")
            return m
        except IntegrityError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"invalid manifest: {type(exc).__name__}: {exc}") from exc


def public_endpoint(url: str) -> str:
    """The endpoint as it may be recorded: no credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def _file_doc(f: RemoteFile) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "path": f.path,
        "size": f.size,
        "algo": f.digest.algo,
        "hash": f.digest.hex,
    }
    if f.blob_id and f.blob_id != f.digest.hex:
        doc["blob_id"] = f.blob_id
    return doc


def _parse_file(doc: dict[str, Any]) -> RemoteFile:
    if doc["algo"] == PENDING_SHA256:  # a stand-in: it vouches for nothing
        raise IntegrityError(f"file {str(doc['path'])[:200]!r} has no hash")
    return RemoteFile(
        safe_relpath(doc["path"]),
        _nonneg(doc["size"]),
        Digest(doc["algo"], doc["hash"]),
        Digest("git-sha1", doc["blob_id"]).hex if doc.get("blob_id") else None,
    )


def _nonneg(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise IntegrityError(f"invalid file size {value!r}")
    return value


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _parse_iso(text: str) -> float:
    base, _, frac = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + (int(frac or 0) / 1000)
