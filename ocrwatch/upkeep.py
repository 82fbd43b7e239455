"""Journal upkeep: rows of files that are gone and were done long ago are pruned, daily.

A folder that sees 10,000 scans a day would otherwise grow the journal by millions of rows a
year. Only finished rows (submitted, rejected) older than `keep_days` whose file no longer
exists go: a row of a file that is still there keeps it from being sent again. A watched
folder that is missing or empty when a walk starts (a share not mounted yet: its mount point
is an empty folder) keeps all its rows, since "not there" means nothing there. The walk goes
in batches in a thread of its own, so that the journal's lock is never held for long and a
share that hangs an lstat never holds up the daemon's main loop.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

import structlog

from ocrwatch.errors import JournalError
from ocrwatch.journal import Journal, unkey

log = structlog.get_logger()

PRUNE_EVERY_S: Final = 86400.0
RETRY_S: Final = 3600.0
IDLE_S: Final = 600.0  # how often a thread with no walk due looks again
BATCH: Final = 500
LAST_PRUNE_KEY: Final = "journal.pruned_at"


def prune_due(last: float | None, now: float) -> bool:
    """Once a day; a first start prunes at once."""
    return last is None or now - last >= PRUNE_EVERY_S or now < last


def is_gone(path: str) -> bool:
    """lstat: a link is the file as the journal knows it, whatever it points to."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # unreadable is not gone
    return False


class Pruner:
    """Steps through the old finished rows, one batch per `step`, once a day."""

    def __init__(
        self,
        journal: Journal,
        keep_days: Callable[[], float],
        *,
        exists: Callable[[str], bool] = lambda path: not is_gone(path),
        roots: Callable[[], Iterable[Path]] = tuple,
    ) -> None:
        self._journal = journal
        self._keep_days = keep_days
        self._exists = exists
        self._roots = roots  # the watched folders now
        self._unsure: tuple[str, ...] = ()  # prefixes of folders that keep their rows
        # The second part of a walk, over the result files' records: the rowid reached.
        self._results_after: int | None = None
        self._results_removed = 0
        self._cursor: tuple[float, int] | None = None  # None: no walk in progress
        self._cutoff = 0.0
        self._removed = 0
        self._last: float | None = None

    def step(self, now: float) -> bool:
        """Do one batch if a walk runs or is due; True while one runs.

        A journal that fails meanwhile ends the walk; it is tried again an hour later.
        """
        try:
            return self._step(now)
        except JournalError as exc:
            log.error("journal.prune_failed", error=str(exc), retry_in_s=RETRY_S)
            self._cursor, self._results_after = None, None
            self._last = now - PRUNE_EVERY_S + RETRY_S
            return False

    def _step(self, now: float) -> bool:
        if self._cursor is None:
            if self._last is None:
                self._last = _last_prune(self._journal)
            if not prune_due(self._last, now):
                return False
            self._cursor, self._removed = (-math.inf, 0), 0
            self._cutoff = now - self._keep_days() * 86400.0
            self._unsure = tuple(
                f"{root}{os.sep}" for root in self._roots() if not has_entries(root)
            )
        if self._results_after is not None:
            return self._step_results(now)
        keys = self._journal.finished_before(self._cutoff, self._cursor, BATCH)
        gone = [k for _, _, k in keys if self._is_gone(k)]
        if gone:
            self._removed += self._journal.forget_finished(gone, self._cutoff)
        if len(keys) == BATCH:
            self._cursor = keys[-1][:2]
            return True
        self._results_after, self._results_removed = (
            0,
            0,
        )  # then the result files' records
        return True

    def _step_results(self, now: float) -> bool:
        """The records of result files written (they keep a kept result from being taken as
        input): those of files that are gone go too, or they would grow without end."""
        rows = self._journal.results_before(
            self._cutoff, self._results_after or 0, BATCH
        )
        gone = [k for _, k in rows if self._is_gone(k)]
        if gone:
            self._results_removed += self._journal.forget_results(gone)
        if len(rows) == BATCH:
            self._results_after = rows[-1][0]
            return True
        self._cursor, self._results_after, self._last = None, None, now
        self._journal.put_meta(LAST_PRUNE_KEY, repr(now), now)
        log.info(
            "journal.pruned",
            rows=self._removed,
            result_records=self._results_removed,
            keep_days=self._keep_days(),
        )
        return False

    def _is_gone(self, key: str) -> bool:
        path = unkey(key)
        return not path.startswith(self._unsure) and not self._exists(path)

    def serve(self, stopping: threading.Event, clock: Callable[[], float]) -> None:
        """The thread's loop: a walk when due, batch after batch; until `stopping`."""
        while not stopping.is_set():
            if not self.step(clock()):
                stopping.wait(IDLE_S)

    def run(self, now: float) -> int:
        """A whole walk at once (benchmarks, tests): the rows removed."""
        self._last = -math.inf
        while self.step(now):
            pass
        return self._removed


def has_entries(folder: Path) -> bool:
    """A watched folder with something in it: mounted, if it is a share."""
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is not None
    except OSError:
        return False


def _last_prune(journal: Journal) -> float | None:
    try:
        return float(journal.meta()[LAST_PRUNE_KEY])
    except (KeyError, ValueError):
        return None
