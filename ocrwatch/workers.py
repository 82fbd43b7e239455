"""The worker pool: threads that claim due jobs from the journal and hand them to the submitter.

Workers wake when the daemon queues work or when the next retry falls due. While the token
endpoint refuses the credentials, nobody claims anything: files stay queued, none is failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

import structlog

from ocrwatch.journal import Job, Journal
from ocrwatch.submitter import Outcome, Result, Submitter

log = structlog.get_logger()

IDLE_WAIT_S: Final = 1.0
AUTH_RETRY_S: Final = 60.0
JOURNAL_ERROR_BACKOFF_S: Final = 5.0


class WorkerPool:
    def __init__(
        self,
        journal: Journal,
        size: int,
        submitter: Callable[[], Submitter],
        profile_for: Callable[[Job], str | None],
        on_result: Callable[[Result], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._journal = journal
        self._size = size
        self._submitter = submitter
        self._profile_for = profile_for
        self._on_result = on_result
        self._clock = clock
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._paused_until = 0.0
        self._busy = 0
        self._generation = (
            0  # bumped by wake(), so a wake between claim and wait is not lost
        )
        self._busy_lock = threading.Lock()

    def start(self) -> None:
        for i in range(self._size):
            thread = threading.Thread(target=self._run, name=f"worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        with self._wake:
            self._generation += 1
            self._wake.notify_all()

    def resume_auth(self) -> None:
        """New credentials were loaded: stop waiting out the last refusal."""
        self._paused_until = 0.0
        self.wake()

    @property
    def paused(self) -> bool:
        return self._clock() < self._paused_until

    @property
    def busy(self) -> int:
        with self._busy_lock:
            return self._busy

    def stop(self, timeout_s: float) -> bool:
        """Stop claiming; let uploads in flight finish within `timeout_s`. True if all finished."""
        self._stopping.set()
        self.wake()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception:  # a worker that dies silently shrinks the pool for months
                # The journal (disk full, I/O error) or a bug: say so, back off, keep serving.
                # A claimed job stays `submitting` and is resumed at the next start.
                log.exception("worker.failed", retry_in_s=JOURNAL_ERROR_BACKOFF_S)
                self._stopping.wait(JOURNAL_ERROR_BACKOFF_S)

    def _step(self) -> None:
        generation = self._generation
        job = None if self.paused else self._journal.claim(self._clock())
        if job is None:
            self._idle(generation)
            return
        with self._busy_lock:
            self._busy += 1
        try:
            self._process(job)
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _process(self, job: Job) -> None:
        profile = self._profile_for(job)
        if profile is None:
            self._journal.release(
                job.path,
                now=self._clock(),
                not_before=self._clock() + 3600,
                reason="its folder is no longer configured",
            )
            return
        result = self._submitter().process_one(job, profile)
        if result.outcome is Outcome.AUTH:
            wait = (
                result.retry_after_s
                if result.retry_after_s is not None
                else AUTH_RETRY_S
            )
            with (
                self._busy_lock
            ):  # several workers may hit the refusal at once: one log line
                was_paused = self.paused
                self._paused_until = max(
                    self._paused_until, self._clock() + min(wait, AUTH_RETRY_S * 10)
                )
            if not was_paused:
                log.error(
                    "auth.refused",
                    error=result.error,
                    retry_in_s=round(wait),
                    queued_files_kept=True,
                )
        self._on_result(result)

    def _idle(self, generation: int) -> None:
        now = self._clock()
        if self.paused:
            wait = self._paused_until - now
        else:
            wait = self._journal.next_due_at() - now
        with self._wake:
            if not self._stopping.is_set() and generation == self._generation:
                self._wake.wait(timeout=max(0.01, min(IDLE_WAIT_S, wait)))
