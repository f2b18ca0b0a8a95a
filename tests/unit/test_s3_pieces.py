"""The bucket source's pieces without a server: URLs, error mapping, stored checksums, hostile listings."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from agent.errors import AuthError, IntegrityError, NotFoundError, PreloadError, TransientError, UsageError
from agent.sources import kinds
from agent.sources.registry import factories
from agent.sources.s3 import S3Source
from agent.sources.s3api import full_object_sha256, translate
from agent.sources.s3loc import S3Location, parse_s3_url
from agent.spec import ModelSpec

LOC = S3Location("models", "prod/")


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://models", "models", ""),
        ("s3://models/", "models", ""),
        ("s3://models/prod/v1", "models", "prod/v1/"),
        ("s3://Old_Bucket.1/a/", "Old_Bucket.1", "a/"),
        ("s3://models/..x", "models", "..x/"),
    ],
)
def test_bucket_urls_parse(url: str, bucket: str, prefix: str) -> None:
    """Valid bucket URLs give their bucket and a prefix ending in '/' (or none)."""
    loc = parse_s3_url(url)
    assert (loc.bucket, loc.prefix) == (bucket, prefix)
    assert loc.key("ORG/NAME/x") == prefix + "ORG/NAME/x"


@pytest.mark.parametrize(
    "url",
    [
        "s3://x",
        "s3://models/../x",
        "s3://models/a/./b",
        "s3://models/a//b",
        "s3://a..b",
        "s3://m/a?v=1",
        "s3:/m",
    ],
)
def test_bad_bucket_urls_are_usage_errors(url: str) -> None:
    """A bad bucket name or a prefix with '.', '..', empty parts or a query is a usage error (exit 2)."""
    with pytest.raises(UsageError):
        parse_s3_url(url)


def _client_error(code: str, status: int, headers: dict[str, str] | None = None) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
    }
    return ClientError(response, "GetObject")


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("SlowDown", 503, TransientError),
        ("InternalError", 500, TransientError),
        ("TooManyRequests", 429, TransientError),
        ("NoSuchBucket", 404, NotFoundError),
        ("NoSuchKey", 404, NotFoundError),
        ("AccessDenied", 403, AuthError),
        ("InvalidAccessKeyId", 403, AuthError),
        ("SignatureDoesNotMatch", 403, AuthError),
        ("Weird", 400, PreloadError),
    ],
)
def test_errors_map_to_exit_codes(code: str, status: int, kind: type[PreloadError]) -> None:
    """S3 error codes become our errors: throttling retried, missing -> 3, denied -> 3 naming the bucket."""
    err = translate(_client_error(code, status, {"retry-after": "2"}), "listing", LOC)
    assert type(err) is kind
    assert "models" in str(err)
    if kind is TransientError:
        assert isinstance(err, TransientError) and err.retry_after == 2.0


def test_missing_credentials_are_an_auth_error() -> None:
    """No credentials at all: exit 3 with a hint at the ways to give them."""
    err = translate(NoCredentialsError(), "listing", LOC)
    assert isinstance(err, AuthError) and "AWS_ACCESS_KEY_ID" in str(err)


def test_full_object_checksum_only() -> None:
    """A stored full-object sha256 is a hash of the bytes; a multipart (composite) one is not."""
    raw = hashlib.sha256(b"x").digest()
    b64 = base64.b64encode(raw).decode()
    digest = full_object_sha256({"ChecksumSHA256": b64})
    assert digest is not None and digest.hex == raw.hex()
    assert full_object_sha256({"ChecksumSHA256": b64, "ChecksumType": "COMPOSITE"}) is None
    assert full_object_sha256({"ChecksumSHA256": b64 + "-3"}) is None
    assert full_object_sha256({"ChecksumSHA256": "not base64!"}) is None
    assert full_object_sha256({}) is None


def test_metadata_is_not_a_model_file() -> None:
    """.git, .preload and the hub client's .cache/huggingface are skipped in plain folders."""
    assert kinds.is_metadata(".git/config") and kinds.is_metadata("sub/.preload/x")
    assert kinds.is_metadata(".cache/huggingface/download/a.lock")
    assert not kinds.is_metadata("config.json") and not kinds.is_metadata(".cache/other")


class FakeApi:
    """Just enough of S3Api for recognition: one listing, no small objects."""

    def __init__(self, objects: dict[str, int]) -> None:
        self.objects = objects

    def list(self, rel_dir: str) -> dict[str, tuple[int, str]]:
        head = rel_dir.rstrip("/") + "/"
        return {k[len(head) :]: (v, '"e"') for k, v in self.objects.items() if k.startswith(head)}

    def get_small(self, rel: str) -> bytes | None:
        return None


