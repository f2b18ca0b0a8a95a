"""An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, SeaweedFS, R2, GCS's S3 API) as a Source.

`s3://BUCKET/PREFIX` is read like a directory source whose root is PREFIX: a tree pushed by
`preload push` (its manifest under PREFIX/.preload/markers/, the store's own names), a hub
cache (PREFIX/models--ORG--NAME/), or plain objects under PREFIX/ORG/NAME/ (hashes from the
hub's listing when `hf` is also a source, else from each object's full-object
x-amz-checksum-sha256, else read and computed: "source-computed"). kinds.py holds the rules
all sources share.

botocore signs and lists: it is what the AWS CLI runs on, so credentials and endpoints are
found exactly as every AWS tool finds them (environment, profiles and shared files, web
identity / EKS IRSA, AWS_ENDPOINT_URL[_S3], path-style for custom endpoints). It is imported
only when a bucket is actually read: a warm start never pays for it. Bodies do not go through
botocore: each object gets a presigned URL, read with ranged GETs by the same lean reader the
hub's CDN downloads use (ranged.py: http.client straight into reused page-aligned buffers),
so the transfer engine splits, resumes, journals and hashes bucket reads as it does hub
downloads. Retries are the engine's (agent/retry.py); botocore's own are switched off.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from agent import __version__, log
from agent.errors import AuthError, IntegrityError, NotFoundError, PreloadError, TransientError
from agent.integrity import SHA256, Digest, new_hasher, safe_relpath
from agent.manifest import RemoteFile
from agent.sources import kinds
from agent.sources.base import Block, Snapshot, SourceFactory
from agent.sources.ranged import RangedReader, proxied, range_skip
from agent.sources.s3loc import S3Location
from agent.spec import ModelSpec

MAX_SMALL_OBJECT = 256 << 20  # a manifest, ref or tree listing; larger is not one
URL_LIFETIME = 3600  # seconds a presigned URL is valid
URL_REUSE = URL_LIFETIME - 600  # re-sign well before it lapses (clock skew, long ranges)
FRESH_URL = 60.0  # a 403 on a URL younger than this is a real denial, not an expiry
HEAD_WORKERS = 16
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "OperationAborted",
    }
)
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "Forbidden",
    }
)
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
T = TypeVar("T")


# -- botocore: client, errors ------------------------------------------------------------


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def translate(exc: Exception, what: str, loc: S3Location) -> PreloadError:
    """A botocore failure as one of our errors; never with credentials, signatures or URLs."""
    from botocore import exceptions as bx

    if isinstance(exc, PreloadError):
        return exc
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.CredentialRetrievalError):
        return AuthError(
            f"{what}: no usable AWS credentials for bucket {loc.bucket} ({type(exc).__name__}; "
            "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a web identity)"
        )
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = str(err.get("Code", ""))
        status = int(meta.get("HTTPStatusCode", 0) or 0)
        headers = meta.get("HTTPHeaders", {}) or {}
        if code in _TRANSIENT_CODES or status in (408, 429) or status >= 500:
            return TransientError(
                f"{what}: {code or 'HTTP'} {status} from bucket {loc.bucket}",
                retry_after=_retry_after(headers),
            )
        if code == "NoSuchBucket":
            return NotFoundError(f"{what}: bucket {loc.bucket} does not exist")
        if code in _MISSING_KEY_CODES or status == 404:
            return NotFoundError(f"{what}: not found in bucket {loc.bucket}")
        if code in _DENIED_CODES or status in (401, 403):
            return AuthError(
                f"{what}: access to bucket {loc.bucket} denied ({code or status}); check the AWS "
                "credentials and the bucket's policy"
            )
        return PreloadError(f"{what}: bucket {loc.bucket} answered {code or 'HTTP'} {status}")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        return TransientError(f"{what}: cannot reach the endpoint of bucket {loc.bucket}")
    if isinstance(exc, bx.HTTPClientError | bx.ReadTimeoutError | bx.ResponseStreamingError):
        return TransientError(f"{what}: {type(exc).__name__}")
    if isinstance(exc, bx.BotoCoreError):
        return PreloadError(f"{what}: {type(exc).__name__} (bucket {loc.bucket})")
    raise exc


def ssl_context() -> ssl.SSLContext:
    """TLS as the AWS tools verify it: AWS_CA_BUNDLE, else the system's (SSL_CERT_FILE/DIR)."""
    bundle = os.environ.get("AWS_CA_BUNDLE")
    if bundle:
        return ssl.create_default_context(cafile=bundle)
    import httpx

    return httpx.create_ssl_context(trust_env=True)


