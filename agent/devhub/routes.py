"""The test hub's answers: the model API (revision, paginated tree), resolve, and the CDN's blobs.

Faithful to huggingface.co where clients look: error codes and headers, 302s to a second origin
for LFS files, `Link` pagination, gated and private repos.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterable, Mapping
from email.message import Message
from pathlib import PurePosixPath
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from agent.devhub.cdn import CdnOrigin
from agent.devhub.faults import Kind
from agent.devhub.replies import Reply, Role, disposition, error_reply, file_reply, json_reply
from agent.devhub.repo import HubFile, HubRepo

# Fixed so that listings, and therefore every test that snapshots them, are reproducible.
COMMIT_DATE = "2024-01-01T00:00:00.000Z"
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


class HubRoutes:
    """Turns a request into a Reply: which repos exist, who may see them, and what they hold."""

    def __init__(
        self,
        cdn: CdnOrigin,
        default_host: str,
        tokens: Iterable[str],
        token_access: Mapping[str, Iterable[str]],
        tree_page_size: int,
    ) -> None:
        self._cdn = cdn
        self._default_host = default_host
        self._tokens = frozenset(tokens)
        self._token_access = {repo: frozenset(t) for repo, t in token_access.items()}
        self._tree_page_size = tree_page_size
        self._lock = threading.Lock()
        self._repos: dict[str, HubRepo] = {}

    def add_repo(self, repo: HubRepo) -> None:
        """Serve another repo (replacing one with the same id)."""
        with self._lock:
            self._repos[repo.repo_id] = repo

    def repo(self, repo_id: str) -> HubRepo:
        """A served repo by id."""
        with self._lock:
            return self._repos[repo_id]

    def answer(self, role: Role, target: str, headers: Message[str, str]) -> Reply:
        """The reply to a request for `target` (path and query) on the hub or the CDN origin."""
        split = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        parts = [unquote(p) for p in split.path.split("/")[1:]]
        if role == "cdn":
            return self._cdn.reply(parts, query, headers, self._find_blob)
        host = headers.get("Host") or self._default_host
        if len(parts) >= 3 and parts[:2] == ["api", "models"]:
            return self._api_reply(parts[2:], query, headers, host, split.path)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve_reply(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), headers, host)
        return error_reply("other", 404, None, "Not Found")

    def _api_reply(
        self,
        parts: list[str],
        query: Mapping[str, str],
        headers: Message[str, str],
        host: str,
        raw_path: str,
    ) -> Reply:
        repo_id = "/".join(parts[:2])
        if len(parts) == 2 or (len(parts) == 4 and parts[2] == "revision"):
            revision = parts[3] if len(parts) == 4 else "main"
            return self._revision_reply(repo_id, revision, query, headers)
        if len(parts) >= 4 and parts[2] == "tree":
            sub = "/".join(parts[4:]).strip("/")
            return self._tree_reply(repo_id, parts[3], sub, query, headers, host, raw_path)
        return error_reply("other", 404, None, "Not Found")

    def _access(
        self, kind: Kind, repo_id: str, headers: Message[str, str], check_gate: bool
    ) -> HubRepo | Reply:
        """The repo if this request may see it, else the error the hub gives."""
        auth = headers.get("Authorization")
        token = auth.removeprefix("Bearer ").strip() if auth else None
        if token is not None and token not in self._tokens:
            return error_reply(kind, 401, None, INVALID_CREDENTIALS)
        with self._lock:
            repo = self._repos.get(repo_id)
        allowed = token is not None and (
            repo_id not in self._token_access or token in self._token_access[repo_id]
        )
        if repo is None or (repo.private and not allowed):
            return error_reply(kind, 401 if token is None else 404, "RepoNotFound", "Repository not found")
        if check_gate and repo.gated and not allowed:
            message = "Access to model is restricted and you are not in the authorized list."
            return error_reply(kind, 401 if token is None else 403, "GatedRepo", message)
        return repo

    def _revision_reply(
        self, repo_id: str, revision: str, query: Mapping[str, str], headers: Message[str, str]
    ) -> Reply:
        repo = self._access("revision", repo_id, headers, check_gate=False)
        if isinstance(repo, Reply):
            return repo
        commit = repo.resolve(revision)
        if commit is None:
            return error_reply("revision", 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = sorted(repo.files(commit).values(), key=lambda f: f.path)
        blobs = query.get("blobs", "").lower() in ("1", "true")
        info = {
            "_id": commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit,
            "lastModified": COMMIT_DATE,
            "createdAt": COMMIT_DATE,
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "library_name": "transformers",
            "siblings": [self._sibling(f) if blobs else {"rfilename": f.path} for f in files],
        }
        return json_reply("revision", info)

    @staticmethod
    def _sibling(f: HubFile) -> dict[str, object]:
        sibling: dict[str, object] = {"rfilename": f.path, "size": f.size, "blobId": f.oid}
        if f.is_lfs:
            sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
        return sibling

    def _tree_reply(
        self,
        repo_id: str,
        revision: str,
        sub: str,
        query: Mapping[str, str],
        headers: Message[str, str],
        host: str,
        raw_path: str,
    ) -> Reply:
        repo = self._access("tree", repo_id, headers, check_gate=False)
        if isinstance(repo, Reply):
            return repo
        commit = repo.resolve(revision)
        if commit is None:
            return error_reply("tree", 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        recursive = query.get("recursive", "").lower() in ("1", "true")
        expand = query.get("expand", "").lower() in ("1", "true")
        entries = _tree_entries(repo.files(commit), sub, recursive)
        if entries is None:
            message = f"{sub} does not exist on {revision}"
            return error_reply("tree", 404, "EntryNotFound", message, [("X-Repo-Commit", commit)])
        start = _decode_cursor(query.get("cursor"))
        page = entries[start : start + self._tree_page_size]
        if expand:
            last = {"id": commit, "title": "Upload folder", "date": COMMIT_DATE}
            page = [{**e, "lastCommit": last} for e in page]
        extra: list[tuple[str, str]] = []
        if start + self._tree_page_size < len(entries):
            params = {k: v for k, v in query.items() if k != "cursor"}
            params["cursor"] = _encode_cursor(start + self._tree_page_size)
            extra.append(("Link", f'<http://{host}{raw_path}?{urlencode(params)}>; rel="next"'))
        return json_reply("tree", page, extra)

    def _resolve_reply(
        self, repo_id: str, revision: str, path: str, headers: Message[str, str], host: str
    ) -> Reply:
        repo = self._access("resolve", repo_id, headers, check_gate=True)
        if isinstance(repo, Reply):
            return repo
        commit = repo.resolve(revision)
        if commit is None:
            return error_reply("resolve", 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        file = repo.files(commit).get(path)
        common = [("X-Repo-Commit", commit)]
        if file is None:
            message = f"Entry not found: {path}"
            return error_reply("resolve", 404, "EntryNotFound", message, common)
        if file.is_lfs:
            location = self._cdn.location(file, host)
            return Reply(
                "resolve",
                302,
                [
                    *common,
                    ("Location", location),
                    ("ETag", f'"{file.oid}"'),
                    ("X-Linked-Etag", f'"{file.sha256}"'),
                    ("X-Linked-Size", str(file.size)),
                    ("Content-Type", "text/plain; charset=utf-8"),
                ],
            )
        file_headers = [
            *common,
            ("ETag", f'"{file.git_sha1}"'),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Disposition", disposition(path)),
        ]
        return file_reply("resolve", file, headers.get("Range"), file_headers)

    def _find_blob(self, sha256: str) -> HubFile | None:
        with self._lock:
            repos = list(self._repos.values())
        for repo in repos:
            for f in repo.all_files():
                if f.is_lfs and f.sha256 == sha256:
                    return f
        return None


def _tree_entries(files: Mapping[str, HubFile], sub: str, recursive: bool) -> list[dict[str, object]] | None:
    """Tree entries under `sub` like the hub lists them; None when `sub` is not a folder."""
    prefix = f"{sub}/" if sub else ""
    under = sorted(p for p in files if p.startswith(prefix))
    if sub and not under:
        return None
    dirs: dict[str, list[str]] = {}
    entries: list[dict[str, object]] = []
    for path in under:
        rest = PurePosixPath(path[len(prefix) :])
        for depth in range(1, len(rest.parts)):
            folder = prefix + "/".join(rest.parts[:depth])
            if folder not in dirs and (recursive or depth == 1):
                dirs[folder] = []
                entries.append({"type": "directory", "path": folder, "size": 0})
        if recursive or len(rest.parts) == 1:
            f = files[path]
            entry: dict[str, object] = {"type": "file", "oid": f.oid, "size": f.size, "path": path}
            if f.is_lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            entries.append(entry)
    for entry in entries:
        if entry["type"] == "directory":
            # Not git's tree hash, but stable and content-derived, which is all clients need.
            folder = f"{entry['path']}/"
            ids = "".join(f"{p}\0{files[p].oid}\0" for p in under if p.startswith(folder))
            entry["oid"] = hashlib.sha1(ids.encode(), usedforsecurity=False).hexdigest()
    return entries


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(cursor.encode()))["offset"]
    except (ValueError, KeyError, TypeError):
        return 0
    return offset if isinstance(offset, int) and offset >= 0 else 0
