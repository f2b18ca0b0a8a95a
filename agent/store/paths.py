"""The names of the store's own state under DIR (`.preload/`); the layouts name the rest.

.preload/locks/ORG--NAME.lock                 flock held by the one process transferring
.preload/staging/ORG--NAME/<hash>.part        partial files (+ .journal with chunk progress)
.preload/versions/ORG/NAME/<commit>/...       published files of the `dir` layout
.preload/markers/<layout>/ORG/NAME.json       the manifest; written last, atomically
.preload/markers/<layout>/ORG/NAME/<commit>.json   other complete revisions (kept until GC)
.preload/verified/<layout>/ORG/NAME.json      the last `verify` of the current commit
.preload/damaged/<layout>/ORG/NAME/<commit>.json   what a check found bad, until a repair
.preload/used/<layout>/ORG/NAME               its mtime is the model's last use
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.spec import Layout, ModelSpec

STATE = ".preload"
_LOCKS, _STAGING, _VERSIONS, _MARKERS = "locks", "staging", "versions", "markers"
_VERIFIED, _USED, _DAMAGED = "verified", "used", "damaged"
_MARKER_SUFFIX = ".json"


@dataclass(frozen=True)
class CachePaths:
    """Every path of the state directory of one DIR."""

    root: Path

    @property
    def state(self) -> Path:
        """DIR/.preload: its presence is what says DIR was written by preload."""
        return self.root / STATE

    def state_dirs(self) -> tuple[Path, ...]:
        """The directories `prepare` lays out before anything is written; `used` and `verified`
        are made on first use, since a reader's mount may not let us write them."""
        return tuple(self.state / sub for sub in (_LOCKS, _STAGING, _VERSIONS, _MARKERS))

    def lock(self, spec: ModelSpec) -> Path:
        """The flock file of a model: one per repo, whatever its layout."""
        return self.state / _LOCKS / f"{spec.org}--{spec.name}.lock"

    @property
    def staging_root(self) -> Path:
        """Where every model's staging folder lives."""
        return self.state / _STAGING

    def staging(self, spec: ModelSpec) -> Path:
        """Partial files of a model (shared by its layouts: a part is named by its content)."""
        return self.staging_root / f"{spec.org}--{spec.name}"

    @staticmethod
    def staging_repo(name: str) -> str | None:
        """The repo id a staging folder's name stands for, if it has the ORG--NAME shape."""
        org, sep, model = name.partition("--")
        return f"{org}/{model}" if sep else None

    def versions(self, spec: ModelSpec) -> Path:
        """Every published commit of a model in the `dir` layout."""
        return self.state / _VERSIONS / spec.org / spec.name

    def version(self, spec: ModelSpec, commit: str) -> Path:
        """The published files of one commit in the `dir` layout."""
        return self.versions(spec) / commit

    def markers(self, layout: Layout) -> Path:
        """The markers of every model of one layout."""
        return self.state / _MARKERS / layout.value

    def marker(self, spec: ModelSpec) -> Path:
        """The completion marker of a model's current revision."""
        return self.markers(spec.layout) / spec.org / f"{spec.name}{_MARKER_SUFFIX}"

    @staticmethod
    def marker_repo(marker: Path) -> str:
        """The repo id a current marker's path stands for."""
        return f"{marker.parent.name}/{marker.name[: -len(_MARKER_SUFFIX)]}"

    def current_markers(self, layout: Layout) -> list[Path]:
        """Every current marker of a layout, sorted by path."""
        return sorted(self.markers(layout).glob(f"*/*{_MARKER_SUFFIX}"))

    def other_markers_dir(self, spec: ModelSpec) -> Path:
        """Markers of the complete revisions that are not the current one."""
        return self.markers(spec.layout) / spec.org / spec.name

    def other_marker(self, spec: ModelSpec, commit: str) -> Path:
        """The marker of one complete revision that is not the current one."""
        return self.other_markers_dir(spec) / f"{commit}{_MARKER_SUFFIX}"

    def other_marker_files(self, spec: ModelSpec) -> list[Path]:
        """The markers of a model's other complete revisions, sorted by path."""
        return sorted(self.other_markers_dir(spec).glob(f"*{_MARKER_SUFFIX}"))

    def other_marker_entries(self, spec: ModelSpec) -> list[Path]:
        """Everything in the other-revisions folder, well-formed or not (GC clears it all)."""
        try:
            return sorted(self.other_markers_dir(spec).iterdir())
        except OSError:
            return []

    def is_other_marker_of(self, path: Path, commit: str) -> bool:
        """Whether an other-revision marker's name agrees with the commit it holds."""
        return path.name == f"{commit}{_MARKER_SUFFIX}"

    def pruning_stops(self) -> set[Path]:
        """Directories an eviction never removes, even when it leaves them empty."""
        return {self.root, self.state, *self.state.glob("*"), *(self.state / _MARKERS).glob("*")}

    def verified(self, spec: ModelSpec) -> Path:
        """The record of the last `verify` of a model."""
        return self.state / _VERIFIED / spec.layout.value / spec.org / f"{spec.name}{_MARKER_SUFFIX}"

    def damaged_dir(self, spec: ModelSpec) -> Path:
        """The damage records of a model's commits."""
        return self.state / _DAMAGED / spec.layout.value / spec.org / spec.name

    def damaged(self, spec: ModelSpec, commit: str) -> Path:
        """The record of what a check found bad in one commit (agent.store.damaged)."""
        return self.damaged_dir(spec) / f"{commit}{_MARKER_SUFFIX}"

    def damaged_files(self, spec: ModelSpec) -> list[Path]:
        """Every damage record of a model, sorted by path."""
        return sorted(self.damaged_dir(spec).glob(f"*{_MARKER_SUFFIX}"))

    def used(self, repo: str, layout: Layout) -> Path:
        """The record of a model's last use."""
        org, name = repo.split("/", 1)
        return self.state / _USED / layout.value / org / name
