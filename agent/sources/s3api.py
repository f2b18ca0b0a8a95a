"""The S3 API of a bucket through botocore: one client, its errors as ours, listing, small reads,
HEAD, presigning. Shared by the bucket source (s3.py) and `preload push` (ops/push.py).

botocore signs and lists: it is what the AWS CLI runs on, so credentials and endpoints are
found exactly as every AWS tool finds them (environment, profiles and shared files, web
identity / EKS IRSA, AWS_ENDPOINT_URL[_S3], path-style for custom endpoints). It is imported
only when a bucket is actually read: a warm start never pays for it. Retries are ours
(agent/retry.py); botocore's own are switched off.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import ssl
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from agent import __version__, log
from agent.errors import AuthError, IntegrityError, NotFoundError, PreloadError, TransientError
from agent.integrity import SHA256, Digest
from agent.sources.s3loc import S3Location

MAX_SMALL_OBJECT = 256 << 20  # a manifest, ref or tree listing; larger is not one
URL_LIFETIME = 3600  # seconds a presigned URL is valid
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


def retry_after(headers: Mapping[str, str]) -> float | None:
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
                retry_after=retry_after(headers),
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
