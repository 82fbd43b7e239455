"""What systemd hears from `ocrwatch run`: ready, reloading, stopping, a status line, and
watchdog pings that are only sent while the daemon is healthy.

The main loop calls `ServiceNotices.tick()` every turn; a wedged main loop therefore stops the
pings by itself, and a wedged worker or a dead observer stops them through `problems`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

import structlog

from ocrwatch.notify import Notifier

log = structlog.get_logger()

# A status line costs two journal queries, so it is refreshed now and then, not every tick.
STATUS_EVERY_S: Final = 5.0


def status_text(
    counts: Mapping[str, int] | None,
    held: int,
    in_flight: int,
    *,
    paused: bool = False,
    problems: Sequence[str] = (),
    journal_error: str | None = None,
) -> str:
    """The one line `systemctl status` shows under the unit."""
    if counts is None:
        text = f"in flight {in_flight}; journal unusable: {journal_error}"
    else:
        text = (
            f"queued {counts.get('queued', 0)}, in flight {in_flight}, "
            f"submitted {counts.get('submitted', 0)}, fetching {counts.get('fetching', 0)}, "
            f"completed {counts.get('completed', 0)}, failed {counts.get('failed', 0)}, "
            f"rejected {counts.get('rejected', 0)}, held {held}"
        )
    if paused:
        text += "; uploads paused"
    if problems:
        text += "; watchdog withheld: " + "; ".join(problems)
    return text


class ServiceNotices:
    """Readiness, status and watchdog pings for systemd, on the main loop's schedule."""

    def __init__(
        self, notifier: Notifier, *, status_every_s: float = STATUS_EVERY_S
    ) -> None:
        self.notifier = notifier
        self._status_every_s = status_every_s
        self._next_ping = 0.0
        self._next_status = 0.0
        self._withheld: tuple[str, ...] = ()
        self._last_status: str | None = None

    def ping_due(self, now: float) -> bool:
        return self.notifier.ping_every_s is not None and now >= self._next_ping

    def ready(self, now: float, status: Callable[[], str]) -> None:
        """Started, or done reloading (whether the new config was taken or not)."""
        if not self.notifier.enabled:
            return  # `status` costs journal queries: only for someone who listens
        text = status()
        self.notifier.ready(text)
        self._last_status = text
        self._next_status = now + self._status_every_s

    def reloading(self) -> None:
        self.notifier.reloading("reloading the config")

    def stopping(self, status: str) -> None:
        self.notifier.stopping(status)

    def close(self) -> None:
        self.notifier.close()

    def tick(
        self,
        now: float,
        problems: Callable[[], tuple[str, ...]],
        status: Callable[[], str],
    ) -> None:
        """Ping if one is due and nothing is wrong; refresh the status line if that is due."""
        if not self.notifier.enabled:
            return
        every = self.notifier.ping_every_s
        if every is not None and now >= self._next_ping:
            self._next_ping = now + every
            self._ping_unless(problems())
        if now >= self._next_status:
            self._next_status = now + self._status_every_s
            text = status()
            if text != self._last_status:  # `systemctl status` keeps the last one
                self.notifier.status(text)
                self._last_status = text

    def _ping_unless(self, problems: tuple[str, ...]) -> None:
        if problems:
            if not self._withheld:  # said once, however long it lasts
                log.error(
                    "watchdog.withheld",
                    reason="; ".join(problems),
                    note="systemd restarts the service once WatchdogSec passes",
                )
            self._withheld = problems
            return
        if self._withheld:
            log.info("watchdog.resumed", after="; ".join(self._withheld))
            self._withheld = ()
        self.notifier.watchdog()
