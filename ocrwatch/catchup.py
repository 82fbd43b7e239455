"""The catch-up scan: find files that events missed (at start, periodically, after an overflow).

It must be cheap on a folder of 100k files that are already done: os.scandir, sidecars read from
the same listing, and journal lookups in batches. The decision per file is a pure function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ocrwatch.config import FolderConfig
from ocrwatch.journal import DONE_STATES, Journal
from ocrwatch.selection import Found, walk_candidates
from ocrwatch.sidecar import has_current_sidecar


def needs_submission(found: Found, known: tuple[int, int, str] | None) -> bool:
    """Should a file the walk found be (re)considered for submission?

    The journal's record is authoritative; without one, a sidecar no older than the file means done.
    """
    if known is None:
        return not has_current_sidecar(found.mtime_ns, found.sidecar_mtime_ns)
    size, mtime_ns, state = known
    if state in DONE_STATES:
        return (size, mtime_ns) != (found.size, found.mtime_ns)
    return False  # queued, failed or in flight already: the workers have it


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
) -> ScanReport:
    """Walk one watched folder and `emit` every file that needs submitting."""
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
            if needs_submission(item, known.get(item.key)):
                found += 1
                emit(item)
    return ScanReport(root, seen, found)