@pytest.mark.parametrize("name", ["a\x00b", "a\\b", "../x", "/etc/x", "a/../../x", "a//b", "./x", "a\nb"])
def test_hostile_object_names_fail_the_source(name: str) -> None:
    """A listed name with NUL, '..', '.', an absolute path or a control character is an integrity error."""
    src = S3Source(LOC)
    src._api = FakeApi({"org/name/config.json": 2, f"org/name/{name}": 1})  # type: ignore[assignment]
    with pytest.raises(IntegrityError):
        src.snapshot(ModelSpec(repo="org/name"))


def test_object_and_folder_clash_fails_the_source() -> None:
    """'a' both an object and a folder cannot be written to disk: refused before anything is."""
    src = S3Source(LOC)
    src._api = FakeApi({"org/name/a": 1, "org/name/a/b": 1})  # type: ignore[assignment]
    with pytest.raises(IntegrityError, match="both"):
        src.snapshot(ModelSpec(repo="org/name"))


def test_empty_bucket_is_not_found() -> None:
    """Nothing under the prefix in any of the three kinds: not found (the next source is tried)."""
    src = S3Source(LOC)
    src._api = FakeApi({})  # type: ignore[assignment]
    with pytest.raises(NotFoundError, match="is not in s3://models/prod"):
        src.snapshot(ModelSpec(repo="org/name"))


def test_registry_builds_bucket_sources_lazily() -> None:
    """s3:// names become bucket sources; a bad one is a usage error at once; none is built early."""
    hub_calls: list[int] = []
    made = factories(["s3://models/prod", "hf"], lambda: hub_calls.append(1))  # type: ignore[arg-type,func-returns-value]
    assert len(made) == 2 and not hub_calls
    with pytest.raises(UsageError):
        factories(["s3://models/../x"], lambda: None)  # type: ignore[arg-type,return-value]


def test_warm_start_does_not_import_botocore(tmp_path: Path) -> None:
    """A model already complete: `preload --source s3://...` imports no botocore and asks no bucket."""
    src = tmp_path / "src" / "org" / "name"
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    dest = tmp_path / "dest"
    cold = [sys.executable, "-m", "agent", "--model", "org/name", "--dest", str(dest)]
    subprocess.run([*cold, "--source", str(tmp_path / "src")], check=True, capture_output=True)
    code = (
        "import sys\nfrom agent.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    print(e.code, 'botocore' in sys.modules, 'agent.sources.s3' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "--model", "org/name", "--dest", str(dest), "--source", "s3://models/x"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["0", "False", "False"], out.stderr


@pytest.mark.parametrize(
    ("size", "wanted", "part"),
    [(1, 0, 8 << 20), (100 << 30, 0, 12 << 20), (1 << 40, 0, 117 << 20), (1 << 30, 64 << 20, 64 << 20)],
)
def test_push_part_sizes(size: int, wanted: int, part: int) -> None:
    """Parts are 8 MiB (or as asked), raised in whole MiB so no file needs more than 9000 parts."""
    from agent.ops.push import MAX_PARTS, part_size_for

    assert part_size_for(size, wanted) == part
    assert -(-size // part) <= MAX_PARTS


def test_push_reuses_a_pending_part_only_with_the_same_bytes() -> None:
    """A part left by a killed push is reused only with this part's size and sha256, or, where the
    store lists no checksum, its MD5 ETag; anything else is sent again."""
    import base64
    import hashlib

    from agent.ops.push import _same_part

    data = os.urandom(1000)
    sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
    md5 = f'"{hashlib.md5(data).hexdigest()}"'  # S3's ETag of a part
    listed = {"PartNumber": 3, "Size": 1000, "ETag": md5, "ChecksumSHA256": sha}
    assert _same_part(listed, data) == {"PartNumber": 3, "ETag": md5, "ChecksumSHA256": sha}
    assert _same_part({**listed, "ChecksumSHA256": None}, data) is not None  # ETag path
    assert _same_part({**listed, "Size": 999}, data) is None
    assert _same_part({**listed, "ChecksumSHA256": "AAAA"}, data) is None
    assert _same_part({**listed, "ChecksumSHA256": None, "ETag": '"0000"'}, data) is None
    assert _same_part(None, data) is None
