"""Replies the test hub sends: status, headers and a body (bytes, or a span of a file)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import quote

from agent.devhub.faults import Kind
from agent.devhub.repo import HubFile

# Which origin a request came to: the hub itself or its CDN.
Role = Literal["hub", "cdn"]


@dataclass(frozen=True)
class Span:
    """A byte range of a file to send."""

    file: HubFile
    offset: int
    length: int


@dataclass
class Reply:
    """What the handler sends: status, headers and an optional body."""

    kind: Kind
    status: int
    headers: list[tuple[str, str]]
    body: bytes | Span = b""

    @property
    def length(self) -> int:
        """Body length in bytes."""
        return self.body.length if isinstance(self.body, Span) else len(self.body)


def error_reply(
    kind: Kind, status: int, code: str | None, message: str, extra: Iterable[tuple[str, str]] = ()
) -> Reply:
    """An error reply shaped like the hub's: JSON body plus X-Error-Code/X-Error-Message."""
    headers = [("Content-Type", "application/json; charset=utf-8"), ("X-Error-Message", message)]
    if code is not None:
        headers.append(("X-Error-Code", code))
    headers.extend(extra)
    return Reply(kind, status, headers, json.dumps({"error": message}).encode())


def json_reply(kind: Kind, payload: object, extra: Iterable[tuple[str, str]] = ()) -> Reply:
    """A 200 JSON reply."""
    headers = [("Content-Type", "application/json; charset=utf-8"), *extra]
    return Reply(kind, 200, headers, json.dumps(payload).encode())


def parse_range(header: str | None, size: int) -> tuple[int, int] | Literal["invalid"] | None:
    """The (start, end-inclusive) a single-range header asks for, None to send it all."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header[len("bytes=") :].strip().partition("-")
    if not sep or not (first.isdigit() or (not first and last.isdigit())):
        return None
    if last and not last.isdigit():
        return None
    if not first:
        suffix = int(last)
        return "invalid" if suffix == 0 or size == 0 else (max(0, size - suffix), size - 1)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return "invalid"
    return start, end


def file_reply(kind: Kind, file: HubFile, range_header: str | None, headers: list[tuple[str, str]]) -> Reply:
    """A 200, 206 or 416 for a file, honouring a single byte range."""
    wanted = parse_range(range_header, file.size)
    headers = [*headers, ("Accept-Ranges", "bytes")]
    if wanted == "invalid":
        headers.append(("Content-Range", f"bytes */{file.size}"))
        return Reply(kind, 416, headers)
    if wanted is None:
        return Reply(kind, 200, headers, Span(file, 0, file.size))
    start, end = wanted
    headers.append(("Content-Range", f"bytes {start}-{end}/{file.size}"))
    return Reply(kind, 206, headers, Span(file, start, end - start + 1))


def disposition(path: str) -> str:
    """The Content-Disposition the hub and its CDN give a file (inline, named after it)."""
    name = PurePosixPath(path).name
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{quote(name)}\";"
