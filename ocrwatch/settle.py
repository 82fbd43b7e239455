"""Is this file complete? A pure decision from activity times, (size, mtime) looks, and `now`.

A file is settled once no activity arrived for settle_seconds and its size and mtime are the
same as at the last look. A close-after-write starts the quiet period; it does not end it, since
scanners close and reopen a file between pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Look:
    """What a stat saw: enough to tell whether the file is still being written."""

    size: int
    mtime_ns: int


class Verdict(Enum):
    SETTLED = "settled"
    WAIT = "wait"
    GONE = "gone"


@dataclass(slots=True)
class _Pending:
    root: Path
    settle_s: float
    last_activity: float
    last_look: Look | None


def is_settled(
    last_activity: float,
    settle_s: float,
    now: float,
    previous: Look | None,
    current: Look | None,
) -> bool:
    """Quiet long enough, and unchanged since the previous look."""
    return (
        current is not None and now - last_activity >= settle_s and previous == current
    )


class SettleTracker:
    """Files seen active but not yet settled. Not thread-safe: the daemon's main loop owns it."""

    def __init__(self) -> None:
        self._pending: dict[Path, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: object) -> bool:
        return path in self._pending

    def touch(
        self, path: Path, root: Path, settle_s: float, now: float, look: Look | None
    ) -> None:
        """Activity on `path`: (re)start its quiet period and remember what it looked like."""
        pending = self._pending.get(path)
        if pending is None:
            self._pending[path] = _Pending(root, settle_s, now, look)
        else:
            pending.last_activity, pending.last_look, pending.settle_s = (
                now,
                look,
                settle_s,
            )

    def due(self, now: float) -> list[tuple[Path, Path]]:
        """(path, root) of files whose quiet period is over, to be looked at again."""
        return [
            (p, e.root)
            for p, e in self._pending.items()
            if now - e.last_activity >= e.settle_s
        ]

    def next_due_in(self, now: float) -> float | None:
        if not self._pending:
            return None
        return max(
            0.0, min(e.last_activity + e.settle_s for e in self._pending.values()) - now
        )

    def confirm(self, path: Path, look: Look | None, now: float) -> Verdict:
        """Decide a due file from a fresh look: settled (and forgotten), wait longer, or gone."""
        pending = self._pending.get(path)
        if pending is None:
            return Verdict.GONE
        if look is None:
            del self._pending[path]
            return Verdict.GONE
        if is_settled(
            pending.last_activity, pending.settle_s, now, pending.last_look, look
        ):
            del self._pending[path]
            return Verdict.SETTLED
        # It changed since the last look without an event (or events are polled): wait again.
        pending.last_activity, pending.last_look = now, look
        return Verdict.WAIT

    def forget(self, path: Path) -> None:
        self._pending.pop(path, None)
