"""The Hugging Face hub (or any mirror speaking its protocol) as a Source."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from agent import __version__, log
from agent.errors import (
    AuthError,
    GatedRepoError,
    IntegrityError,
    NotFoundError,
    PreloadError,
    Throttled,
    TransientError,
    transport_error,
)
from agent.integrity import GIT_SHA1, SHA256, Digest, safe_relpath
from agent.manifest import RemoteFile, public_endpoint
from agent.sources.base import Block, Snapshot
from agent.sources.ranged import RangedReader, proxied, range_skip
from agent.spec import COMMIT_RE, DEFAULT_ENDPOINT, ModelSpec

MAX_FILE_SIZE = 1 << 40  # 1 TiB: far beyond any real shard; larger is a hostile listing
MAX_LISTING_ENTRIES = 200_000
MAX_LISTING_PAGES = 1_000
MAX_REDIRECTS = 10
SMALL_FILE = 8 << 20  # fetched in one request through the resolver; larger ones from their final URL
# The hub's CDN serves at most 50 GB per GET (and huggingface_hub refuses larger plain downloads):
# a longer range is asked for in consecutive requests of at most this many bytes.
MAX_SPAN = 16 << 30
SPAN_ALIGN = 64 << 10  # spans end on this so the body reader's blocks stay O_DIRECT-sized
_CDN_EXPIRED = {403, 404, 410}


def default_endpoint() -> str:
    """HF_ENDPOINT as the hub client reads it, else the public hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def default_token(token_file: str | None) -> str | None:
    """--token-file first, then whatever the hub client itself would use (HF_TOKEN, token file)."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise PreloadError(f"cannot read token file {token_file}: {exc.strerror}") from exc
        if not token:
            raise PreloadError(f"token file {token_file} is empty")
        return token
    found = _plain_token()
    if found is not None:
        return found or None
    from huggingface_hub import get_token  # deferred, and only for what _plain_token leaves to it

    return get_token()


def _plain_token() -> str | None:
    """The hub client's answer where it is plain, without importing it (~0.1 core-second a run):
    HF_TOKEN (or HUGGING_FACE_HUB_TOKEN) when set, "" for none when no token file can exist. None
    where the client does more (OIDC exchange, stored tokens it may refresh, staging, Colab)."""
    env = os.environ
    special = ("HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING")
    if any(env.get(k) for k in special) or any(k.startswith("COLAB_") for k in env):
        return None
    token = (
        (env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or "").replace("\r", "").replace("\n", "")
    )
    if token.strip():
        return token.strip()
    if env.get("HF_HOME") == "" or env.get("HF_TOKEN_PATH") == "":
        return None
    cache = env.get("XDG_CACHE_HOME") or "~/.cache"
    candidates = (
        env.get("HF_TOKEN_PATH"),
        os.path.join(env.get("HF_HOME") or os.path.join(cache, "huggingface"), "token"),
        "~/.cache/huggingface/token",
        "~/.cache/huggingface_staging/token",
    )
    if any(c and os.path.lexists(os.path.expandvars(os.path.expanduser(c))) for c in candidates):
        return None  # a token file: the client reads it (and may refresh what it holds)
    return ""


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                import time

                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    # The hub's IETF RateLimit header: `"resolvers";r=0;t=55` (t = seconds until reset).
    for part in headers.get("RateLimit", "").split(";"):
        key, _, val = part.strip().partition("=")
        if key == "t" and val.isdigit():
            return float(val)
    return None


class HubSource:
    """Lists a repo's tree and streams its files; large files go straight to the CDN."""

    name = "hf"

    def __init__(
        self,
        endpoint: str | None = None,
        token: str | None = None,
        *,
        read_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        max_connections: int = 16,
        max_span: int = MAX_SPAN,
    ) -> None:
        if max_span < 1:
            raise PreloadError(f"invalid maximum request span {max_span}")
        # Whole multiples of SPAN_ALIGN where possible: only a file's last block is then short.
        self.max_span = max_span - max_span % SPAN_ALIGN if max_span >= SPAN_ALIGN else max_span
        self.endpoint = (endpoint or default_endpoint()).rstrip("/")
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PreloadError(f"invalid endpoint {public_endpoint(self.endpoint)!r}: need http(s)://host")
        self._origin = (parts.scheme, parts.netloc)
        self._host = _host(self.endpoint)  # named in connection errors
        self._token = token
        log.register_secret(token)
        headers = {"User-Agent": f"model-cache-preloader/{__version__}", "Accept-Encoding": "identity"}
        ssl_context = httpx.create_ssl_context(trust_env=True)
        self._client = httpx.Client(
            timeout=httpx.Timeout(connect_timeout, read=read_timeout, write=read_timeout, pool=None),
            limits=httpx.Limits(
                max_connections=max_connections + 4, max_keepalive_connections=max_connections + 4
            ),
            headers=headers,
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            verify=ssl_context,
            trust_env=True,
        )
        self._ranged = RangedReader(ssl_context, connect_timeout, read_timeout, headers)
        self._direct: dict[str, str] = {}
        self._direct_lock = threading.Lock()

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()
        self._ranged.close()

    # -- requests -----------------------------------------------------------------

    def _headers(self, url: str) -> dict[str, str]:
        parts = urlsplit(url)
        if self._token and (parts.scheme, parts.netloc) == self._origin:
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    def _raise_for(self, response: httpx.Response, what: str, repo: str) -> None:
        self._raise_for_status(response.status_code, response.headers, what, repo)

    def _raise_for_status(self, status: int, headers: Mapping[str, str], what: str, repo: str) -> None:
        if status < 400:
            return
        code = headers.get("X-Error-Code", "")
        if status in (429, 503):
            raise Throttled(f"{what}: HTTP {status}", retry_after=_retry_after(headers))
        if status == 408 or status >= 500:
            raise TransientError(f"{what}: HTTP {status}", retry_after=_retry_after(headers))
        page = f"{self.endpoint}/{repo}"
        if code == "GatedRepo":
            raise GatedRepoError(
                f"{repo} is gated: accept its license at {page} and provide a token with access "
                "(HF_TOKEN or --token-file)"
            )
        if code == "RevisionNotFound":
            raise NotFoundError(f"{what}: revision not found in {repo}")
        if code == "EntryNotFound":
            raise NotFoundError(f"{what}: file not found in {repo}")
        if code == "RepoNotFound" or status == 404:
            hint = "" if self._token else " (if it is private, provide a token)"
            raise NotFoundError(f"repository {repo} not found at {public_endpoint(self.endpoint)}{hint}")
        if status == 401:
            if self._token:
                raise AuthError(f"{what}: the hub rejected the token (HTTP 401); check HF_TOKEN/--token-file")
            raise AuthError(f"{what}: authentication required (HTTP 401); provide HF_TOKEN or --token-file")
        if status == 403:
            raise AuthError(f"{what}: access denied (HTTP 403); the token lacks access to {repo}")
        raise PreloadError(f"{what}: unexpected HTTP {status}")

    def _get_json(self, url: str, what: str, repo: str) -> tuple[Any, httpx.Response]:
        try:
            response = self._client.get(url, headers=self._headers(url))
        except httpx.TooManyRedirects as exc:
            raise PreloadError(f"{what}: too many redirects (redirect loop?)") from exc
        except httpx.TransportError as exc:
            raise transport_error(what, self._host, exc) from exc
        self._raise_for(response, what, repo)
        try:
            return response.json(), response
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise IntegrityError(f"{what}: the server sent invalid JSON") from exc

    # -- Source protocol ------------------------------------------------------------

    def resolve_commit(self, spec: ModelSpec) -> str:
        """The commit a branch or tag points at now (a commit resolves to itself)."""
        if spec.pinned:
            return spec.revision
        url = f"{self.endpoint}/api/models/{spec.repo}/revision/{quote(spec.revision, safe='')}"
        doc, _ = self._get_json(url, f"resolving {spec.repo}@{spec.revision}", spec.repo)
        sha = doc.get("sha") if isinstance(doc, dict) else None
        if not isinstance(sha, str) or not COMMIT_RE.match(sha):
            raise IntegrityError(f"resolving {spec.repo}@{spec.revision}: no valid commit in the answer")
        return sha

    def list_files(self, spec: ModelSpec, commit: str) -> tuple[RemoteFile, ...]:
        """Every file at `commit`, with size and expected hash, validated against hostile input."""
        url: str | None = f"{self.endpoint}/api/models/{spec.repo}/tree/{commit}?recursive=true&expand=false"
        files: dict[str, RemoteFile] = {}
        pages = 0
        while url:
            pages += 1
            if pages > MAX_LISTING_PAGES:
                raise IntegrityError(f"listing {spec.repo}: more than {MAX_LISTING_PAGES} pages")
            doc, response = self._get_json(url, f"listing {spec.repo}@{commit[:12]}", spec.repo)
            if not isinstance(doc, list):
                raise IntegrityError(f"listing {spec.repo}: expected a JSON array")
            for entry in doc:
                rf = _parse_entry(entry)
                if rf is None:
                    continue
                if rf.path in files:
                    raise IntegrityError(f"listing {spec.repo}: file {rf.path!r} listed twice")
                files[rf.path] = rf
            if len(files) > MAX_LISTING_ENTRIES:
                raise IntegrityError(f"listing {spec.repo}: more than {MAX_LISTING_ENTRIES} files")
            nxt = response.links.get("next", {}).get("url")
            url = urljoin(url, nxt) if nxt else None
        _check_no_file_dir_clash(files)
        return tuple(files[p] for p in sorted(files))

    def snapshot(self, spec: ModelSpec) -> Snapshot:
        """Resolve and list in one go."""
        commit = self.resolve_commit(spec)
        return Snapshot(commit, self.list_files(spec, commit), self.name, public_endpoint(self.endpoint))

    def _resolve_url(self, spec: ModelSpec, commit: str, file: RemoteFile) -> str:
        return f"{self.endpoint}/{spec.repo}/resolve/{commit}/{quote(file.path)}"

    def direct_url(self, spec: ModelSpec, commit: str, file: RemoteFile) -> str:
        """The final (CDN) URL of a file, found once with a HEAD so ranged requests skip the resolver."""
        key = f"{spec.repo}@{commit}/{file.path}"
        with self._direct_lock:
            if key in self._direct:
                return self._direct[key]
            url = self._resolve_url(spec, commit, file)
            what = f"resolving {file.path}"
            # Hop by hop (HEAD, no body): the last URL is the one that serves the bytes.
            for _ in range(MAX_REDIRECTS + 1):
                try:
                    response = self._client.head(url, headers=self._headers(url), follow_redirects=False)
                except httpx.TransportError as exc:
                    raise transport_error(what, _host(url), exc) from exc
                self._raise_for(response, what, spec.repo)
                location = response.headers.get("Location") if response.is_redirect else None
                if not location:
                    self._direct[key] = url
                    return url
                url = urljoin(url, location)
            raise PreloadError(f"{what}: too many redirects (redirect loop?)")

    def forget_direct_url(self, spec: ModelSpec, commit: str, file: RemoteFile) -> None:
        """Drop a cached CDN URL (it may have expired)."""
        with self._direct_lock:
            self._direct.pop(f"{spec.repo}@{commit}/{file.path}", None)

    @contextmanager
    def open_range(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Iterator[Iterator[Block]]:
        """Stream [start, end) of a file; a whole small file goes through the resolver.

        Ranges go straight to the file's final (CDN) URL and, unless a proxy is configured,
        are read with the lean body reader. A range longer than `max_span` is read as
        consecutive requests of at most that many bytes (the CDN refuses longer ones).
        """
        if end - start <= self.max_span:
            with self._open_one(spec, snap, file, start, end) as blocks:
                yield blocks
            return
        yield self._spans(spec, snap, file, start, end)

    def _spans(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Iterator[Block]:
        for first in range(start, end, self.max_span):
            with self._open_one(spec, snap, file, first, min(first + self.max_span, end)) as blocks:
                yield from blocks

    @contextmanager
    def _open_one(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Iterator[Iterator[Block]]:
        """One request for [start, end), at most `max_span` bytes."""
        whole = start == 0 and end == file.size and file.size <= min(SMALL_FILE, self.max_span)
        url = (
            self._resolve_url(spec, snap.commit, file) if whole else self.direct_url(spec, snap.commit, file)
        )
        headers = self._headers(url)
        if not whole:
            headers["Range"] = f"bytes={start}-{end - 1}"
        what = f"downloading {file.path}"
        resolver = whole or url == self._resolve_url(spec, snap.commit, file)

        def check(status: int, reply_headers: Mapping[str, str]) -> int:
            if not resolver and status in _CDN_EXPIRED:
                self.forget_direct_url(spec, snap.commit, file)
                raise TransientError(f"{what}: CDN answered {status}; re-resolving")
            self._raise_for_status(status, reply_headers, what, spec.repo)
            return range_skip(status, reply_headers, start, file.size, what)

        if not whole and not proxied(url):
            for _ in range(MAX_REDIRECTS + 1):
                with self._ranged.get(url, headers, what) as (reply, body):
                    location = reply.headers.get("Location") if reply.status in _REDIRECTS else None
                    if location is None:
                        skip = check(reply.status, reply.headers)
                        yield body.blocks(skip, end - start)
                        return
                url = urljoin(url, location)
                headers = {**self._headers(url), "Range": headers["Range"]}
            raise PreloadError(f"{what}: too many redirects (redirect loop?)")
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                skip = check(response.status_code, response.headers)
                yield _body(response, skip, end - start, what)
        except httpx.TooManyRedirects as exc:
            raise PreloadError(f"{what}: too many redirects (redirect loop?)") from exc
        except httpx.TransportError as exc:
            raise transport_error(what, _host(url), exc) from exc


def _host(url: str) -> str:
    """HOST[:PORT] of a URL, without credentials: what a connection error names."""
    return urlsplit(url).netloc.rpartition("@")[2]


_REDIRECTS = {301, 302, 303, 307, 308}


def _body(response: httpx.Response, skip: int, want: int, what: str) -> Iterator[bytes]:
    got = 0
    try:
        for block in response.iter_raw():
            if skip:
                drop = min(skip, len(block))
                block, skip = block[drop:], skip - drop
                if not block:
                    continue
            if got + len(block) > want:
                block = block[: want - got]
            got += len(block)
            yield block
            if got >= want:
                return
    except httpx.TransportError as exc:
        raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from exc
    if got < want:
        raise TransientError(f"{what}: body ended after {got} of {want} bytes")


def _parse_entry(entry: object) -> RemoteFile | None:
    if not isinstance(entry, dict):
        raise IntegrityError("listing: an entry is not an object")
    kind = entry.get("type")
    if kind == "directory":
        return None
    if kind != "file":
        raise IntegrityError(f"listing: unknown entry type {str(kind)[:40]!r}")
    path = entry.get("path")
    size = entry.get("size")
    if not isinstance(path, str):
        raise IntegrityError("listing: an entry has no path")
    safe_relpath(path)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_SIZE:
        raise IntegrityError(f"listing: {path!r} has an invalid size {str(size)[:40]!r}")
    lfs = entry.get("lfs")
    if isinstance(lfs, dict):
        if lfs.get("size", size) != size:
            raise IntegrityError(f"listing: {path!r} has inconsistent LFS size")
        oid = entry.get("oid")
        blob_id = Digest(GIT_SHA1, oid).hex if isinstance(oid, str) else None
        return RemoteFile(path, size, Digest(SHA256, str(lfs.get("oid") or "")), blob_id)
    return RemoteFile(path, size, Digest(GIT_SHA1, str(entry.get("oid", ""))))


def _check_no_file_dir_clash(files: dict[str, RemoteFile]) -> None:
    for path in files:
        head = path
        while "/" in head:
            head = head.rsplit("/", 1)[0]
            if head in files:
                raise IntegrityError(f"listing: {head!r} is both a file and a directory")
