"""The journal's size over a simulated year of a busy folder: it must plateau.

Each simulated day, `--per-day` scans arrive and are submitted (through the Journal API, with a
simulated clock), the scans older than `--linger-days` are moved away, and the daemon's Pruner
runs its daily walk. The file system is simulated too (a set of paths the Pruner's existence
check looks at), so that a year of 10,000 scans a day does not need 3.65 million files.
The journal's size (file plus WAL) is printed every 30 days; the figure is the size after the
year against the size after `--keep-days`.

Usage: python benchmarks/journal_size.py [--days 365] [--per-day 10000] [--keep-days 90]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections import deque
from pathlib import Path

from ocrwatch.journal import Job, Journal
from ocrwatch.log import configure_logging
from ocrwatch.upkeep import Pruner

DAY = 86400.0
GUID = "a197aade-bba9-4c7a-92c7-46851b3dceaa"


def size_of(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def one_day(journal: Journal, day: int, per_day: int, inbox: Path) -> list[str]:
    """A day's scans, queued in one burst and each marked submitted, as the job loop does."""
    start = day * DAY
    jobs = [
        Job(inbox / f"day-{day:03d}" / f"scan-{i:05d}.png", inbox, 1000 + i, day)
        for i in range(per_day)
    ]
    journal.note_many(jobs, start)
    for i, job in enumerate(jobs):
        now = start + i * DAY / per_day
        journal.mark_submitted(
            job.path,
            guid=GUID,
            sha256=f"{day:04d}{i:060d}",
            size=job.size,
            mtime_ns=job.mtime_ns,
            now=now,
            settings_key="k",
            accepted_at=now,
        )
    return [str(job.path) for job in jobs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--per-day", type=int, default=10_000)
    parser.add_argument("--keep-days", type=float, default=90.0)
    parser.add_argument(
        "--linger-days",
        type=int,
        default=7,
        help="how long a scan stays in the folder before it is moved away",
    )
    args = parser.parse_args()
    # journal.pruned, daily, is not the figure
    configure_logging(json=True, level="warning")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.sqlite3"
        journal = Journal(path)
        present: set[str] = set()
        days: deque[list[str]] = deque()
        pruner = Pruner(journal, lambda: args.keep_days, exists=present.__contains__)
        sizes: dict[int, int] = {}
        for day in range(1, args.days + 1):
            paths = one_day(journal, day, args.per_day, Path(tmp) / "inbox")
            present.update(paths)
            days.append(paths)
            if len(days) > args.linger_days:
                present.difference_update(days.popleft())
            pruned = pruner.run((day + 1) * DAY - 1)
            sizes[day] = size_of(path)
            if day % 30 == 0 or day in (args.keep_days, args.days):
                rows = sum(journal.counts().values())
                print(
                    json.dumps(
                        {
                            "day": day,
                            "rows": rows,
                            "pruned_today": pruned,
                            "bytes": sizes[day],
                            "elapsed_s": round(time.monotonic() - started, 1),
                        }
                    ),
                    flush=True,
                )
        journal.close()
        with sqlite3.connect(path) as db:
            pages, free = (
                db.execute("PRAGMA page_count").fetchone()[0],
                db.execute("PRAGMA freelist_count").fetchone()[0],
            )
    at_keep = sizes[min(int(args.keep_days), args.days)]
    print(
        json.dumps(
            {
                "per_day": args.per_day,
                "keep_days": args.keep_days,
                "bytes_after_keep_days": at_keep,
                "bytes_after_all_days": sizes[args.days],
                "ratio": round(sizes[args.days] / at_keep, 3),
                "free_pages_at_end": free,
                "pages_at_end": pages,
                "elapsed_s": round(time.monotonic() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
