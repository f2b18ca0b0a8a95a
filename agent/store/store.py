"""The store's face: is this model ready, where do its files go, publish it, lock it.

Everything that asks "is this model ready?" asks this module. It composes the parts of the
store: `CachePaths` (the state directory), one `LayoutStrategy` per layout (where files and
pointers are), `markers` (completion), `damaged` (what checks found bad), `locks` and `space`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent import crashpoints
from agent.errors import UsageError
from agent.manifest import Manifest, RemoteFile
from agent.spec import ModelSpec
from agent.store import damaged, locks, markers, space
from agent.store.damaged import Damage
from agent.store.fs import atomic_write, existing_ancestor, fsync_dir, make_dirs
from agent.store.layouts import HfRepo, LayoutStrategy, strategies
from agent.store.paths import CachePaths


@dataclass(frozen=True)
class Placement:
    """Where one verified file ends up, and where it is assembled before that."""

    file: RemoteFile
    final: Path
    part: Path


class Store:
    """One destination directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = CachePaths(root)
        self.state = self.paths.state
        self._layouts = strategies(self.paths)

    def layout(self, spec: ModelSpec) -> LayoutStrategy:
        """The strategy of the layout `spec` asks for."""
        return self._layouts[spec.layout]

    # -- set-up --------------------------------------------------------------------

    def check_dest(self) -> None:
        """Refuse a DIR that cannot work, creating nothing: a non-directory, or no write access
        to it (or, if it does not exist yet, to the directory it would be created in)."""
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"destination {self.root} exists and is not a directory")
        base = existing_ancestor(self.root)
        if not base.is_dir():
            raise UsageError(f"destination {self.root} cannot be created: {base} is not a directory")
        target = self.state if self.state.is_dir() else base
        if not os.access(target, os.W_OK | os.X_OK):
            raise UsageError(f"destination {self.root} is not writable")

    def prepare(self) -> None:
        """`check_dest`, then create DIR if needed and lay out our state dir.

        New directories get DIR_MODE whatever the umask: the model server, often another uid,
        must traverse DIR and .preload to reach the files.
        """
        self.check_dest()
        try:
            for d in self.paths.state_dirs():
                make_dirs(d)
        except OSError as exc:
            raise UsageError(f"destination {self.root} is not writable: {exc.strerror}") from exc

    # -- locks ---------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(
        self,
        spec: ModelSpec,
        deadline: float | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> Iterator[bool]:
        """flock the model, polling until `deadline` (monotonic); the kernel drops it if we die.

        Yields False if the deadline passed first. `deadline=0` means "try once".
        """
        with locks.hold(self.paths.lock(spec), deadline, on_wait) as got:
            yield got

    def is_locked(self, spec: ModelSpec) -> bool:
        """True if some process holds the model's lock right now."""
        return locks.is_locked(self.paths.lock(spec))

    def busy(self, spec: ModelSpec) -> bool:
        """`is_locked` for reporting: a lock that cannot be checked (read-only mount) is not busy."""
        return locks.busy(self.paths.lock(spec))

    # -- paths ---------------------------------------------------------------------

    def marker_path(self, spec: ModelSpec) -> Path:
        """The completion marker of a model in a layout."""
        return self.paths.marker(spec)

    def other_marker_path(self, spec: ModelSpec, commit: str) -> Path:
        """The marker of a complete revision that is not the one DIR/ORG/NAME (or refs) shows."""
        return self.paths.other_marker(spec, commit)

    def model_path(self, spec: ModelSpec, commit: str | None = None) -> Path:
        """What a reader opens: DIR/ORG/NAME, or the hub-cache snapshot of `commit`."""
        return self.layout(spec).model_path(spec, commit)

    def hf_repo_dir(self, spec: ModelSpec) -> Path:
        """models--ORG--NAME in the hub cache layout."""
        return HfRepo.at(self.root, spec).path

    def version_dir(self, spec: ModelSpec, commit: str) -> Path:
        """The published files of one commit in the `dir` layout."""
        return self.paths.version(spec, commit)

    def staging_dir(self, spec: ModelSpec) -> Path:
        """Where partial files of a model live."""
        return self.paths.staging(spec)

    def placements(self, spec: ModelSpec, commit: str, files: tuple[RemoteFile, ...]) -> list[Placement]:
        """Final and staging paths of each file."""
        staging, layout = self.paths.staging(spec), self.layout(spec)
        return [
            Placement(f, layout.final_path(spec, commit, f), staging / f"{f.digest.hex}.part") for f in files
        ]

    # -- readiness -----------------------------------------------------------------

    def read_marker(self, spec: ModelSpec) -> Manifest | None:
        """The current marker's manifest if present and well-formed for this repo and layout."""
        return markers.current(self.paths, spec)

    def other_markers(self, spec: ModelSpec) -> list[Manifest]:
        """The other complete revisions' manifests, newest first."""
        return markers.others(self.paths, spec)

    def ready(self, spec: ModelSpec, *, selection: bool = True) -> Manifest | None:
        """The manifest if the requested revision is published and every file is in place.

        With `selection`, the published files must also include every file the spec's
        filter selects from the commit's listing (a run asking for more files is not served
        by one that fetched fewer). Waiters pass False: they want the model as configured.
        """
        current = self.read_marker(spec)
        if (
            current is not None
            and self._serves(spec, current, selection)
            and self.layout(spec).pointer_ok(spec, current)
        ):
            return current
        # Another revision published beside the current one (a pinned commit, or what a
        # branch resolved to before a --refresh moved it): found offline, pointers untouched.
        if spec.pinned:
            other = markers.read(self.paths, spec, self.paths.other_marker(spec, spec.revision))
            candidates = [other] if other is not None else []
        else:
            candidates = self.other_markers(spec)
        return next((m for m in candidates if self._serves(spec, m, selection)), None)

    def _serves(self, spec: ModelSpec, m: Manifest, selection: bool) -> bool:
        if m.commit != spec.revision if spec.pinned else m.revision != spec.revision:
            return False
        if selection:
            wanted = spec.files.select(f.path for f in m.files + m.skipped)
            have = {f.path for f in m.files}
            if not wanted or not have.issuperset(wanted):
                return False
        return not self.fast_check(spec, m)

    def reader_path(self, spec: ModelSpec, m: Manifest) -> Path:
        """Where readers open this revision: DIR/ORG/NAME while it points there, else the
        revision's own directory (`dir`); the snapshot directory (`hf-cache`)."""
        return self.layout(spec).reader_path(spec, m)

    def fast_check(self, spec: ModelSpec, m: Manifest) -> list[str]:
        """Paths that are missing, have the wrong size, or that a check recorded as bad (no
        hashing). The one test of a published commit's files that every reader goes through."""
        found = self.damage(spec, m.commit)
        bad = set(found.extra) if found is not None else set()
        base = self.layout(spec).files_dir(spec, m.commit)
        for f in m.files:
            if found is not None and found.condemns(f.path):
                bad.add(f.path)
                continue
            try:
                if (base / f.path).stat().st_size != f.size:
                    bad.add(f.path)
            except OSError:
                bad.add(f.path)
        return sorted(bad)

    # -- damage ----------------------------------------------------------------------

    def damage(self, spec: ModelSpec, commit: str) -> Damage | None:
        """What a check recorded as bad in `commit`, until a repair clears it."""
        return damaged.read(self.paths, spec, commit)

    def record_damage(self, spec: ModelSpec, damage: Damage) -> None:
        """Remember durably what a check found bad: from now on the commit is not ready for any
        reader until a preload repairs it. Raises OSError where DIR is not writable."""
        damaged.record(self.paths, spec, damage)

    def drop_damaged(self, spec: ModelSpec) -> list[str]:
        """Delete the files the model's damage records name, then the records (under the lock,
        before planning: the transfer then refetches exactly those files). Returns their names.

        Order is what makes it crash-safe: the files go (and their directories are fsynced)
        before the record does, so at every moment one of the two keeps the commit from being
        ready; the record is only cleared once nothing bad it names is left to be trusted.
        """
        layout, dropped = self.layout(spec), []
        for commit in damaged.commits(self.paths, spec):
            found = self.damage(spec, commit)
            m = self._manifest_of(spec, commit)
            if found is not None and m is not None:
                condemned = [f for f in m.files if found.condemns(f.path)]
                doomed = [p for f in condemned for p in layout.file_paths(spec, commit, f)]
                doomed += [layout.files_dir(spec, commit) / rel for rel in found.extra]
                for path in doomed:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                for d in sorted({p.parent for p in doomed if p.parent.is_dir()}):
                    fsync_dir(d)
                dropped += [f.path for f in condemned] + list(found.extra)
            crashpoints.reached("damage_files_removed")
            damaged.clear(self.paths, spec, commit)
            crashpoints.reached("damage_cleared")
        return sorted(set(dropped))

    def _manifest_of(self, spec: ModelSpec, commit: str) -> Manifest | None:
        """The marker of one published commit, current or not."""
        current = self.read_marker(spec)
        if current is not None and current.commit == commit:
            return current
        return markers.read(self.paths, spec, self.paths.other_marker(spec, commit))

    def published_files(self, spec: ModelSpec) -> dict[str, Path]:
        """Content hash -> path of every file of the currently published revision (verified once)."""
        m = self.read_marker(spec)
        if m is None:
            return {}
        layout = self.layout(spec)
        return {f.digest.hex: layout.final_path(spec, m.commit, f) for f in m.files}

    # -- space ---------------------------------------------------------------------

    def check_space(self, needed: int) -> None:
        """Refuse to start when the bytes still needed (plus a margin) exceed free space."""
        space.check_space(self.root, needed)

    # -- publish -------------------------------------------------------------------

    def publish(self, spec: ModelSpec, m: Manifest) -> Path:
        """Make a fully verified, durable set of files visible; the marker is written last.

        A branch or tag, or the first revision, becomes current: DIR/ORG/NAME (or refs) moves
        to it, and the revision it replaces stays findable as another one until GC. A pinned
        commit published while another is current goes beside it: pods reading the current
        one are not switched to an older or unrelated commit under their feet.
        """
        layout = self.layout(spec)
        current = self.read_marker(spec)
        beside = spec.pinned and current is not None and current.commit != m.commit
        crashpoints.reached("before_pointer")
        if beside:
            path = layout.publish(spec, m, current=False)
            crashpoints.reached("before_marker")
            atomic_write(self.paths.other_marker(spec, m.commit), m.to_json().encode())
            crashpoints.reached("after_marker")
            return path
        if current is not None and current.commit != m.commit:
            atomic_write(self.paths.other_marker(spec, current.commit), current.to_json().encode())
        path = layout.publish(spec, m, current=True)
        crashpoints.reached("before_marker")
        atomic_write(self.paths.marker(spec), m.to_json().encode())
        with contextlib.suppress(FileNotFoundError):
            # The current marker now speaks for this commit.
            self.paths.other_marker(spec, m.commit).unlink()
        crashpoints.reached("after_marker")
        return path

    def remove_staging(self, spec: ModelSpec) -> None:
        """Drop a model's leftover partial files."""
        shutil.rmtree(self.paths.staging(spec), ignore_errors=True)
