"""`preload push`: copy a ready model from a cache to a bucket, where nodes then preload it from.

The bucket gets the store's own names under PREFIX (kinds.file_names / kinds.marker_names): the
files where the store commits them (`.preload/versions/ORG/NAME/<commit>/...` for `dir`, the
blobs of `models--ORG--NAME` for `hf-cache`), then the manifest at the marker's name, last. A
reader that finds the manifest finds every file it lists; a push killed halfway leaves files
but no manifest, so nobody takes the model for complete.

Every byte is hashed while it is read for upload and compared with the manifest before the
object is completed: a copy that rotted on disk is never published. Large files go up as
multipart uploads, each part with its sha256 (the server checks it). Objects already there
with the same size and recorded digest (object metadata) are not sent again; nor are the parts
of an upload a killed push left pending (ListParts), once each one's size and sha256 (or, where
the store lists no checksum, its MD5 ETag) match the bytes read now.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from agent import log, retry
from agent.errors import IntegrityError, NotReadyError, PreloadError
from agent.manifest import Manifest, RemoteFile
from agent.sources import kinds
from agent.sources.s3api import S3Api
from agent.sources.s3loc import S3Location
from agent.spec import ModelSpec
from agent.store import Store

MIN_PART = 8 << 20  # S3's minimum is 5 MiB; 8 MiB is what the AWS CLI uses
MAX_PARTS = 9_000  # S3 allows 10,000: headroom
IN_FLIGHT_BYTES = 128 << 20  # part buffers held at once, whatever --max-workers says
DIGEST_KEY = "preload-digest"  # object metadata: "<algo>:<hex>" of the whole file
T = TypeVar("T")


@dataclass(frozen=True)
class PushOptions:
    """How (not what) to push."""

    max_workers: int = 16
    part_size: int = 0  # 0: chosen per file (at least MIN_PART, at most MAX_PARTS parts)
    retry: retry.RetryPolicy = field(default_factory=retry.RetryPolicy)


@dataclass(frozen=True)
class PushResult:
    """What a push did."""

    manifest: Manifest
    url: str
    uploaded_files: int
    uploaded_bytes: int
    unchanged_files: int
    seconds: float
    resumed_parts: int = 0


def part_size_for(size: int, wanted: int = 0) -> int:
    """The part size of one file: the wanted one (or MIN_PART), raised so no file needs more than
    MAX_PARTS parts, in whole MiB."""
    base = max(wanted or MIN_PART, -(-size // MAX_PARTS))
    return -(-base // (1 << 20)) * (1 << 20)


def _b64_sha256(data: bytes | memoryview) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _tag(f: RemoteFile) -> str:
    return f"{f.digest.algo}:{f.digest.hex}"


class _Pusher:
    def __init__(self, api: S3Api, opts: PushOptions) -> None:
        self.api = api
        self.opts = opts
        self.uploaded_bytes = 0
        self.resumed_parts = 0
        self._count_lock = threading.Lock()
        self._log = log.get().bind(to=api.loc.url)

    def call(self, what: str, fn: Callable[..., T], **kw: Any) -> T:
        """One request, retried under the policy when it fails transiently."""
        return retry.call(partial(self.api.call, what, fn, **kw), self.opts.retry, what=what)

    def unchanged(self, rel: str, f: RemoteFile, listed: dict[str, tuple[int, str]]) -> bool:
        """The object is there with this file's size and recorded digest."""
        if listed.get(rel.rpartition("/")[2], (-1, ""))[0] != f.size:
            return False
        what = f"checking {self.api.loc.url}/{rel}"
        head = retry.call(partial(self.api.head, rel), self.opts.retry, what=what)
        return head is not None and head.get("Metadata", {}).get(DIGEST_KEY) == _tag(f)

    def upload(
        self, path: Path, rel: str, f: RemoteFile, parts: ThreadPoolExecutor, slots: threading.Semaphore
    ) -> Future[None] | None:
        """Start uploading one file; its part uploads run in `parts`. Returns the future that completes
        the object (None when it was a single request, already done)."""
        key = self.api.loc.key(rel)
        what = f"uploading {self.api.loc.url}/{rel}"
        size = part_size_for(f.size, self.opts.part_size)
        hasher = f.digest.hasher(f.size)
        client = self.api.client
        meta = {DIGEST_KEY: _tag(f)}
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if f.size <= size:
                data = os.pread(fd, f.size, 0) if f.size else b""
                hasher.update(data)
                self._check(hasher.hexdigest(), f, path)
                self.call(
                    what,
                    client.put_object,
                    Key=key,
                    Body=data,
                    ChecksumSHA256=_b64_sha256(data),
                    Metadata=meta,
                )
                self._count(f.size)
                return None
            upload_id, uploaded = self._pending_upload(key, what)
            if upload_id is None:
                started = self.call(
                    what, client.create_multipart_upload, Key=key, ChecksumAlgorithm="SHA256", Metadata=meta
                )
                upload_id = started["UploadId"]
            futures: list[Future[dict[str, Any]]] = []
            try:
                for number, start in enumerate(range(0, f.size, size), 1):
                    data = os.pread(fd, min(size, f.size - start), start)
                    if len(data) != min(size, f.size - start):
                        raise IntegrityError(
                            f"{path} ended early while being pushed: changed since verified?"
                        )
                    hasher.update(data)
                    done = _same_part(uploaded.get(number), data)
                    if done is not None:
                        futures.append(_resolved(done))
                        with self._count_lock:
                            self.resumed_parts += 1
                        continue
                    slots.acquire()
                    futures.append(parts.submit(self._part, key, upload_id, number, data, what, slots))
                self._check(hasher.hexdigest(), f, path)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                self._abort(key, upload_id)
                raise
        finally:
            os.close(fd)
        return parts.submit(self._complete, key, upload_id, futures, what)

    def _part(
        self, key: str, upload_id: str, number: int, data: bytes, what: str, slots: threading.Semaphore
    ) -> dict[str, Any]:
        try:
            checksum = _b64_sha256(data)
            reply = self.call(
                f"{what} part {number}",
                self.api.client.upload_part,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ChecksumSHA256=checksum,
            )
            self._count(len(data))
            return {"PartNumber": number, "ETag": reply["ETag"], "ChecksumSHA256": checksum}
        finally:
            slots.release()

    def _complete(self, key: str, upload_id: str, futures: list[Future[dict[str, Any]]], what: str) -> None:
        try:
            done = [fut.result() for fut in futures]
            self.call(
                what,
                self.api.client.complete_multipart_upload,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": done},
            )
        except BaseException:
            self._abort(key, upload_id)
            raise

    def _pending_upload(self, key: str, what: str) -> tuple[str | None, dict[int, dict[str, Any]]]:
        """The newest upload of `key` left unfinished (a push killed midway) and its parts by
        number, or (None, {}) when there is none or the store cannot list them."""
        client = self.api.client
        try:
            listed = self.call(f"{what}: listing pending uploads", client.list_multipart_uploads, Prefix=key)
            uploads = [u for u in listed.get("Uploads", []) if u.get("Key") == key and u.get("UploadId")]
            if not uploads:
                return None, {}
            upload_id = str(max(uploads, key=lambda u: str(u.get("Initiated", "")))["UploadId"])
            parts: dict[int, dict[str, Any]] = {}
            kw: dict[str, Any] = {"Key": key, "UploadId": upload_id}
            while True:
                page = self.call(f"{what}: listing uploaded parts", client.list_parts, **kw)
                parts.update({int(p["PartNumber"]): p for p in page.get("Parts", [])})
                marker = page.get("NextPartNumberMarker")
                if not page.get("IsTruncated") or not marker:
                    break
                kw["PartNumberMarker"] = marker
        except PreloadError as exc:  # NoSuchUpload (completed or aborted meanwhile), not supported
            self._log.info("pending_upload_unusable", key=key, error=str(exc))
            return None, {}
        self._log.info("resuming_upload", key=key, parts=len(parts))
        return upload_id, parts

    def _abort(self, key: str, upload_id: str) -> None:
        """Drop an unfinished upload's parts; a failure here is only logged (the bucket's lifecycle
        rule for incomplete uploads, if any, cleans up)."""
        try:
            self.api.call(
                "aborting an upload", self.api.client.abort_multipart_upload, Key=key, UploadId=upload_id
            )
        except PreloadError as exc:
            self._log.warning("abort_upload_failed", key=key, error=str(exc))

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.uploaded_bytes += n

    @staticmethod
    def _check(got: str, f: RemoteFile, path: Path) -> None:
        if got != f.digest.hex:
            raise IntegrityError(
                f"{path} does not match its manifest ({f.digest.algo}): the cache copy is corrupt; "
                "run `preload verify --repair` before pushing"
            )


