"""The intake: activity on a path (an event, a scan's find) -> settle -> a queued journal row.

It belongs to the daemon's main thread, as the settle tracker is not thread-safe. It also releases
the files an invalid `.ocrwatch.yaml` held once that file has been fixed and left alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import structlog

from ocrwatch.config import FolderConfig
from ocrwatch.errors import JournalError
from ocrwatch.journal import Job, Journal
from ocrwatch.metrics import Metrics
from ocrwatch.profiles import OVERRIDE_NAME
from ocrwatch.selection import (
    Found,
    candidate_stat,
    deepest_root,
    is_candidate,
    is_ignored_dir,
    is_result_file,
    is_written_result,
    walk_candidates,
)
from ocrwatch.settle import Look, SettleTracker, Verdict
from ocrwatch.sidecar import is_sidecar_name

log = structlog.get_logger()

JOURNAL_RETRY_S: Final = 1.0


def is_readable(path: Path) -> bool:
    """The readiness check: can we open it read-only right now? Never opened for writing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    os.close(fd)
    return True


class Intake:
    """Settles what the watchers and scans report, and queues each settled file once."""

    def __init__(
        self,
        journal: Journal,
        folders: Mapping[Path, FolderConfig],
        *,
        on_queued: Callable[[], None],
        on_override_edit: Callable[[Path], None],
        metrics: Metrics | None = None,
    ) -> None:
        self._journal = journal
        self._metrics = metrics or Metrics()
        self._folders = dict(folders)
        self._on_queued = on_queued  # wakes the job loop
        # Drops the profile cache's copy: an edit within one mtime tick keeps size and inode.
        self._on_override_edit = on_override_edit
        self._tracker = SettleTracker()
        self._override_edits: dict[Path, float] = {}  # .ocrwatch.yaml -> release at
        # Settled, waiting for the journal to take them (a full state_dir), by path.
        self._unnoted: dict[Path, Job] = {}
        self._retry_journal_at = 0.0
        self._journal_down = False

    def __len__(self) -> int:
        """Files seen but not yet in the journal."""
        return len(self._tracker) + len(self._unnoted)

    def update(self, folders: Mapping[Path, FolderConfig]) -> None:
        """A reload: files already settling keep their folder's old settle time."""
        self._folders = dict(folders)

    def next_due_in(self, now: float) -> float | None:
        return self._tracker.next_due_in(now)

    def add_event(self, root: Path, path: Path, is_dir: bool, now: float) -> None:
        folder = self._folders.get(root)
        if folder is None or is_sidecar_name(path.name):
            return  # most events under load are our own sidecars appearing
        if path.name == OVERRIDE_NAME:
            self._on_override_edit(path)
            # Release what it held once it has been quiet for a moment: the first event of an
            # edit in place is the truncation, and an empty file would release them unconfigured.
            self._override_edits[path] = now + folder.settle_seconds
            return
        try:
            rel = path.relative_to(root)
        except ValueError:
            return
        if is_dir:
            if (
                folder.recursive
                and rel.parts
                and not any(is_ignored_dir(p, folder.exclude) for p in rel.parts)
            ):
                self._add_moved_in_dir(path, root, folder, now)
            return
        if is_candidate(rel, folder.include, folder.exclude) and not is_result_file(
            path, folder.include
        ):
            self._tracker.touch(
                path, root, folder.settle_seconds, now, self._look(path)
            )

    def add_found(self, found: Found, now: float) -> None:
        path = Path(found.path)
        root = deepest_root(path, self._folders)
        if root is None or path in self._tracker or path in self._unnoted:
            return
        # A file found by a scan has been quiet since its mtime: one more look decides.
        quiet_since = min(now, found.mtime_ns / 1e9)
        look = Look(found.size, found.mtime_ns)
        self._tracker.touch(
            path, root, self._folders[root].settle_seconds, quiet_since, look
        )

    def settle_due(self, now: float) -> None:
        """Queue the files whose quiet period is over and that still look the same."""
        if self._override_edits:
            self._release_edited_overrides(now)
        for path, root in self._tracker.due(now):
            look = self._look(path)
            readable = look is not None and is_readable(path)
            verdict = self._tracker.confirm(path, look, now, readable=readable)
            if verdict is Verdict.SETTLED and look is not None:
                self._unnoted[path] = Job(path, root, look.size, look.mtime_ns)
        if not self._unnoted or now < self._retry_journal_at:
            return
        try:
            self._drop_written_results()
            queued = self._journal.note_many(self._unnoted.values(), now)
        except JournalError as exc:
            # A full (or failing) state_dir: the files wait here, and on disk, until it can
            # take them again. Said once, not at every tick.
            self._retry_journal_at = now + JOURNAL_RETRY_S
            if not self._journal_down:
                self._journal_down = True
                log.error("intake.paused", error=str(exc), waiting=len(self._unnoted))
            return
        if self._journal_down:
            self._journal_down = False
            log.info("intake.resumed", queued=len(queued))
        self._unnoted = {}
        self._metrics.files_seen(len(queued))
        if queued:
            self._on_queued()
        for job in queued:
            log.info("job.queued", path=str(job.path), bytes=job.size)

    def _drop_written_results(self) -> None:
        """Result files ocrwatch wrote are no input, even with their original gone."""
        written = self._journal.written_results(self._unnoted)
        for path, job in list(self._unnoted.items()):
            if is_written_result((job.size, job.mtime_ns), written.get(str(path))):
                del self._unnoted[path]
                log.debug("result.ignored", path=str(path))

    def _look(self, path: Path) -> Look | None:
        st = candidate_stat(path, self._folders)
        return None if st is None else Look(st.st_size, st.st_mtime_ns)

    def _add_moved_in_dir(
        self, directory: Path, root: Path, folder: FolderConfig, now: float
    ) -> None:
        """Files inside a folder moved in get no events of their own: look at them now."""
        for batch in walk_candidates(
            directory,
            recursive=True,
            include=folder.include,
            exclude=folder.exclude,
            roots=list(self._folders),
        ):
            for found in batch:
                path = Path(found.path)
                # The walk matched paths relative to the moved folder; the rules are relative
                # to the watched root.
                if is_candidate(path.relative_to(root), folder.include, folder.exclude):
                    look = Look(found.size, found.mtime_ns)
                    self._tracker.touch(path, root, folder.settle_seconds, now, look)

    def _release_edited_overrides(self, now: float) -> None:
        due = [path for path, at in self._override_edits.items() if at <= now]
        for path in due:
            try:
                released = self._journal.release_held(path.parent, now)
            except JournalError:
                self._override_edits[path] = now + JOURNAL_RETRY_S  # tried again soon
                continue
            del self._override_edits[path]
            if released:
                log.info("profile.override_changed", path=str(path), released=released)
                self._on_queued()
