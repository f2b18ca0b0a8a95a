"""What to preload: validated model ids, revisions, layouts and file filters (pure values)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase

from agent.errors import UsageError

DEFAULT_ENDPOINT = "https://huggingface.co"  # the public hub; HF_ENDPOINT or --endpoint override it

COMMIT_RE = re.compile(r"^[0-9a-f]{40}\Z")  # \Z: "$" would accept a trailing newline
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_BAD_REF_CHARS = set(" ~^:?*[\\\x7f")

# With safetensors present, these are the same weights in formats vLLM does not need.
DUPLICATE_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.gguf", "original/*", "consolidated*")


class Layout(StrEnum):
    """How a model is laid out under the destination directory."""

    DIR = "dir"
    HF_CACHE = "hf-cache"


@dataclass(frozen=True)
class FileFilter:
    """Which files of a repo to fetch."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    all_files: bool = False

    def select(self, paths: Iterable[str]) -> list[str]:
        """Return the paths to fetch, in a stable order."""
        paths = sorted(paths)
        if self.all_files:
            return paths
        if self.include or self.exclude:
            return [
                p
                for p in paths
                if (not self.include or _matches(p, self.include)) and not _matches(p, self.exclude)
            ]
        kept = [p for p in paths if not _matches(p, DUPLICATE_WEIGHT_PATTERNS)]
        # Only safetensors that survive the skip make the rest duplicates: a repo whose sole
        # weights are `consolidated.safetensors` (Mistral's own format) keeps everything.
        if not any(p.endswith(".safetensors") for p in kept):
            return paths
        return kept


@dataclass(frozen=True)
class ModelSpec:
    """One model to preload: repo id, requested revision, layout and file filter."""

    repo: str
    revision: str = "main"
    layout: Layout = Layout.DIR
    files: FileFilter = FileFilter()

    @property
    def org(self) -> str:
        """The namespace part of the repo id."""
        return self.repo.split("/", 1)[0]

    @property
    def name(self) -> str:
        """The name part of the repo id."""
        return self.repo.split("/", 1)[1]

    @property
    def pinned(self) -> bool:
        """True when the revision is already an immutable commit."""
        return bool(COMMIT_RE.match(self.revision))


def _matches(path: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        # "dir/" means everything below dir, as in huggingface_hub's filters.
        if pattern.endswith("/"):
            pattern += "*"
        if fnmatchcase(path, pattern):
            return True
    return False


def validate_repo_id(repo: str) -> str:
    """Return `repo` if it is a valid ORG/NAME hub id, else raise UsageError."""
    parts = repo.split("/")
    if len(parts) != 2 or not all(_NAME_RE.match(p) for p in parts):
        raise UsageError(
            f"invalid model id {repo!r}: expected ORG/NAME with letters, digits, '.', '_' or '-'"
        )
    if any(".." in p or "--" in p or p.endswith((".", "-")) for p in parts):
        raise UsageError(f"invalid model id {repo!r}: '..', '--' and a trailing '.' or '-' are not allowed")
    return repo


def validate_revision(revision: str) -> str:
    """Return `revision` if it is a plausible branch, tag or commit, else raise UsageError."""
    bad = (
        not revision
        or len(revision) > 255
        or any(c in _BAD_REF_CHARS or ord(c) < 32 for c in revision)
        or revision.startswith(("/", "-", "."))
        or revision.endswith(("/", ".", ".lock"))
        or ".." in revision
        or "//" in revision
        or "@{" in revision
    )
    if bad:
        raise UsageError(f"invalid revision {revision!r}: not a valid branch, tag or commit name")
    return revision


def parse_model(model: str, revision: str | None = None) -> tuple[str, str]:
    """Split ORG/NAME[@REVISION] into a validated (repo, revision); --revision must agree."""
    repo, sep, at_rev = model.partition("@")
    if sep and not at_rev:
        raise UsageError(f"invalid model {model!r}: nothing after '@'")
    if sep and revision and revision != at_rev:
        raise UsageError(f"model {model!r} names revision {at_rev!r} but --revision says {revision!r}")
    return validate_repo_id(repo), validate_revision(at_rev or revision or "main")


def parse_duration(text: str) -> float:
    """Parse '90', '30s', '5m', '1h30m', '250ms' into seconds; '0' means no limit."""
    text = text.strip().lower()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if value < 0:
            raise UsageError(f"invalid duration {text!r}: must not be negative")
        return value
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise UsageError(f"invalid duration {text!r}: use e.g. 90, 30s, 5m, 1h30m")
    return total