class S3Api:
    """One botocore S3 client, its errors translated; shared by the source and `push`."""

    def __init__(self, loc: S3Location, *, max_connections: int = 16, read_timeout: float = 30.0) -> None:
        import botocore.session
        from botocore.config import Config

        self.loc = loc
        # botocore reads AWS_DEFAULT_REGION; AWS_REGION is what the newer SDKs and the CLI v2 read.
        region = os.environ.get("AWS_REGION") or None
        config = Config(
            signature_version="s3v4",
            retries={"total_max_attempts": 1, "mode": "standard"},  # ours, in agent/retry.py
            max_pool_connections=max_connections + 4,
            connect_timeout=10,
            read_timeout=read_timeout,
            user_agent_extra=f"model-cache-preloader/{__version__}",
            # We check every byte against our own hashes; per-request CRCs only cost CPU, and
            # several S3-compatible servers refuse the trailer checksums newer botocores send.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = botocore.session.get_session()
        try:
            # Any: botocore builds the S3 methods at run time, so no type lists them.
            self.client: Any = session.create_client("s3", region_name=region, config=config)
            creds = session.get_credentials()
        except Exception as exc:
            raise translate(exc, f"connecting to {loc.url}", loc) from exc
        if creds is None:
            raise AuthError(
                f"no AWS credentials found for bucket {loc.bucket}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a web identity (AWS_WEB_IDENTITY_TOKEN_FILE "
                "and AWS_ROLE_ARN)"
            )
        frozen = creds.get_frozen_credentials()
        log.register_secret(frozen.secret_key)
        log.register_secret(frozen.token)

    def call(self, what: str, fn: Callable[..., T], **kw: Any) -> T:
        """One request; failures translated (not retried here)."""
        try:
            return fn(Bucket=self.loc.bucket, **kw)
        except Exception as exc:
            raise translate(exc, what, self.loc) from exc

    def list(self, rel_dir: str) -> dict[str, tuple[int, str]]:
        """Every object under PREFIX/rel_dir/: name relative to that folder -> (size, ETag).
        Folder placeholder objects (names ending in '/') are left out."""
        base = self.loc.key(rel_dir.rstrip("/") + "/")
        out: dict[str, tuple[int, str]] = {}
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Prefix": base, "MaxKeys": 1000}
            if token:
                kw["ContinuationToken"] = token
            page = self.call(f"listing {self.loc.url}/{rel_dir}", self.client.list_objects_v2, **kw)
            for obj in page.get("Contents", []):
                key = str(obj["Key"])
                if not key.endswith("/"):
                    out[key[len(base) :]] = (int(obj["Size"]), str(obj.get("ETag", "")))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return out

    def get_small(self, rel: str) -> bytes | None:
        """A small object's bytes (a manifest, ref, listing), or None if it does not exist."""
        what = f"reading {self.loc.url}/{rel}"
        try:
            reply = self.call(what, self.client.get_object, Key=self.loc.key(rel))
        except NotFoundError as exc:
            if "does not exist" in str(exc):  # the bucket itself: not "this object is absent"
                raise
            return None
        body = reply["Body"]
        try:
            if int(reply.get("ContentLength", 0)) > MAX_SMALL_OBJECT:
                raise IntegrityError(f"{what}: {reply['ContentLength']} bytes is too large to be a manifest")
            data: bytes = body.read()
        except Exception as exc:
            raise translate(exc, what, self.loc) from exc
        finally:
            body.close()
        return data

    def head(self, rel: str, checksums: bool = False) -> dict[str, Any] | None:
        """An object's metadata (with its stored checksums when asked), or None if absent."""
        kw: dict[str, Any] = {"Key": self.loc.key(rel)}
        if checksums:
            kw["ChecksumMode"] = "ENABLED"
        try:
            reply: dict[str, Any] = self.call(f"reading {self.loc.url}/{rel}", self.client.head_object, **kw)
        except NotFoundError as exc:
            if "does not exist" in str(exc):
                raise
            return None
        return reply

    def presign(self, rel: str) -> str:
        """A GET URL for one object, valid URL_LIFETIME seconds; a secret, like a token."""
        try:
            url: str = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.loc.bucket, "Key": self.loc.key(rel)},
                ExpiresIn=URL_LIFETIME,
            )
        except Exception as exc:
            raise translate(exc, f"signing {self.loc.url}/{rel}", self.loc) from exc
        for secret in re.findall(r"(?:X-Amz-Signature|X-Amz-Security-Token)=([^&]+)", url):
            log.register_secret(secret)
        return url

    def close(self) -> None:
        """Close pooled connections."""
        self.client.close()