def _same_part(listed: dict[str, Any] | None, data: bytes) -> dict[str, Any] | None:
    """The completion entry of a part already uploaded with exactly these bytes, else None: its
    size, and its sha256 where the store lists one, else its ETag (the MD5 of a part's bytes)."""
    if listed is None or int(listed.get("Size", -1)) != len(data) or not listed.get("ETag"):
        return None
    checksum = _b64_sha256(data)
    stored = listed.get("ChecksumSHA256")
    if stored:
        if stored != checksum:
            return None
    elif str(listed["ETag"]).strip('"') != hashlib.md5(data).hexdigest():  # noqa: S324 - S3's ETag
        return None
    return {"PartNumber": int(listed["PartNumber"]), "ETag": listed["ETag"], "ChecksumSHA256": checksum}


def _resolved(value: T) -> Future[T]:
    fut: Future[T] = Future()
    fut.set_result(value)
    return fut


def push(spec: ModelSpec, dest: Path, to: S3Location, opts: PushOptions = PushOptions()) -> PushResult:
    """Upload the ready model `spec` from `dest` to the bucket `to`; the manifest goes last."""
    started = time.monotonic()
    store = Store(dest)
    m = store.ready(spec, selection=False)
    if m is None:
        raise NotReadyError(f"{spec.repo}@{spec.revision} is not ready in {dest}: preload it first")
    logger = log.get().bind(repo=spec.repo, commit=m.commit, to=to.url)
    api = S3Api(to, max_connections=opts.max_workers)
    pusher = _Pusher(api, opts)
    try:
        local = {p.file.path: p.final for p in store.placements(spec, m.commit, m.files)}
        remote = kinds.file_names(spec, m.commit, m.files)
        listings: dict[str, dict[str, tuple[int, str]]] = {}
        todo: list[RemoteFile] = []
        seen: set[str] = set()
        for f in sorted(m.files, key=lambda f: -f.size):
            rel = remote[f.path]
            folder = rel.rpartition("/")[0]
            if folder not in listings:
                what = f"listing {to.url}/{folder}"
                listings[folder] = retry.call(partial(api.list, folder), opts.retry, what=what)
            if rel in seen or pusher.unchanged(rel, f, listings[folder]):
                continue  # the same content twice (hf-cache blobs), or already there
            seen.add(rel)
            todo.append(f)
        logger.info(
            "push_start", files=len(todo), unchanged=len(m.files) - len(todo), bytes=sum(f.size for f in todo)
        )
        slots = threading.Semaphore(max(2, IN_FLIGHT_BYTES // part_size_for(1, opts.part_size)))
        with ThreadPoolExecutor(opts.max_workers, thread_name_prefix="push") as parts:
            pending = [
                fut for f in todo if (fut := pusher.upload(local[f.path], remote[f.path], f, parts, slots))
            ]
            # Completions wait on their parts in the same pool: parts were submitted first, so
            # they never wait on work queued behind them.
            for fut in pending:
                fut.result()
        _publish(pusher, spec, m)
    finally:
        api.close()
    seconds = time.monotonic() - started
    logger.info(
        "push_complete",
        files=len(m.files),
        uploaded_files=len(todo),
        uploaded_bytes=pusher.uploaded_bytes,
        resumed_parts=pusher.resumed_parts,
        seconds=round(seconds, 3),
    )
    return PushResult(
        m, to.url, len(todo), pusher.uploaded_bytes, len(m.files) - len(todo), seconds, pusher.resumed_parts
    )


def _publish(pusher: _Pusher, spec: ModelSpec, m: Manifest) -> None:
    """Write the manifest where readers look, last, as `Store.publish` does on disk: a pinned commit
    while another is current goes beside it; otherwise it becomes current and the one it replaces
    stays findable by its commit."""
    current_name = kinds.current_marker_name(spec)
    current = _remote_manifest(pusher.api.get_small(current_name), spec)
    if spec.pinned and current is not None and current.commit != m.commit:
        _put_manifest(pusher, kinds.commit_marker_name(spec, m.commit), m)
        return
    if current is not None and current.commit != m.commit:
        _put_manifest(pusher, kinds.commit_marker_name(spec, current.commit), current)
    _put_manifest(pusher, current_name, m)


def _remote_manifest(data: bytes | None, spec: ModelSpec) -> Manifest | None:
    if data is None:
        return None
    try:
        m = Manifest.from_json(data)
    except IntegrityError:
        return None
    return m if m.repo == spec.repo and m.layout == spec.layout.value else None


def _put_manifest(pusher: _Pusher, rel: str, m: Manifest) -> None:
    body = m.to_json().encode()
    pusher.call(
        f"writing {pusher.api.loc.url}/{rel}",
        pusher.api.client.put_object,
        Key=pusher.api.loc.key(rel),
        Body=body,
        ChecksumSHA256=_b64_sha256(body),
        ContentType="application/json",
    )
