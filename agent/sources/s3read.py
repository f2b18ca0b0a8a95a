"""Reading object bodies from a bucket: ranged GETs on presigned URLs through the lean reader.

Bodies do not go through botocore: each object gets a presigned URL (signed once, reused for
URL_REUSE seconds, so a block costs no signing), read with ranged GETs by the same reader the
hub's CDN downloads use (ranged.py: http.client on kept-alive connections, straight into reused
page-aligned buffers), so the transfer engine splits, resumes, journals and hashes bucket reads
as it does hub downloads. Behind an HTTP proxy (which botocore implements and the lean reader
does not) the same range goes through botocore's streaming body.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from agent.errors import AuthError, NotFoundError, PreloadError, TransientError
from agent.sources.base import Block
from agent.sources.ranged import RangedReader, proxied, range_skip
from agent.sources.s3api import S3Api, retry_after, ssl_context, translate
from agent.sources.s3loc import S3Location

URL_REUSE = 3000  # seconds a presigned URL is reused: re-signed well before it lapses (s3api)
FRESH_URL = 60.0  # a 403 on a URL younger than this is a real denial, not an expiry
BOTOCORE_BLOCK = 512 << 10


class S3BodyReader:
    """Ranged reads of objects under one bucket prefix; thread-safe, connections kept alive."""

    def __init__(self, loc: S3Location, api: Callable[[], S3Api], read_timeout: float) -> None:
        self.loc = loc
        self._api = api  # made on first use by the source
        self._read_timeout = read_timeout
        self._ranged: RangedReader | None = None
        self._urls: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close pooled body connections."""
        if self._ranged is not None:
            self._ranged.close()

    def _url(self, rel: str) -> tuple[str, float]:
        with self._lock:
            cached = self._urls.get(rel)
            if cached is not None and time.monotonic() - cached[1] < URL_REUSE:
                return cached
        made = (self._api().presign(rel), time.monotonic())
        with self._lock:
            self._urls[rel] = made
        return made

    @contextmanager
    def read(self, rel: str, size: int, start: int, end: int) -> Iterator[Iterator[Block]]:
        """Stream [start, end) of the object PREFIX/rel (`size` bytes) with one ranged GET."""
        url, made = self._url(rel)
        what = f"downloading {self.loc.url}/{rel}"
        if proxied(url):
            with self.via_botocore(rel, size, start, end, what) as blocks:
                yield blocks
            return
        with self._lock:
            if self._ranged is None:
                self._ranged = RangedReader(
                    ssl_context(), 10.0, self._read_timeout, {"Accept-Encoding": "identity"}
                )
            ranged = self._ranged
        headers = {"Range": f"bytes={start}-{end - 1}"}
        with ranged.get(url, headers, what) as (reply, body):
            self._check(reply.status, reply.headers, rel, made, what)
            yield body.blocks(range_skip(reply.status, reply.headers, start, size, what), end - start)

    def _check(self, status: int, headers: Mapping[str, str], rel: str, made: float, what: str) -> None:
        if status < 400:
            return
        if status in (408, 429) or status >= 500:  # SlowDown is a 503
            raise TransientError(f"{what}: HTTP {status}", retry_after=retry_after(headers))
        if status == 403:
            with self._lock:
                self._urls.pop(rel, None)
            if time.monotonic() - made > FRESH_URL:
                raise TransientError(f"{what}: HTTP 403 on a signed URL of age; signing it again")
            raise AuthError(f"{what}: access to bucket {self.loc.bucket} denied (HTTP 403)")
        if status == 404:
            raise NotFoundError(f"{what}: the object is gone from bucket {self.loc.bucket}")
        raise PreloadError(f"{what}: unexpected HTTP {status}")

    @contextmanager
    def via_botocore(
        self, rel: str, size: int, start: int, end: int, what: str = ""
    ) -> Iterator[Iterator[Block]]:
        """The same range through botocore's streaming body (see the module docstring)."""
        what = what or f"downloading {self.loc.url}/{rel}"
        api = self._api()
        reply = api.call(what, api.client.get_object, Key=self.loc.key(rel), Range=f"bytes={start}-{end - 1}")
        body = reply["Body"]
        try:
            yield _stream(body, end - start, what, self.loc)
        finally:
            body.close()


def _stream(body: Any, want: int, what: str, loc: S3Location) -> Iterator[bytes]:
    got = 0
    try:
        for block in body.iter_chunks(BOTOCORE_BLOCK):
            got += len(block)
            if got > want:
                raise TransientError(f"{what}: the server sent more than the {want} bytes asked for")
            yield block
    except PreloadError:
        raise
    except Exception as exc:
        raise translate(exc, what, loc) from exc
    if got < want:
        raise TransientError(f"{what}: body ended after {got} of {want} bytes")
