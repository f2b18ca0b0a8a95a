"""The test hub's CDN origin: signed, expiring blob URLs and the replies to them."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable, Mapping
from email.message import Message
from urllib.parse import urlencode, urlsplit

from agent.devhub.replies import Reply, disposition, error_reply, file_reply
from agent.devhub.repo import HubFile


class CdnOrigin:
    """Where the hub redirects LFS files: its own loopback origin (`port`) or an external one."""

    def __init__(self, port: int | None, external_url: str | None, url_ttl: float) -> None:
        if (port is None) == (external_url is None):
            raise ValueError("give exactly one of port or external_url")
        self._port = port
        self._external = external_url.rstrip("/") if external_url is not None else None
        self._url_ttl = url_ttl
        # Per server, so a URL signed by one test's hub is refused by another's.
        self._secret = os.urandom(16)

    def location(self, file: HubFile, host: str) -> str:
        """A signed, expiring URL on the CDN origin, like the hub's cross-origin redirects."""
        named = {"response-content-disposition": disposition(file.path)}
        if self._external is not None:
            return f"{self._external}/{file.sha256}?{urlencode(named)}"
        # Same host name the client used for the hub, so a hub reached by a non-loopback
        # address still redirects somewhere the client can reach.
        hostname = urlsplit(f"http://{host}").hostname or "127.0.0.1"
        base = f"http://{hostname}:{self._port}/blobs"
        expires = str(int(time.time() + self._url_ttl))
        params = {**named, "Expires": expires, "Signature": self._sign(file.sha256, expires)}
        return f"{base}/{file.sha256}?{urlencode(params)}"

    def reply(
        self,
        parts: list[str],
        query: Mapping[str, str],
        headers: Message[str, str],
        find_blob: Callable[[str], HubFile | None],
    ) -> Reply:
        """The answer to a request for `/blobs/<sha256>` (`parts`: the decoded path segments)."""
        if len(parts) != 2 or parts[0] != "blobs":
            return error_reply("cdn", 404, None, "NoSuchKey")
        sha256 = parts[1]
        expires, signature = query.get("Expires", ""), query.get("Signature", "")
        if not hmac.compare_digest(signature, self._sign(sha256, expires)):
            return error_reply("cdn", 403, None, "AccessDenied")
        if not expires.isdigit() or int(expires) < time.time():
            return error_reply("cdn", 403, None, "Request has expired")
        file = find_blob(sha256)
        if file is None:
            return error_reply("cdn", 404, None, "NoSuchKey")
        blob_headers = [
            ("Content-Type", "binary/octet-stream"),
            ("ETag", f'"{sha256}"'),
            ("Content-Disposition", query.get("response-content-disposition", "inline")),
        ]
        return file_reply("cdn", file, headers.get("Range"), blob_headers)

    def _sign(self, sha256: str, expires: str) -> str:
        return hmac.new(self._secret, f"{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()
