"""Bucket URLs, s3://BUCKET[/PREFIX]: parsed without importing any S3 client, so naming a bucket
source costs a warm start (model already complete) nothing."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import UsageError

SCHEME = "s3://"
# s3://BUCKET[/PREFIX], as a pattern the agent config's JSON Schema shares (node/config.py), so
# the chart refuses what the agent would. The bucket: AWS's rules, loosened as MinIO and Ceph
# allow (upper case and underscores in old buckets). The prefix: S3's "safe" characters only,
# one "/" between parts; no part may be "." or "..".
_BUCKET = r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]"
_PART = r"[A-Za-z0-9!_.*'()=+,@~-]+"
S3_URL_PATTERN = f"s3://{_BUCKET}(/({_PART}(/{_PART})*/?)?)?"
S3_URL_FORBIDDEN = r"^s3://[^/]*\.\.|^s3://[^/]*/(.*/)?\.\.?(/|$)"
_URL_RE, _URL_BAD_RE = re.compile(S3_URL_PATTERN), re.compile(S3_URL_FORBIDDEN)


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix ("" or ending with "/")."""

    bucket: str
    prefix: str = ""

    @property
    def url(self) -> str:
        """As users write it (and as it is recorded: it holds no credentials)."""
        return f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, rel: str) -> str:
        """The object key of a name relative to the prefix."""
        return self.prefix + rel


def is_s3(name: str) -> bool:
    """Whether a --source or --to names a bucket."""
    return name.startswith(SCHEME)


def parse_s3_url(name: str) -> S3Location:
    """s3://BUCKET[/PREFIX] -> S3Location; a usage error unless the bucket is a valid name and
    every part of the prefix a clean relative name."""
    if not _URL_RE.fullmatch(name) or _URL_BAD_RE.search(name):
        raise UsageError(
            f"invalid bucket URL {name[:200]!r}: expected s3://BUCKET[/PREFIX] (a prefix of letters, "
            "digits and !_.*'()=+,@~- parts, none of them '.' or '..')"
        )
    bucket, _, prefix = name[len(SCHEME) :].partition("/")
    prefix = prefix.strip("/")
    return S3Location(bucket, prefix + "/" if prefix else "")
