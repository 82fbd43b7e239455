"""One look at a submitted file's task: ask the service, then record what its answer means.

`taskpoll.decide` makes the decision; `outcome.Recorder` writes the results or the `.error` and
moves the row on. The job loop's threads claim due polls from the journal like uploads, so polls
in flight are bounded by `api.concurrency`, and `ocrwatch fetch` uses the same step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import structlog

from ocrwatch.errors import ConfigError, JournalError, OcrwatchError
from ocrwatch.hooks import HookRunner, hook_call
from ocrwatch.journal import Poll
from ocrwatch.metrics import Metrics
from ocrwatch.outcome import Outcome, Recorder, Result, look_at
from ocrwatch.runtime import Runtime
from ocrwatch.settle import Look
from ocrwatch.taskpoll import Next, again, decide

log = structlog.get_logger()

Progress = Callable[[str, float], None]


def is_missing(path: Path) -> bool:
    """Gone for sure: no such name. A share's EIO, ESTALE or EACCES is not "gone": the
    task is asked about again later, and its result kept for the file."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


class Fetcher:
    """Polls tasks for the job loop (or `fetch`) and starts `on_complete` hooks."""

    def __init__(
        self,
        recorder: Recorder,
        hooks: HookRunner,
        *,
        clock: Callable[[], float],
        metrics: Metrics,
    ) -> None:
        self._recorder = recorder
        self._hooks = hooks
        self._clock = clock
        self._metrics = metrics

    def poll(self, poll: Poll, runtime: Runtime, progress: Progress) -> Result:
        """Ask about `poll`'s task once and record the answer. Raises only JournalError."""
        rec = self._recorder
        look = look_at(poll.path)
        if look is None and is_missing(poll.path):
            return rec.gone_while_fetching(poll, runtime)
        if look is not None and look != Look(poll.size, poll.mtime_ns):
            # Changed since it was sent, and not queued again yet: no stale result for it.
            return rec.changed_while_fetching(poll, look, runtime)
        self._metrics.polled()
        try:
            task = runtime.client.fetch_result(
                poll.guid, pdf=poll.pdf, progress=progress
            )
        except JournalError:
            raise
        except OcrwatchError as exc:
            # Transient trouble, refused credentials, an odd answer: no word about the task,
            # so the next poll asks again. fetch_timeout is for a service that answers "not
            # yet"; an outage never turns a billed task into an `.error` (past the deadline
            # it is asked every max_s until the service answers).
            now = self._clock()
            decision = again(poll.polls, poll.deadline, poll.fetch_s, now, runtime.poll)
            at = (
                decision.at if decision.next is Next.AGAIN else now + runtime.poll.max_s
            )
            log.info("poll.failed", path=str(poll.path), guid=poll.guid, error=str(exc))
            return rec.poll_again(poll, at, str(exc))
        decision = decide(
            task.status,
            messages=task.messages,
            polls=poll.polls,
            resubmits=poll.resubmits,
            refetch=poll.refetch,
            deadline=poll.deadline,
            timeout_s=poll.fetch_s,
            now=self._clock(),
            schedule=runtime.poll,
        )
        if decision.next is Next.WRITE:
            result = rec.completed(poll, task, runtime)
            if result.outcome is Outcome.COMPLETED:
                self._start_hook(poll, result, runtime)
            return result
        if decision.next is Next.AGAIN:
            return rec.poll_again(poll, decision.at)
        if decision.next is Next.RESUBMIT:
            return rec.resubmitted(poll, decision.reason)
        refetch = decision.next is Next.TIMEOUT
        return rec.fetch_failed(poll, decision.reason, runtime, refetch=refetch)

    def _start_hook(self, poll: Poll, result: Result, runtime: Runtime) -> None:
        """The hook of the file's effective profile (its `.ocrwatch.yaml` files applied, as
        at the upload), not merely its folder's."""
        profile = runtime.profile_for(poll.job)
        if profile is None:
            return
        try:
            resolved = runtime.book.resolve_for(poll.path, poll.root, profile)
        except (ConfigError, KeyError):
            return  # its profile left the config, or an override went bad: no hook to run
        policy = resolved.fetch
        if policy.on_complete:
            self._hooks.start(
                hook_call(
                    policy.on_complete,
                    poll.path,
                    poll.guid,
                    result.files,
                    policy.on_complete_timeout_s,
                    resolved.profile,
                )
            )
