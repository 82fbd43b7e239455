"""The catch-up scan: find files that events missed (at start, periodically, after an overflow).

It must be cheap on a folder of 100k files that are already done: os.scandir, sidecars read from
the same listing, and journal lookups in batches. The decision per file is a pure function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ocrwatch.config import FolderConfig
from ocrwatch.journal import DONE_STATES, Journal, Known
from ocrwatch.selection import Found, walk_candidates
from ocrwatch.sidecar import has_current_sidecar


def needs_submission(found: Found, known: Known | None) -> bool:
    """Should a file the walk found be (re)considered for submission?

    The journal's record is authoritative; without one, a sidecar no older than the file means done.
    """
    if known is None:
        return not has_current_sidecar(found.mtime_ns, found.sidecar_mtime_ns)
    if known.state in DONE_STATES:
        return (known.size, known.mtime_ns) != (found.size, found.mtime_ns)
    return False  # queued, failed or in flight already: the workers have it


def lost_sidecar_guid(found: Found, known: Known | None) -> str | None:
    """The GUID to write back when a submitted, unchanged file has lost its `.guid`.

    Its sidecar could not be written at the time (a read-only share), or someone deleted it:
    the journal still knows the task, so it is restored rather than paid for again. To send a
    file again, change it (even `touch` will do).
    """
    if (
        known is None
        or known.state != "submitted"
        or not known.guid
        or found.sidecar_mtime_ns is not None
    ):
        return None
    return (
        known.guid
        if (known.size, known.mtime_ns) == (found.size, found.mtime_ns)
        else None
    )


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
    ):
        if should_stop():
            break
        seen += len(batch)
        known = journal.lookup(f.key for f in batch)
        for item in batch:
            record = known.get(item.key)
            if needs_submission(item, record):
                found += 1
                emit(item)
            elif (guid := lost_sidecar_guid(item, record)) is not None:
                restore(item, guid)
    return ScanReport(root, seen, found)
