"""The on-disk format: layouts, staging, atomic publish, completion markers, locks, free space.

Everything that asks "is this model ready?" asks this module. Layout under DIR:

    .preload/locks/ORG--NAME.lock                 flock held by the one process transferring
    .preload/staging/ORG--NAME/<hash>.part        partial files (+ .journal with chunk progress)
    .preload/versions/ORG/NAME/<commit>/...       published files of the `dir` layout
    .preload/markers/<layout>/ORG/NAME.json       the manifest; written last, atomically
    .preload/markers/<layout>/ORG/NAME/<commit>.json   other complete revisions (kept until GC)
    ORG/NAME -> ../.preload/versions/ORG/NAME/<commit>      (`dir` layout; swapped atomically)
    models--ORG--NAME/{blobs,snapshots,refs,trees}          (`hf-cache` layout, the hub's own)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent import crashpoints
from agent.errors import DiskSpaceError, IntegrityError, UsageError
from agent.manifest import Manifest, RemoteFile
from agent.spec import Layout, ModelSpec
from agent.store.fs import atomic_symlink, atomic_write, existing_ancestor, fsync_dir, make_dirs
from agent.units import fmt_bytes

STATE = ".preload"
SPACE_MARGIN_MIN = 64 << 20
SPACE_MARGIN_FRACTION = 0.01
LOCK_POLL = 0.2


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
        self.state = root / STATE

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
        """`check_dest`, then create DIR if needed and lay out our state dir."""
        self.check_dest()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in ("locks", "staging", "versions", "markers"):
                (self.state / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"destination {self.root} is not writable: {exc.strerror}") from exc

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
        fd = os.open(self._lock_path(spec), os.O_RDWR | os.O_CREAT, 0o644)
        started = time.monotonic()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        yield False
                        return
                    if on_wait is not None:
                        on_wait(time.monotonic() - started)
                    time.sleep(LOCK_POLL)
            yield True
        finally:
            os.close(fd)

    def _lock_path(self, spec: ModelSpec) -> Path:
        return self.state / "locks" / f"{spec.org}--{spec.name}.lock"

    def is_locked(self, spec: ModelSpec) -> bool:
        """True if some process holds the model's lock right now."""
        if not self._lock_path(spec).exists():
            return False
        with self.lock(spec, deadline=0) as got:
            return not got

    def busy(self, spec: ModelSpec) -> bool:
        """`is_locked` for reporting: a lock that cannot be checked (read-only mount) is not busy."""
        try:
            return self.is_locked(spec)
        except OSError:
            return False

    # -- paths ---------------------------------------------------------------------

    def marker_path(self, spec: ModelSpec) -> Path:
        """The completion marker of a model in a layout."""
        return self.state / "markers" / spec.layout.value / spec.org / f"{spec.name}.json"

    def model_path(self, spec: ModelSpec, commit: str | None = None) -> Path:
        """What a reader opens: DIR/ORG/NAME, or the hub-cache snapshot of `commit`."""
        if spec.layout is Layout.DIR:
            return self.root / spec.org / spec.name
        return self.hf_repo_dir(spec) / "snapshots" / (commit or "")

    def hf_repo_dir(self, spec: ModelSpec) -> Path:
        """models--ORG--NAME in the hub cache layout."""
        return self.root / f"models--{spec.org}--{spec.name}"

    def version_dir(self, spec: ModelSpec, commit: str) -> Path:
        """The published files of one commit in the `dir` layout."""
        return self.state / "versions" / spec.org / spec.name / commit

    def staging_dir(self, spec: ModelSpec) -> Path:
        """Where partial files of a model live."""
        return self.state / "staging" / f"{spec.org}--{spec.name}"

    def placements(self, spec: ModelSpec, commit: str, files: tuple[RemoteFile, ...]) -> list[Placement]:
        """Final and staging paths of each file."""
        staging = self.staging_dir(spec)
        out = []
        for f in files:
            if spec.layout is Layout.DIR:
                final = self.version_dir(spec, commit) / f.path
            else:
                final = self.hf_repo_dir(spec) / "blobs" / f.digest.hex
            out.append(Placement(f, final, staging / f"{f.digest.hex}.part"))
        return out

    # -- readiness -----------------------------------------------------------------

    def other_marker_path(self, spec: ModelSpec, commit: str) -> Path:
        """The marker of a complete revision that is not the one DIR/ORG/NAME (or refs) shows."""
        return self.state / "markers" / spec.layout.value / spec.org / spec.name / f"{commit}.json"

    def read_marker(self, spec: ModelSpec) -> Manifest | None:
        """The current marker's manifest if present and well-formed for this repo and layout."""
        return self._read_manifest(spec, self.marker_path(spec))

    def other_markers(self, spec: ModelSpec) -> list[Manifest]:
        """The other complete revisions' manifests, newest first."""
        base = self.other_marker_path(spec, "x").parent
        found = [m for p in sorted(base.glob("*.json")) if (m := self._read_manifest(spec, p))]
        return sorted(found, key=lambda m: -m.completed_at)

    def _read_manifest(self, spec: ModelSpec, path: Path) -> Manifest | None:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            m = Manifest.from_json(data)
        except IntegrityError:
            return None
        if m.repo != spec.repo or m.layout != spec.layout.value:
            return None
        if path != self.marker_path(spec) and path.name != f"{m.commit}.json":
            return None
        return m

    def ready(self, spec: ModelSpec, *, selection: bool = True) -> Manifest | None:
        """The manifest if the requested revision is published and every file is in place.

        With `selection`, the published files must also include every file the spec's
        filter selects from the commit's listing (a run asking for more files is not served
        by one that fetched fewer). Waiters pass False: they want the model as configured.
        """
        current = self.read_marker(spec)
        if current is not None and self._serves(spec, current, selection) and self._pointer_ok(spec, current):
            return current
        # Another revision published beside the current one (a pinned commit, or what a
        # branch resolved to before a --refresh moved it): found offline, pointers untouched.
        if spec.pinned:
            other = self._read_manifest(spec, self.other_marker_path(spec, spec.revision))
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
        if spec.layout is Layout.DIR and not self._pointer_ok(spec, m):
            return self.version_dir(spec, m.commit)
        return self.model_path(spec, m.commit)

    def _pointer_ok(self, spec: ModelSpec, m: Manifest) -> bool:
        """Whether DIR/ORG/NAME (or refs/<revision>) shows readers this manifest's commit."""
        if spec.layout is Layout.DIR:
            try:
                return Path(os.readlink(self.model_path(spec))).name == m.commit
            except OSError:
                return False
        if not spec.pinned:
            try:
                return (self.hf_repo_dir(spec) / "refs" / m.revision).read_text() == m.commit
            except OSError:
                return False
        return True

    def fast_check(self, spec: ModelSpec, m: Manifest) -> list[str]:
        """Paths that are missing or have the wrong size (no hashing)."""
        bad = []
        base = self.model_path(spec, m.commit)
        if spec.layout is Layout.DIR:
            base = self.version_dir(spec, m.commit)
        for f in m.files:
            try:
                if (base / f.path).stat().st_size != f.size:
                    bad.append(f.path)
            except OSError:
                bad.append(f.path)
        return bad

    def published_files(self, spec: ModelSpec) -> dict[str, Path]:
        """Content hash -> path of every file of the currently published revision (verified once)."""
        m = self.read_marker(spec)
        if m is None:
            return {}
        base = self.version_dir(spec, m.commit) if spec.layout is Layout.DIR else None
        return {
            f.digest.hex: (base / f.path) if base else self.hf_repo_dir(spec) / "blobs" / f.digest.hex
            for f in m.files
        }

    # -- space ---------------------------------------------------------------------

    def check_space(self, needed: int) -> None:
        """Refuse to start when the bytes still needed (plus a margin) exceed free space."""
        st = os.statvfs(existing_ancestor(self.root))
        free = st.f_bavail * st.f_frsize
        margin = max(SPACE_MARGIN_MIN, int(needed * SPACE_MARGIN_FRACTION))
        if needed and needed + margin > free:
            raise DiskSpaceError(
                f"not enough space on {self.root}: need {fmt_bytes(needed)} (+{fmt_bytes(margin)} margin), "
                f"free {fmt_bytes(free)}",
                free_wanted=needed + margin,
            )

    # -- publish -------------------------------------------------------------------

    def publish(self, spec: ModelSpec, m: Manifest) -> Path:
        """Make a fully verified, durable set of files visible; the marker is written last.

        A branch or tag, or the first revision, becomes current: DIR/ORG/NAME (or refs) moves
        to it, and the revision it replaces stays findable as another one until GC. A pinned
        commit published while another is current goes beside it: pods reading the current
        one are not switched to an older or unrelated commit under their feet.
        """
        current = self.read_marker(spec)
        beside = spec.pinned and current is not None and current.commit != m.commit
        crashpoints.reached("before_pointer")
        if beside:
            path = (
                self.version_dir(spec, m.commit)
                if spec.layout is Layout.DIR
                else self._publish_hf_cache(spec, m)
            )
            crashpoints.reached("before_marker")
            atomic_write(self.other_marker_path(spec, m.commit), m.to_json().encode())
            crashpoints.reached("after_marker")
            return path
        if current is not None and current.commit != m.commit:
            atomic_write(self.other_marker_path(spec, current.commit), current.to_json().encode())
        path = self._publish_dir(spec, m) if spec.layout is Layout.DIR else self._publish_hf_cache(spec, m)
        crashpoints.reached("before_marker")
        atomic_write(self.marker_path(spec), m.to_json().encode())
        with contextlib.suppress(FileNotFoundError):
            # The current marker now speaks for this commit.
            self.other_marker_path(spec, m.commit).unlink()
        crashpoints.reached("after_marker")
        return path

    def _publish_dir(self, spec: ModelSpec, m: Manifest) -> Path:
        link = self.model_path(spec)
        if link.exists() and not link.is_symlink():
            raise UsageError(
                f"{link} exists and was not written by preload; move it away or pick another --dest"
            )
        created = make_dirs(link.parent)
        target = os.path.relpath(self.version_dir(spec, m.commit), link.parent)
        atomic_symlink(target, link)
        for d in sorted({link.parent, *created}, reverse=True):
            fsync_dir(d)
        return link

    def _publish_hf_cache(self, spec: ModelSpec, m: Manifest) -> Path:
        repo = self.hf_repo_dir(spec)
        snap = repo / "snapshots" / m.commit
        created: set[Path] = set()
        for f in m.files:
            link = snap / f.path
            created |= make_dirs(link.parent)
            target = os.path.relpath(repo / "blobs" / f.digest.hex, link.parent)
            if not (link.is_symlink() and os.readlink(link) == target):
                atomic_symlink(target, link)
        tree = {
            "format_version": 1,
            "files": {
                f.path: {"size": f.size, "blob_id": f.digest.hex}
                if f.digest.algo != "sha256"
                else {
                    "size": f.size,
                    "blob_id": f.blob_id or f.digest.hex,
                    "lfs_sha256": f.digest.hex,
                    "lfs_size": f.size,
                }
                for f in m.files
            },
        }
        atomic_write(repo / "trees" / f"{m.commit}.json", json.dumps(tree, indent=1).encode())
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            atomic_write(tag, b"Signature: 8a477f597d28d172789f06886806bc55\n")
        for d in sorted({(snap / f.path).parent for f in m.files} | created, reverse=True):
            fsync_dir(d)
        if not spec.pinned:
            # The hub client reads refs/<rev> verbatim: no trailing newline.
            atomic_write(repo / "refs" / m.revision, m.commit.encode())
        return snap

    def remove_staging(self, spec: ModelSpec) -> None:
        """Drop a model's leftover partial files."""
        shutil.rmtree(self.staging_dir(spec), ignore_errors=True)
