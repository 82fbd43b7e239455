"""`ocrwatch retry`: send failed or rejected files again once the user fixed the cause.

Their `.error` goes first, then their rows go back to the queue as if new (no attempts, due
now): the other way round, a daemon could claim a row while its `.error` still stood, take it
for current and record the rejection again. It works with or without a running daemon: the
journal is the queue, and a daemon claims due rows within a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ocrwatch.errors import SidecarError
from ocrwatch.journal import Journal
from ocrwatch.sidecar import remove_error

RETRYABLE = ("failed", "rejected")


@dataclass(slots=True)
class Retried:
    requeued: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, why not)


def targets(journal: Journal, paths: list[Path], all_failed: bool) -> list[Path]:
    """The files meant: each named one, the failed/rejected ones under a named folder, or
    every failed/rejected one."""
    if all_failed:
        return [Path(e.path) for e in journal.entries(states=RETRYABLE, limit=1 << 62)]
    found: list[Path] = []
    for given in paths:
        path = given.absolute()
        if path.is_dir():
            found += [Path(e.path) for e in journal.failed_under(path)]
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def retry(journal: Journal, paths: list[Path], now: float) -> Retried:
    done = Retried()
    known = journal.lookup(paths)
    ready = []
    for path in paths:
        entry = known.get(str(path))
        if entry is None:
            done.skipped.append((path, "not in the journal"))
        elif entry.state not in RETRYABLE:
            done.skipped.append((path, f"{entry.state}, not failed or rejected"))
        else:
            try:
                remove_error(path)
            except SidecarError as exc:
                done.skipped.append((path, str(exc)))
                continue
            ready.append(path)
    requeued = set(journal.requeue(ready, now))
    for path in ready:
        if path in requeued:
            done.requeued.append(path)
        else:  # claimed or changed in between
            done.skipped.append((path, "its state changed meanwhile"))
    return done
