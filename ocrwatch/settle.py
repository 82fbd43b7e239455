"""Is this file complete? A pure decision from activity times, (size, mtime) looks, and `now`.

A file is settled once no activity arrived for settle_seconds and its size and mtime are the
same as at the last look. A close-after-write starts the quiet period; it does not end it, since
scanners close and reopen a file between pages.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Final


@dataclass(frozen=True, slots=True)
class Look:
    """What a stat saw: enough to tell whether the file is still being written."""

    size: int
    mtime_ns: int


class Verdict(Enum):
    SETTLED = "settled"
    WAIT = "wait"
    GONE = "gone"


MAX_UNREADABLE_LOOKS: Final = 10


@dataclass(slots=True)
class _Pending:
    root: Path
    settle_s: float
    last_activity: float
    last_look: Look | None
    unreadable_looks: int = 0


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
    """Files seen active but not yet settled. Not thread-safe: the daemon's main loop owns it.

    A heap of due times keeps each loop of the daemon O(log n) in a burst of thousands of files;
    entries made stale by later activity are skipped when they surface.
    """

    def __init__(self) -> None:
        self._pending: dict[Path, _Pending] = {}
        self._heap: list[tuple[float, Path]] = []

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
        heapq.heappush(self._heap, (now + settle_s, path))

    def due(self, now: float) -> list[tuple[Path, Path]]:
        """(path, root) of files whose quiet period is over. Pass each one to `confirm()`."""
        found: dict[Path, Path] = {}
        while self._heap and self._heap[0][0] <= now:
            when, path = heapq.heappop(self._heap)
            pending = self._pending.get(path)
            if pending is not None and pending.last_activity + pending.settle_s == when:
                found[path] = pending.root
        return list(found.items())

    def next_due_in(self, now: float) -> float | None:
        while self._heap:
            when, path = self._heap[0]
            pending = self._pending.get(path)
            if pending is not None and pending.last_activity + pending.settle_s == when:
                return max(0.0, when - now)
            heapq.heappop(self._heap)  # stale: superseded by later activity, or settled
        return None

    def confirm(
        self, path: Path, look: Look | None, now: float, *, readable: bool = True
    ) -> Verdict:
        """Decide a due file from a fresh look: settled (and forgotten), wait longer, or gone.

        `readable` is whether a read-only open just worked: a writer on an SMB share may still
        hold the file locked. After MAX_UNREADABLE_LOOKS the file goes ahead anyway, so that a
        file nobody can read ends with an `.error` instead of waiting forever.
        """
        pending = self._pending.get(path)
        if pending is None:
            return Verdict.GONE
        if look is None:
            del self._pending[path]
            return Verdict.GONE
        if not readable and pending.unreadable_looks < MAX_UNREADABLE_LOOKS:
            pending.unreadable_looks += 1
            pending.last_activity = now
            heapq.heappush(self._heap, (now + pending.settle_s, path))
            return Verdict.WAIT
        if is_settled(
            pending.last_activity, pending.settle_s, now, pending.last_look, look
        ):
            del self._pending[path]
            return Verdict.SETTLED
        # It changed since the last look without an event (or events are polled): wait again.
        pending.last_activity, pending.last_look = now, look
        heapq.heappush(self._heap, (now + pending.settle_s, path))
        return Verdict.WAIT
