"""`ocrwatch status`: what the journal says, and what is true around it, as data and as text.

Read-only, whether a daemon runs or not: the journal is opened read-only, the lock is only
looked at. The report has the same keys whatever the state_dir holds (nothing, an empty or a
damaged journal), so that scripts need no special cases; README.md documents each key.
Times are UTC ISO-8601 with an age beside them; `now` is passed in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any, Final

from ocrwatch.config import Config
from ocrwatch.errors import OcrwatchError
from ocrwatch.journal import STATES, Entry, Journal, journal_exists
from ocrwatch.journalfile import recent_rebuilds
from ocrwatch.lifecycle import is_running
from ocrwatch.pause import PAUSE_KEY, Pause
from ocrwatch.upkeep import LAST_PRUNE_KEY

SCHEMA: Final = 1
RECENT_FAILURES: Final = 10
ALL: Final = 1 << 62  # no limit on the rows asked for
FAILED_STATES: Final = ("failed", "rejected")


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    stamp = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def ago(seconds: float) -> str:
    """A short age for people: `45s`, `3m`, `2h 5m`, `4d 3h`."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def pause_view(pause: Pause | None, running: bool, now: float) -> dict[str, Any]:
    """A pause is news only while the daemon that noted it runs and it has not ended."""
    current = pause is not None and (not running or pause.until > now)
    return {
        "active": running and current,
        "left_by_stopped_daemon": not running and current,
        "reason": pause.why.value if pause and current else None,
        "error": pause.error if pause and current else None,
        "since": iso(pause.since) if pause and current else None,
        "until": iso(pause.until) if pause and current else None,
    }


def _failure(entry: Entry, now: float) -> dict[str, Any]:
    return {
        "path": entry.path,
        "state": entry.state,
        "attempts": entry.attempts,
        "error": entry.last_error,
        "at": iso(entry.updated_at),
        "age_s": round(now - entry.updated_at, 1),
    }


def empty_report(config: Config, now: float) -> dict[str, Any]:
    """Every key, for a state_dir with nothing in it."""
    path = config.journal_path
    pid = is_running(config.state_dir)
    return {
        "schema": SCHEMA,
        "generated_at": iso(now),
        "journal": str(path),
        "exists": False,
        "daemon_running": pid is not None,
        "daemon_pid": pid or None,
        "pause": pause_view(None, pid is not None, now),
        "counts": dict.fromkeys(STATES, 0),
        "total": 0,
        "queue_depth": 0,
        "held": 0,
        "oldest_queued": None,
        "submitted_last_hour": 0,
        "submitted_last_day": 0,
        "recent_failures": [],
        "held_files": [],
        "failed_files": None,
        "last_pruned": None,
        "rebuilds": recent_rebuilds(path),
        "note": None,
    }


def status_report(
    config: Config, now: float, *, failed: bool = False
) -> dict[str, Any]:
    """The whole report; `failed`: with every failed and rejected file, not only the last 10."""
    report = empty_report(config, now)
    if failed:
        report["failed_files"] = []
    try:
        report["exists"] = journal_exists(config.journal_path)
    except OcrwatchError as exc:
        report["note"] = str(exc)
        return report
    if not report["exists"]:
        report["note"] = (
            "the daemon is running but its journal file is missing; it writes it again "
            "within seconds"
            if report["daemon_running"]
            else "no journal yet: nothing has been seen"
        )
        return report
    try:
        journal = Journal(config.journal_path, readonly=True)
    except OcrwatchError as exc:
        report["note"] = str(exc)
        return report
    try:
        if journal.is_empty():
            report["note"] = "the journal is empty: nothing has been seen"
        else:
            _fill(report, journal, now, failed=failed)
    except OcrwatchError as exc:
        report["note"] = str(exc)
    finally:
        journal.close()
    return report


