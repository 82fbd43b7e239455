"""The catch-up scan: find files that events missed (at start, periodically, after an overflow).

It must be cheap on a folder of 100k files that are already done: os.scandir, sidecars read from
the same listing, and journal lookups in batches. The decision per file is a pure function; the
scans run one at a time in a thread of their own and only hand what they find to a callback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from ocrwatch.config import FolderConfig
from ocrwatch.errors import JournalError
from ocrwatch.journal import ACCEPTED_STATES, DONE_STATES, Entry, Journal
from ocrwatch.selection import Found, is_written_result, walk_candidates
from ocrwatch.sidecar import NO_ERROR_NOTE, has_current_sidecar

log = structlog.get_logger()


def needs_submission(found: Found, known: Entry | None) -> bool:
    """Should a file the walk found be (re)considered for submission?

    The journal's record is authoritative; without one, a sidecar no older than the file means done.
    """
    if known is None:
        return not has_current_sidecar(found.mtime_ns, found.sidecar_mtime_ns)
    if known.state in DONE_STATES:
        return (known.size, known.mtime_ns) != (found.size, found.mtime_ns)
    return False  # queued, failed or in flight already: the job loop has it


def error_removed(found: Found, known: Entry | None) -> bool:
    """Did the user delete the `.error` of an unchanged rejected file? That asks for it to be
    tried again (the cause was fixed elsewhere: credentials, a service-side limit).

    A rejection whose `.error` could not be written at all (a name too long for it) has
    none to delete: it stays recorded, not sent again.
    """
    return (
        known is not None
        and known.state == "rejected"
        and found.sidecar_mtime_ns is None
        and (known.size, known.mtime_ns) == (found.size, found.mtime_ns)
        and NO_ERROR_NOTE not in (known.last_error or "")
    )


def lost_sidecar_guid(found: Found, known: Entry | None) -> str | None:
    """The GUID to write back when a submitted, unchanged file has lost its `.guid`.

    Its sidecar could not be written at the time (a read-only share), or someone deleted it:
    the journal still knows the task, so it is restored rather than paid for again. To send a
    file again, change it (even `touch` will do).
    """
    if (
        known is None
        or known.state not in ACCEPTED_STATES
        or not known.guid
        or found.sidecar_mtime_ns is not None
    ):
        return None
    unchanged = (known.size, known.mtime_ns) == (found.size, found.mtime_ns)
    return known.guid if unchanged else None


@dataclass(frozen=True, slots=True)
class ScanReport:
    root: Path
    seen: int
    found: int


def scan_folder(
    folder: FolderConfig,
    journal: Journal,
    roots: Sequence[Path],
    emit: Callable[[Found], None],
    should_stop: Callable[[], bool] = lambda: False,
    restore: Callable[[Found, str], None] = lambda found, guid: None,
    on_error: Callable[[str, OSError], None] = lambda folder, exc: None,
    clock: Callable[[], float] = time.time,
) -> ScanReport:
    """Walk one watched folder, `emit` every file that needs submitting, `restore` lost sidecars."""
    root = folder.path.absolute()
    seen = found = 0
    for batch in walk_candidates(
        root,
        recursive=folder.recursive,
        include=folder.include,
        exclude=folder.exclude,
        roots=roots,
        on_error=on_error,
    ):
        if should_stop():
            break
        seen += len(batch)
        known = journal.lookup(f.path for f in batch)
        written = journal.written_results(f.path for f in batch if f.path not in known)
        retry = []
        for item in batch:
            record = known.get(item.path)
            if record is None and is_written_result(
                (item.size, item.mtime_ns), written.get(item.path)
            ):
                continue  # a result kept after its original went: ours, no input
            if needs_submission(item, record):
                found += 1
                emit(item)
            elif (guid := lost_sidecar_guid(item, record)) is not None:
                restore(item, guid)
            elif error_removed(item, record):
                retry.append(Path(item.path))
        for path in journal.requeue(retry, clock()):
            found += 1
            log.info("job.requeued", path=str(path), reason="its .error was removed")
    return ScanReport(root, seen, found)


class CatchUp:
    """Scans requested folders in one background thread, one round at a time.

    Requests that arrive while a round runs (a burst of overflows, twenty reloads) are merged
    into the next round. Only the daemon's main thread calls `request` and `start_if_due`.
    """

    def __init__(
        self,
        journal: Journal,
        emit: Callable[[Found], None],
        restore: Callable[[Found, str], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._journal = journal
        self._emit = emit
        self._restore = restore
        self._clock = clock
        self._requested: dict[Path, str] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._finished = 0
        self._finished_lock = threading.Lock()
        self._unreadable: set[str] = set()  # folders already reported
        # When the running round last moved on (time.monotonic); None while none runs.
        self._progress_at: float | None = None

    @property
    def scans_finished(self) -> int:
        """Folders scanned to the end since the start."""
        with self._finished_lock:
            return self._finished

    def stalled_for(self, now: float) -> float:
        """How long the running round has not moved on (a share that hangs a scandir
        holds every later rescan up); 0 while none runs. `now`: time.monotonic()."""
        since = self._progress_at
        running = self._thread is not None and self._thread.is_alive()
        return max(0.0, now - since) if running and since is not None else 0.0

    def _moved_on(self) -> bool:
        """The walk's `should_stop`, asked once per batch: also its sign of progress."""
        self._progress_at = time.monotonic()
        return self._stopping.is_set()

    def request(self, root: Path, reason: str) -> None:
        if root not in self._requested:
            log.info("rescan.requested", path=str(root), reason=reason)
        self._requested[root] = reason

    def start_if_due(
        self, folders: Mapping[Path, FolderConfig], roots: Sequence[Path]
    ) -> None:
        """Start a round for the requested folders that are still configured, unless one runs."""
        if not self._requested or (self._thread and self._thread.is_alive()):
            return
        due = [folders[r] for r in self._requested if r in folders]
        self._requested = {}
        self._progress_at = time.monotonic()
        self._thread = threading.Thread(
            target=self._scan, args=(due, list(roots)), name="scan", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Make a running round end at its next folder batch."""
        self._stopping.set()

    def _cannot_read(self, folder: str, exc: OSError) -> None:
        """Said once per folder: it is tried again at every scan, quietly."""
        if folder not in self._unreadable:
            self._unreadable.add(folder)
            log.warning(
                "rescan.folder_unreadable",
                path=folder,
                error=exc.strerror or str(exc),
                fix="let the service user read it",
            )

    def _scan(self, folders: list[FolderConfig], roots: list[Path]) -> None:
        for folder in folders:
            started = time.monotonic()
            try:
                self._journal.release_held(folder.path.absolute(), self._clock())
                report = scan_folder(
                    folder,
                    self._journal,
                    roots,
                    self._emit,
                    self._moved_on,
                    restore=self._restore,
                    on_error=self._cannot_read,
                    clock=self._clock,
                )
            except (OSError, JournalError) as exc:
                log.error("rescan.failed", path=str(folder.path), error=str(exc))
                continue
            except Exception:  # the next rescan tries again; the daemon keeps serving
                log.exception("rescan.crashed", path=str(folder.path))
                continue
            with self._finished_lock:
                self._finished += 1
            log.info(
                "rescan.finished",
                path=str(report.root),
                seen=report.seen,
                found=report.found,
                duration_ms=round((time.monotonic() - started) * 1000),
            )