def full_object_sha256(head: Mapping[str, Any]) -> Digest | None:
    """The object's sha256 if the store kept a full-object one (a multipart upload's is a hash of
    the parts' hashes, "...-N", which says nothing checkable about the bytes)."""
    value = head.get("ChecksumSHA256")
    if not isinstance(value, str) or "-" in value or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return Digest(SHA256, raw.hex()) if len(raw) == 32 else None


# -- the source ---------------------------------------------------------------------------


class S3Source:
    """Reads a model from a bucket; never writes to it."""

    def __init__(
        self,
        loc: S3Location,
        hub: SourceFactory | None = None,
        *,
        max_workers: int = 16,
        read_timeout: float = 30.0,
    ) -> None:
        self.loc = loc
        self.name = loc.url
        self._hub = hub
        self._max_workers = max_workers
        self._read_timeout = read_timeout
        self._api: S3Api | None = None
        self._ranged: RangedReader | None = None
        self._keys: dict[str, str] = {}  # file path -> name relative to the prefix
        self._urls: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._log = log.get().bind(source=self.name)

    @property
    def api(self) -> S3Api:
        """The client, made on first use (a source that is never asked costs nothing)."""
        if self._api is None:
            self._api = S3Api(self.loc, max_connections=self._max_workers, read_timeout=self._read_timeout)
        return self._api

    def close(self) -> None:
        """Close the client and pooled body connections."""
        if self._api is not None:
            self._api.close()
        if self._ranged is not None:
            self._ranged.close()

    # -- listing -------------------------------------------------------------------

    def snapshot(self, spec: ModelSpec) -> Snapshot:
        """Find the model in one of the three kinds of tree and list it with expected hashes."""
        for find in (self._from_marker, self._from_hub_cache, self._from_plain):
            found = find(spec)
            if found is not None:
                snap, keys = found
                self._keys = keys
                self._log.info(
                    "bucket_source",
                    repo=spec.repo,
                    commit=snap.commit,
                    hash_origin=snap.hash_origin,
                    files=len(snap.files),
                )
                return snap
        raise NotFoundError(
            f"{spec.repo} is not in {self.name} (no pushed manifest, hub cache or {spec.repo}/ objects)"
        )

    def _from_marker(self, spec: ModelSpec) -> tuple[Snapshot, dict[str, str]] | None:
        for lspec in kinds.layouts_for(spec):
            for name in kinds.marker_names(lspec):
                m = kinds.manifest_for(lspec, self.api.get_small(name) or b"")
                if m is None:
                    continue
                keys = kinds.file_names(lspec, m.commit, m.files)
                self._check_present(spec, keys, {f.path: f.size for f in m.files})
                return Snapshot(m.commit, m.files, self.name, None, kinds.manifest_origin(m)), keys
        return None

    def _check_present(self, spec: ModelSpec, keys: Mapping[str, str], sizes: Mapping[str, int]) -> None:
        """Every file a manifest lists is an object of its size (one listing per folder)."""
        folders: dict[str, dict[str, tuple[int, str]]] = {}
        for path, rel in keys.items():
            folder, _, name = rel.rpartition("/")
            if folder not in folders:
                folders[folder] = self.api.list(folder)
            found = folders[folder].get(name)
            if found is None:
                raise NotFoundError(f"{self.name}: {spec.repo} is incomplete: {path!r} is missing")
            if found[0] != sizes[path]:
                raise IntegrityError(
                    f"{self.name}: {spec.repo}/{path} has {found[0]} bytes, its manifest says {sizes[path]}"
                )

    def _from_hub_cache(self, spec: ModelSpec) -> tuple[Snapshot, dict[str, str]] | None:
        repo_dir = kinds.hub_cache_dir(spec)
        objects = self.api.list(repo_dir)
        if not objects:
            return None
        ref, _, _, _ = kinds.hub_cache_names(spec, spec.revision, "0" * 40)
        commit = spec.revision if spec.pinned else kinds.parse_ref(self.api.get_small(ref))
        if commit is None:
            raise NotFoundError(f"{spec.repo}@{spec.revision} is not in the hub cache at {self.name}")
        _, snap_dir, tree_name, blobs_dir = kinds.hub_cache_names(spec, spec.revision, commit)
        inside = len(repo_dir) + 1

        def under(folder: str) -> dict[str, tuple[int, str]]:
            head = folder[inside:] + "/"
            return {k[len(head) :]: v for k, v in objects.items() if k.startswith(head)}

        snap_objects = under(snap_dir)
        if not snap_objects:
            raise NotFoundError(
                f"{spec.repo}: snapshot {commit[:12]} is missing from the hub cache at {self.name}"
            )
        tree = kinds.parse_tree(self.api.get_small(tree_name)) if tree_name[inside:] in objects else {}
        # A bucket has no symlinks: a hub cache copied into one (aws s3 sync) holds each snapshot
        # file as a copy of its blob. The blob is found by size and ETag, which two uploads of the
        # same bytes made the same way share; a wrong match only fails verification.
        by_content: dict[tuple[int, str], set[str]] = {}
        for name, meta in under(blobs_dir).items():
            by_content.setdefault(meta, set()).add(name)
        files: list[RemoteFile] = []
        keys: dict[str, str] = {}
        unknown: list[str] = []
        for rel, meta in sorted(snap_objects.items()):
            safe_relpath(rel)
            blobs = by_content.get(meta, set())
            rf = kinds.hub_cache_file(rel, meta[0], tree, next(iter(blobs)) if len(blobs) == 1 else "")
            if rf is None:
                unknown.append(rel)
                continue
            files.append(rf)
            keys[rel] = f"{snap_dir}/{rel}"
        if unknown:
            raise IntegrityError(
                f"hub cache {self.name}: {len(unknown)} file(s) of {spec.repo} match no blob "
                f"(e.g. {unknown[0]!r}), so their hashes are unknown"
            )
        return Snapshot(commit, tuple(files), self.name, None, kinds.ORIGIN_HUB_CACHE), keys

    def _from_plain(self, spec: ModelSpec) -> tuple[Snapshot, dict[str, str]] | None:
        model_dir = spec.repo
        objects = {rel: meta for rel, meta in self.api.list(model_dir).items() if not kinds.is_metadata(rel)}
        if not objects:
            return None
        for rel in objects:
            safe_relpath(rel)  # hostile keys ("..", absolute, NUL) fail the source here
            head = rel
            while "/" in head:
                head = head.rsplit("/", 1)[0]
                if head in objects:
                    raise IntegrityError(f"{self.name}/{spec.repo}: {head!r} is both an object and a folder")
        keys = {rel: f"{model_dir}/{rel}" for rel in objects}
        sizes = {rel: meta[0] for rel, meta in objects.items()}
        listed = kinds.hub_listing(self._hub, spec, self._log)
        if listed is not None:
            return kinds.checked_against(spec, listed, sizes, f"{self.name}/{spec.repo}", self.name), keys
        if spec.pinned:
            raise NotFoundError(
                f"{self.name}/{spec.repo} holds plain objects and the hub is not reachable to tell "
                f"whether they are commit {spec.revision[:12]}"
            )
        wanted = spec.files.select(objects)
        if not wanted:
            raise NotFoundError(f"{self.name}/{spec.repo} holds no files matching the filters")
        files = self._object_hashes(spec, wanted, sizes, keys)
        return Snapshot(kinds.content_id(files), files, self.name, None, kinds.ORIGIN_COMPUTED), keys

    def _object_hashes(
        self, spec: ModelSpec, wanted: list[str], sizes: Mapping[str, int], keys: Mapping[str, str]
    ) -> tuple[RemoteFile, ...]:
        """sha256 of every wanted object: the store's full-object checksum where it kept one (no
        read), else read and hashed now. Either vouches only for the bucket as it stands, so both
        are recorded as source-computed."""
        workers = min(HEAD_WORKERS, self._max_workers)

        def stored(rel: str) -> Digest | None:
            head = self.api.head(keys[rel], checksums=True)
            return full_object_sha256(head) if head is not None else None

        with ThreadPoolExecutor(workers, thread_name_prefix="s3-head") as pool:
            digests = dict(zip(wanted, pool.map(stored, wanted), strict=True))
        unread = [rel for rel in wanted if digests[rel] is None]
        self._log.warning(
            "hashes_source_computed",
            repo=spec.repo,
            from_checksums=len(wanted) - len(unread),
            read_to_hash=len(unread),
            reason="no manifest, no hub cache and no hub listing: the copy is checked only against "
            "the bucket as it reads now",
        )

        def read(rel: str) -> Digest:
            h = new_hasher(SHA256, sizes[rel])
            probe = RemoteFile(rel, sizes[rel], Digest(SHA256, "0" * 64))
            with self._read(spec, keys[rel], probe, 0, sizes[rel]) as blocks:
                for block in blocks:
                    h.update(block)
            return Digest(SHA256, h.hexdigest())

        with ThreadPoolExecutor(min(workers, 4), thread_name_prefix="s3-hash") as pool:
            for rel, digest in zip(unread, pool.map(read, unread), strict=True):
                digests[rel] = digest
        return tuple(RemoteFile(rel, sizes[rel], d) for rel in wanted if (d := digests[rel]) is not None)

    # -- reading -------------------------------------------------------------------

    def _url(self, rel: str) -> tuple[str, float]:
        with self._lock:
            cached = self._urls.get(rel)
            if cached is not None and time.monotonic() - cached[1] < URL_REUSE:
                return cached
        made = (self.api.presign(rel), time.monotonic())
        with self._lock:
            self._urls[rel] = made
        return made

    @contextmanager
    def open_range(
        self, spec: ModelSpec, snap: Snapshot, file: RemoteFile, start: int, end: int
    ) -> Iterator[Iterator[Block]]:
        """Stream [start, end) of an object with one ranged GET, read into a reused buffer."""
        rel = self._keys.get(file.path)
        if rel is None:
            raise NotFoundError(f"{file.path} is not in {self.name}/{spec.repo}")
        with self._read(spec, rel, file, start, end) as blocks:
            yield blocks

    @contextmanager
    def _read(
        self, spec: ModelSpec, rel: str, file: RemoteFile, start: int, end: int
    ) -> Iterator[Iterator[Block]]:
        url, made = self._url(rel)
        what = f"downloading {self.name}/{rel}"
        if proxied(url):
            with self.via_botocore(rel, file, start, end, what) as blocks:
                yield blocks
            return
        if self._ranged is None:
            self._ranged = RangedReader(
                ssl_context(), 10.0, self._read_timeout, {"Accept-Encoding": "identity"}
            )
        headers = {"Range": f"bytes={start}-{end - 1}"}
        with self._ranged.get(url, headers, what) as (reply, body):
            self._check(reply.status, reply.headers, rel, made, what)
            yield body.blocks(range_skip(reply.status, reply.headers, start, file.size, what), end - start)

    def _check(self, status: int, headers: Mapping[str, str], rel: str, made: float, what: str) -> None:
        if status < 400:
            return
        if status in (408, 429) or status >= 500:  # SlowDown is a 503
            raise TransientError(f"{what}: HTTP {status}", retry_after=_retry_after(headers))
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
        self, rel: str, file: RemoteFile, start: int, end: int, what: str
    ) -> Iterator[Iterator[Block]]:
        """The same range through botocore's streaming body: the path for proxies (botocore
        implements them; the lean reader does not)."""
        reply = self.api.call(
            what, self.api.client.get_object, Key=self.loc.key(rel), Range=f"bytes={start}-{end - 1}"
        )
        body = reply["Body"]
        try:
            yield _stream(body, end - start, what, self.loc)
        finally:
            body.close()


def _stream(body: Any, want: int, what: str, loc: S3Location) -> Iterator[bytes]:
    got = 0
    try:
        for block in body.iter_chunks(512 << 10):
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
