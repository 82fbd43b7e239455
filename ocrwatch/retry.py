"""Retry timing: the tenacity policy for one submission, and when the journal tries a file again.

A retried POST may create a second billable task (the API has no idempotency key), so attempts
are capped; past the cap the file goes back to the journal and is tried again later, never dropped.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

import structlog
import tenacity

from ocrwatch.errors import ApiError, TokenRateLimitError, TransientApiError
from ocrwatch.progress import Progress

log = structlog.get_logger()
T = TypeVar("T")

JOURNAL_BACKOFF_BASE_S: Final = 30.0
JOURNAL_BACKOFF_CAP_S: Final = 3600.0


def next_attempt_at(
    attempts: int,
    now: float,
    retry_after_s: float | None = None,
    *,
    jitter: float = 0.1,
) -> float:
    """When the journal should offer a file again after `attempts` failed rounds.

    Doubles from 30 s up to one hour, never sooner than the server's Retry-After.
    """
    base = min(
        JOURNAL_BACKOFF_CAP_S, JOURNAL_BACKOFF_BASE_S * 2.0 ** max(0, attempts - 1)
    )
    delay = base * (1 - jitter * random.random())
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return now + delay


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait from a Retry-After header, in either its seconds or HTTP-date form."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - now_epoch)


def _retry_after(state: tenacity.RetryCallState) -> tuple[float | None, bool]:
    """The server's Retry-After for the last error, and whether it comes from the token endpoint."""
    exc = state.outcome.exception() if state.outcome else None
    if not isinstance(exc, ApiError):
        return None, False
    return exc.retry_after_s, isinstance(exc, TokenRateLimitError)


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try one submission before handing it back to the journal for later."""

    max_attempts: int = 6
    max_delay_s: float = 120.0
    give_up_after_s: float = 600.0
    sleep: Callable[[float], None] = field(default=time.sleep)
    on_retry: Callable[[], None] = field(default=_nothing)  # counts retries (metrics)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        jittered = tenacity.wait_random_exponential(
            multiplier=0.5, max=self.max_delay_s
        )(state)
        retry_after, token = _retry_after(state)
        if retry_after is None:
            return jittered
        # The token endpoint's wait is capped: every upload needs a token, and a long wait
        # there is better spent retrying within the budget than handing every file back.
        return max(
            jittered, min(retry_after, self.max_delay_s) if token else retry_after
        )

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= self.max_attempts:
            return True
        if (
            state.seconds_since_start is not None
            and state.seconds_since_start >= self.give_up_after_s
        ):
            return True
        # A Retry-After beyond our cap on one wait: hand the file back to the journal, which
        # honours it, rather than holding a worker hostage.
        retry_after, token = _retry_after(state)
        return not token and retry_after is not None and retry_after > self.max_delay_s

    def _before_sleep(
        self,
        state: tenacity.RetryCallState,
        context: dict[str, object],
        progress: Progress | None,
    ) -> None:
        self.on_retry()
        log.info(
            "submission.retry_scheduled",
            attempt=state.attempt_number,
            wait_s=round(state.upcoming_sleep, 3),
            error=str(state.outcome.exception()) if state.outcome else None,
            **context,
        )
        if progress is not None:
            progress(
                f"waiting {state.upcoming_sleep:.0f}s before attempt "
                f"{state.attempt_number + 1}",
                state.upcoming_sleep,
            )

    def call(
        self,
        fn: Callable[[], T],
        *,
        progress: Progress | None = None,
        **context: object,
    ) -> tuple[T, int]:
        """Run `fn`, retrying TransientApiError with full-jitter backoff; return its value and attempts.

        The last error is re-raised with `attempts` set on it. `progress` hears of each wait
        before it starts: a backoff of up to `max_delay_s` is progress, not a stall.
        """
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientApiError),
            stop=self._stop,
            wait=self._wait,
            sleep=self.sleep,
            before_sleep=lambda state: self._before_sleep(state, context, progress),
            reraise=True,
        )
        try:
            value = retrying(fn)
        except ApiError as exc:
            exc.attempts = int(retrying.statistics.get("attempt_number", 1))
            raise
        return value, int(retrying.statistics.get("attempt_number", 1))
