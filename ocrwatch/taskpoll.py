"""When to ask the service about a task again, and what its answer means for the file.

Pure: the poll count, the deadline and `now` come in, a decision goes out. The first look comes
2 s after the upload (most scans are done by then), each wait is 1.5 times the last, up to 15 s:
a long task costs a poll every 15 s, never a tight loop.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

import structlog

FIRST_POLL_S: Final = 2.0
MAX_POLL_S: Final = 15.0
GROWTH: Final = 1.5
# Tests and benchmarks only: every wait of the schedule times this (0.05: 0.1 s to 0.75 s).
SCALE_ENV: Final = "OCRWATCH_POLL_SCALE"
MIN_SCALE: Final = 0.05  # polls every 0.1 s at the most
log = structlog.get_logger()
WAITING: Final = ("Pending", "Processing")


@dataclass(frozen=True, slots=True)
class PollSchedule:
    first_s: float = FIRST_POLL_S
    max_s: float = MAX_POLL_S

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] = os.environ,
        base_url: str = "http://127.0.0.1",
    ) -> PollSchedule:
        """The schedule, shortened by OCRWATCH_POLL_SCALE when a test or benchmark against
        the emulator sets it (logged, as it must never reach production)."""
        value = env.get(SCALE_ENV)
        scale = poll_scale(value, base_url)
        if value is not None:
            log.warning(
                "poll_schedule.scaled", scale=scale, requested=value, base_url=base_url
            )
        return cls(FIRST_POLL_S * scale, MAX_POLL_S * scale)

    def delay_s(self, polls: int) -> float:
        """The wait after poll number `polls` (0: the wait after the upload)."""
        return min(self.max_s, self.first_s * GROWTH ** min(polls, 64))


def poll_scale(value: str | None, base_url: str) -> float:
    """OCRWATCH_POLL_SCALE's factor: honoured only for a service on loopback (the emulator:
    a shortened schedule against the real service is a storm of GETs), never below
    MIN_SCALE, never above 1; anything else is 1."""
    try:
        scale = float(value) if value is not None else 1.0
    except ValueError:
        return 1.0
    if not (0 < scale <= 1) or not is_loopback(base_url):
        return 1.0
    return max(MIN_SCALE, scale)


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Next(StrEnum):
    WRITE = "write"  # Completed: write its results
    AGAIN = "again"  # not done yet: look again later
    RESUBMIT = "resubmit"  # the service lost it: upload once more
    FAIL = "fail"  # no result will come
    TIMEOUT = "timeout"  # no result in fetch_timeout: `retry` asks again


@dataclass(frozen=True, slots=True)
class Decision:
    next: Next
    at: float = 0.0  # for AGAIN: when
    reason: str = ""  # for FAIL, TIMEOUT and RESUBMIT: the `.error` line or the log's


def decide(
    status: str,
    *,
    messages: tuple[str, ...],
    polls: int,
    resubmits: int,
    refetch: bool = False,
    deadline: float,
    timeout_s: float,
    now: float,
    schedule: PollSchedule,
) -> Decision:
    """What to do after the service said `status` about a task polled `polls` times before."""
    if status == "Completed":
        return Decision(Next.WRITE)
    if status == "Error":
        said = "; ".join(m.strip() for m in messages if m.strip()) or "no reason given"
        return Decision(Next.FAIL, reason=f"the service could not recognize it: {said}")
    if status == "NotExist":
        # Past the deadline the task was only still asked about because asking failed (an
        # outage, an answer that could not be read): uploading it again, billed, is for the
        # user to decide then, not for a loop that could repeat it.
        if refetch or now >= deadline:
            # It had a result once, or was only to be asked about: it expired (the service
            # keeps a task a day), and uploading it again is for the user to decide.
            return Decision(
                Next.FAIL,
                reason="the service no longer has the task (NotExist; it keeps results "
                "for 24 h); `ocrwatch retry` sends it again (billed)",
            )
        if resubmits == 0:
            return Decision(
                Next.RESUBMIT,
                reason="the service no longer knows the task (NotExist); sent once more",
            )
        return Decision(
            Next.FAIL,
            reason="the service lost the task twice (NotExist), also after it was sent "
            "once more; `ocrwatch retry` sends it again",
        )
    return again(polls, deadline, timeout_s, now, schedule)


def again(
    polls: int, deadline: float, timeout_s: float, now: float, schedule: PollSchedule
) -> Decision:
    """Not done (or the service could not be asked): the next look, or the end at the deadline."""
    if now >= deadline:
        return Decision(Next.TIMEOUT, reason=f"no result after {_span(timeout_s)}")
    return Decision(Next.AGAIN, at=min(deadline, now + schedule.delay_s(polls + 1)))


def _span(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:g} s"