def _fill(
    report: dict[str, Any], journal: Journal, now: float, *, failed: bool
) -> None:
    counts = journal.counts()
    meta = journal.meta()
    oldest = journal.oldest_queued()
    report.update(
        pause=pause_view(
            Pause.decode(meta.get(PAUSE_KEY)), report["daemon_running"], now
        ),
        counts=counts,
        total=sum(counts.values()),
        queue_depth=counts["queued"] + counts["failed"] + counts["submitting"],
        held=journal.held_count(),
        oldest_queued=None
        if oldest is None
        else {
            "path": oldest[0],
            "since": iso(oldest[1]),
            "age_s": round(now - oldest[1], 1),
        },
        submitted_last_hour=journal.accepted_since(now - 3600),
        submitted_last_day=journal.accepted_since(now - 86400),
        recent_failures=[
            _failure(e, now)
            for e in journal.entries(states=FAILED_STATES, limit=RECENT_FAILURES)
        ],
        held_files=[
            {
                "path": e.path,
                "reason": e.last_error,
                "since": iso(e.updated_at),
                "age_s": round(now - e.updated_at, 1),
            }
            for e in journal.entries(held=True, limit=ALL)
        ],
    )
    if failed:
        report["failed_files"] = [
            _failure(e, now) for e in journal.entries(states=FAILED_STATES, limit=ALL)
        ]
    if (pruned := meta.get(LAST_PRUNE_KEY)) is not None:
        with contextlib.suppress(ValueError):
            report["last_pruned"] = iso(float(pruned))


def _when(stamp: str | None, age_s: float) -> str:
    return f"{stamp} ({ago(age_s)} ago)"


def format_status(report: dict[str, Any], now: float) -> list[str]:
    """The report for a sysadmin at a terminal: the important things first."""
    pid = report["daemon_pid"]
    daemon = "not running"
    if report["daemon_running"]:
        daemon = f"running (pid {pid})" if pid else "running"
    lines = [f"journal: {report['journal']}", f"daemon: {daemon}"]
    if note := report["note"]:
        lines.append(note)
    lines += [f"journal rebuilt: {line}" for line in report["rebuilds"]]
    lines.append(_pause_line(report["pause"], report["daemon_running"], now))
    counts = report["counts"]
    lines.append(
        "files: "
        + "  ".join(f"{state} {n}" for state, n in counts.items())
        + f"  (total {report['total']})"
    )
    queue = f"queue depth: {report['queue_depth']} (held: {report['held']})"
    if oldest := report["oldest_queued"]:
        queue += f"; oldest queued: {oldest['path']}, since {_when(oldest['since'], oldest['age_s'])}"
    lines.append(queue)
    lines.append(
        f"submitted: {report['submitted_last_hour']} in the last hour, "
        f"{report['submitted_last_day']} in the last day"
    )
    if report["held_files"]:
        lines.append("held (not sent until the reason is fixed):")
        lines += [f"  {h['path']}: {h['reason']}" for h in report["held_files"]]
    if report["recent_failures"]:
        lines.append(
            "recent failures (newest first; `ocrwatch status --failed` lists all, "
            "`ocrwatch retry` sends them again):"
        )
        lines += [_failure_line(f) for f in report["recent_failures"]]
    return lines


def format_failed(report: dict[str, Any]) -> list[str]:
    """`status --failed`: one line per failed or rejected file, newest first."""
    files = report["failed_files"] or []
    lines = [f"{len(files)} failed or rejected file(s) in {report['journal']}"]
    if note := report["note"]:
        lines.append(note)
    return lines + [_failure_line(f) for f in files]


def _failure_line(f: dict[str, Any]) -> str:
    return (
        f"  {_when(f['at'], f['age_s'])} {f['state']} {f['path']} "
        f"(attempts {f['attempts']}): {f['error']}"
    )


def _pause_line(pause: dict[str, Any], running: bool, now: float) -> str:
    why = {
        "credentials_refused": "the credentials were refused",
        "bad_answers": "the service's answers made no sense",
        "rate_limited": "the token endpoint is rate-limiting",
    }
    if pause["active"]:
        until = dt.datetime.fromisoformat(pause["until"]).timestamp()
        # A rate limit slows uploads (each waits for a token); the others stop them all.
        state = "SLOWED" if pause["reason"] == "rate_limited" else "PAUSED"
        return (
            f"uploads: {state}, {why.get(pause['reason'], pause['reason'])}, since "
            f"{pause['since']}, until {pause['until']} (in {ago(until - now)}): "
            f"{pause['error']}"
        )
    if pause["left_by_stopped_daemon"]:
        return (
            f"uploads: not running; the daemon that stopped had paused them at "
            f"{pause['since']} ({why.get(pause['reason'], pause['reason'])}: "
            f"{pause['error']})"
        )
    return "uploads: not paused" if running else "uploads: none (no daemon runs)"
