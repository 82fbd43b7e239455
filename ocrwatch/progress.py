"""Progress, not just liveness: each upload thread's last sign of life, and when it is overdue.

A worker beats whenever it shows progress (a claim, an idle wake-up, a chunk of a body sent, a
poll for a twin) and says with each beat how long it may now be quiet: an idle wait, a backoff
sleep or a call on the network, each bounded. A worker quiet for longer than it said is stuck,
for instance in a call whose answer drips in a line at a time. The decision is pure; the
watchdog (`daemon.py`) acts on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# (what the thread is doing, seconds it may wait beyond one network call's bound)
Progress = Callable[[str, float], None]


def call_bound_s(connect_s: float, read_s: float) -> float:
    """The longest a healthy HTTP call goes without a sign of progress.

    Connecting may try two addresses (IPv6, then IPv4), each within the connect timeout, and
    each send of the body must progress within it too; then the status line and the body each
    come within the read timeout (transport.py). Only a call held open beyond that, by header
    lines that drip in or a read that never returns, is slower.
    """
    return 3 * connect_s + 2 * read_s


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A worker's last sign of progress: what it was doing, when, and how long it may be quiet."""

    thread: str
    doing: str
    at: float  # time.monotonic()
    quiet_s: float

    def overdue_s(self, now: float) -> float:
        """How far past its promise the worker is; 0 or less while it keeps it."""
        return now - self.at - self.quiet_s


def stalled(beats: Iterable[Heartbeat], now: float) -> list[str]:
    """One reason per worker that is quiet for longer than its last beat allowed."""
    return [
        f"{b.thread} made no progress for {now - b.at:.0f}s while {b.doing} "
        f"(allowed {b.quiet_s:.0f}s)"
        for b in beats
        if b.overdue_s(now) > 0
    ]


class Heartbeats:
    """The last beat of each worker thread, written by the workers, read by the main loop.

    A beat from a thread that never registered (`submit`'s threads, a test calling `step()`)
    is ignored.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._beats: dict[threading.Thread, Heartbeat] = {}

    def register(self, doing: str, quiet_s: float) -> None:
        """The calling thread is a worker from now on; its first beat."""
        thread = threading.current_thread()
        with self._lock:
            self._beats[thread] = Heartbeat(thread.name, doing, self._clock(), quiet_s)

    def beat(self, doing: str, quiet_s: float) -> None:
        thread = threading.current_thread()
        with self._lock:
            if thread in self._beats:
                self._beats[thread] = Heartbeat(
                    thread.name, doing, self._clock(), quiet_s
                )

    def forget(self) -> None:
        """The calling thread ends on purpose (stop, or a smaller pool)."""
        with self._lock:
            self._beats.pop(threading.current_thread(), None)

    def of(self, thread: threading.Thread) -> Heartbeat | None:
        with self._lock:
            return self._beats.get(thread)


@dataclass(frozen=True, slots=True)
class Worker:
    """One upload thread as the watchdog sees it."""

    name: str
    alive: bool
    heartbeat: Heartbeat | None  # None until its first beat


def find_problems(
    observers: int, observers_alive: int, workers: Iterable[Worker], now: float
) -> tuple[str, ...]:
    """Why the daemon is not working as it should; empty while every observer runs and every
    worker is alive and progressing. A restart is the cure for each of these."""
    problems: list[str] = []
    if observers_alive < observers:
        problems.append(
            f"{observers - observers_alive} of {observers} observers stopped"
        )
    workers = list(workers)
    problems += [f"{w.name} is not running" for w in workers if not w.alive]
    problems += stalled(
        (w.heartbeat for w in workers if w.alive and w.heartbeat is not None), now
    )
    return tuple(problems)
