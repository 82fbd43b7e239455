"""The job loop: a claimed file, end to end, in `api.concurrency` threads.

`JobLoop.process()` takes one claimed job through settings -> upload -> sidecar -> journal. It is
the one place that writes a sidecar and the one place that records how a job ended, and it never
raises for a problem with a file. Around it, each thread only claims, waits and stops; every wait
ends on `stop()`. What a job needs from the config comes in one immutable `Runtime`, which a
reload swaps between jobs: a job in flight finishes with the runtime it started with.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

import structlog

from ocrwatch.client import Submission
from ocrwatch.errors import (
    AuthError,
    ConfigError,
    FileChangedError,
    JournalError,
    RejectedError,
    SidecarError,
    TransientApiError,
)
from ocrwatch.journal import Job, Journal
from ocrwatch.preflight import Receipt, content_key, current_receipt, inspect
from ocrwatch.retry import next_attempt_at
from ocrwatch.runtime import AUTH_RETRY_S, Runtime
from ocrwatch.settle import Look
from ocrwatch.sidecar import (
    Kind,
    read_guid,
    sidecar_path,
    why_unwritable,
    write_sidecar,
)

log = structlog.get_logger()

IDLE_WAIT_S: Final = 1.0
# Never later than ten minutes: the token endpoint's own lockout after refused credentials.
AUTH_PAUSE_MAX_S: Final = 600.0
JOURNAL_ERROR_BACKOFF_S: Final = 5.0
UNCONFIGURED_RETRY_S: Final = 3600.0
INCOMPLETE_RECHECK_MAX_S: Final = 60.0
# How long a file waits for the GUID of a twin that is on the wire before it is queued again.
TWIN_WAIT_S: Final = 30.0
TWIN_POLL_S: Final = 0.1


class Outcome(StrEnum):
    SUBMITTED = "submitted"
    DEDUPLICATED = (
        "deduplicated"  # the same content was accepted lately: its GUID, no upload
    )
    ADOPTED = "adopted"  # a current .guid was there already (a copy, a move): no upload
    INCOMPLETE = "incomplete"  # not a whole image yet: wait for the rest
    REJECTED = "rejected"
    RETRY = "retry"  # transient trouble outlasted the client's retries: try later
    UNSETTLED = "unsettled"  # it changed since it settled, or while it was sent
    GONE = "gone"  # deleted before it could be sent
    AUTH = "auth"  # credentials refused: uploads pause, nothing is failed
    HELD = "held"  # its .ocrwatch.yaml is invalid
    UNCONFIGURED = "unconfigured"  # its folder is no longer in the config


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    error: str | None = None
    guid: str | None = None


def look_at(path: Path) -> Look | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return Look(st.st_size, st.st_mtime_ns)


def restore_guid(path: Path, guid: str) -> None:
    """Write back the `.guid` of a submitted, unchanged file that lost it (the catch-up scan)."""
    try:
        write_sidecar(path, Kind.GUID, guid)
    except SidecarError as exc:
        log.error("sidecar.restore_failed", path=str(path), guid=guid, error=str(exc))
        return
    log.info("sidecar.restored", path=str(path), guid=guid)


class JobLoop:
    """Threads that claim due jobs from the journal and process them, one at a time each."""

    def __init__(
        self,
        journal: Journal,
        runtime: Runtime,
        *,
        clock: Callable[[], float] = time.time,
        one_shot: bool = False,
    ) -> None:
        self._journal = journal
        self._runtime = runtime
        self._clock = clock
        self._one_shot = (
            one_shot  # `submit`: report a file that is not ready, do not wait
        )
        # Guards everything below; waited on by idle threads, notified by wake/resize/stop.
        self._cond = threading.Condition()
        # Bumped by wake(): a wake between a claim and the wait that follows is kept.
        self._generation = 0
        self._size = 0
        self._stopping = False
        self._threads: dict[int, threading.Thread] = {}
        self._in_flight: set[Path] = set()
        self._paused_until = 0.0
        self._held_logged: set[Path] = set()
        # Held from a claim until its job is in `_in_flight`, so that `resume_orphans` never
        # takes a row that a thread has just claimed for one of this process's orphans.
        self._claim_lock = threading.Lock()

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @property
    def workers(self) -> int:
        with self._cond:
            return len(self._threads)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._in_flight)

    @property
    def paused(self) -> bool:
        """Uploads wait out refused credentials."""
        return self._clock() < self._paused_until

    def start(self) -> None:
        self.resize(self._runtime.config.api.concurrency)

    def swap(self, runtime: Runtime) -> None:
        """Use `runtime` for every job claimed from now on (a reload), with its concurrency.

        New credentials deserve a try at once, so an auth pause ends here.
        """
        with self._cond:
            self._runtime = runtime
            self._paused_until = 0.0
            started = self._size > 0
        if started:
            self.resize(runtime.config.api.concurrency)
        self.wake()

    def resize(self, size: int) -> None:
        """Run `size` threads: start the missing ones; surplus ones end after their job."""
        with self._cond:
            if self._stopping:
                return
            self._size = size
            for slot in range(size):
                if slot not in self._threads:
                    thread = threading.Thread(
                        target=self._work, args=(slot,), name=f"job-{slot}", daemon=True
                    )
                    self._threads[slot] = thread
                    thread.start()
            self._cond.notify_all()

    def wake(self) -> None:
        """Jobs were queued: idle threads claim now instead of at their next timeout."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def stop(self, timeout_s: float) -> bool:
        """Claim nothing more; give jobs in flight `timeout_s` to finish. True if all did."""
        with self._cond:
            self._stopping = True
            threads = list(self._threads.values())
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def step(self) -> Result | None:
        """Claim the next due job and process it; None if none is due or uploads are paused."""
        now = self._clock()
        if now < self._paused_until:
            return None
        with self._claim_lock:
            job = self._journal.claim(now)
            if job is not None:
                self._begin(job)
        return None if job is None else self.process(job)

    def resume_orphans(self) -> int:
        """Queue again the rows that a process that is gone left `submitting`, and this
        process's own whose outcome could not be recorded (the journal failed meanwhile)."""
        with self._claim_lock:
            with self._cond:
                in_flight = set(self._in_flight)
            return self._journal.resume(self._clock(), in_flight=in_flight)

    def _begin(self, job: Job) -> None:
        with self._cond:
            self._in_flight.add(job.path)

    def process(self, job: Job) -> Result:
        """Take a claimed job to its end: sent and recorded, or back in the queue with a reason.

        Raises only JournalError: when the journal cannot record anything, no outcome can be
        kept; the row stays claimed until `resume_orphans` puts it back.
        """
        runtime = self._runtime  # this job's, whatever a reload does meanwhile
        self._begin(job)
        try:
            return self._process(job, runtime)
        except JournalError:
            raise
        except Exception as exc:  # a bug on one file must not end a worker
            log.exception("job.crashed", path=str(job.path))
            return self._retry_later(
                job, f"internal error: {type(exc).__name__}: {exc}"
            )
        finally:
            with self._cond:
                self._in_flight.discard(job.path)

    def _work(self, slot: int) -> None:
        while True:
            with self._cond:
                if self._stopping or slot >= self._size:
                    del self._threads[slot]
                    return
                generation = self._generation
            try:
                if self.step() is None:
                    self._idle(generation)
            except Exception:  # a worker that dies silently shrinks the pool for months
                # The journal (disk full, I/O error) or a bug: say so, back off, keep serving.
                # A claimed job stays `submitting` until `resume_orphans` puts it back.
                log.exception("worker.failed", retry_in_s=JOURNAL_ERROR_BACKOFF_S)
                self._pause_worker(JOURNAL_ERROR_BACKOFF_S)

    def _idle(self, generation: int) -> None:
        now = self._clock()
        due = (
            self._paused_until
            if now < self._paused_until
            else self._journal.next_due_at()
        )
        with self._cond:
            if not self._stopping and generation == self._generation:
                self._cond.wait(timeout=max(0.01, min(IDLE_WAIT_S, due - now)))

    def _pause_worker(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._stopping and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)

    def _process(self, job: Job, runtime: Runtime) -> Result:
        started = time.monotonic()
        profile = runtime.profile_for(job)
        if profile is None:
            return self._unconfigured(job)
        look = look_at(job.path)
        if look is None:
            if not os.path.lexists(job.path):
                return self._gone(job)
        elif look != Look(job.size, job.mtime_ns):
            return self._unsettled(job, look, runtime, "it changed after it settled")
        elif (receipt := current_receipt(job.path, look)) is not None:
            return self._already_done(job, look, receipt)
        try:
            resolved = runtime.book.resolve_for(job.path, job.root, profile)
        except ConfigError as exc:
            return self._hold(job, str(exc))
        if (why := why_unwritable(job.path)) is not None:
            return self._hold(job, why, once_per=job.path.parent)
        key = content_key(resolved.settings, runtime.client.trial)
        if look is not None and (early := self._before_upload(job, look, key, runtime)):
            return early
        try:
            submission = runtime.client.submit(job.path, resolved.settings)
        except RejectedError as exc:
            return self._reject(job, str(exc), runtime)
        except FileChangedError as exc:
            look = look_at(job.path)
            if look is None and not os.path.lexists(job.path):
                return self._gone(job)
            return self._unsettled(job, look or Look(0, 0), runtime, str(exc))
        except AuthError as exc:
            return self._pause(job, exc, runtime)
        except TransientApiError as exc:
            return self._retry_later(job, str(exc), exc.retry_after_s, exc.attempts)
        if submission.changed is not None:
            return self._changed_after_upload(job, submission, key, runtime)
        return self._submitted(job, resolved.profile, submission, key, runtime, started)

    def _before_upload(
        self, job: Job, look: Look, key: str, runtime: Runtime
    ) -> Result | None:
        """Not a whole image yet, or content the service already has: no upload."""
        window = runtime.config.dedupe_window
        seen = inspect(job.path, want_sha256=window > 0)
        if seen.incomplete is not None:
            return self._incomplete(job, look, seen.incomplete, runtime)
        if seen.sha256 is None:
            return None
        deadline = time.monotonic() + TWIN_WAIT_S
        while True:
            since = self._clock() - window
            found = self._journal.find_accepted(seen.sha256, key, since)
            if found is not None:
                return self._deduplicated(job, look, seen.sha256, key, found, runtime)
            if self._journal.mark_content(job.path, seen.sha256, key, since=since):
                return None  # nobody has sent or is sending this content: send it
            # A twin (a copy, the same file under another name) is on the wire: its GUID
            # will do for this one too.
            if time.monotonic() > deadline or self._wait_a_little():
                why = "the same content is being sent as another file"
                return self._unsettled(job, look, runtime, why)

    def _wait_a_little(self) -> bool:
        """Wait TWIN_POLL_S, or less if the loop stops; True if it stops."""
        with self._cond:
            if not self._stopping:
                self._cond.wait(TWIN_POLL_S)
            return self._stopping

    def _submitted(
        self,
        job: Job,
        profile: str,
        sub: Submission,
        key: str,
        runtime: Runtime,
        started: float,
    ) -> Result:
        self._write_guid(job, sub.guid, runtime)
        self._record_upload(job, sub, key)
        log.info(
            "job.submitted",
            path=str(job.path),
            profile=profile,
            guid=sub.guid,
            attempts=sub.attempts,
            bytes=sub.size,
            image_type=sub.image_type,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return Result(Outcome.SUBMITTED, guid=sub.guid)

    def _write_guid(self, job: Job, guid: str, runtime: Runtime) -> None:
        try:
            write_sidecar(job.path, Kind.GUID, guid, staging=runtime.staging)
        except SidecarError as exc:
            # The task exists and is billed: it is recorded all the same and not sent again;
            # the next scan writes the `.guid` from the journal once it can.
            log.error(
                "sidecar.write_failed", path=str(job.path), guid=guid, error=str(exc)
            )

    def _record_upload(self, job: Job, sub: Submission, key: str) -> None:
        """The service accepted this content with these settings now: a source for dedupe."""
        now = self._clock()
        self._journal.mark_submitted(
            job.path,
            guid=sub.guid,
            sha256=sub.sha256,
            size=sub.size,
            mtime_ns=sub.mtime_ns,
            now=now,
            settings_key=key,
            accepted_at=now,
        )

    def _already_done(self, job: Job, look: Look, receipt: Receipt) -> Result:
        """Its sidecar is current (a copied tree, a folder moved with its sidecars): the
        sidecar is the receipt; record it and send nothing."""
        now = self._clock()
        if receipt.kind is Kind.GUID:
            self._journal.mark_submitted(
                job.path,
                guid=receipt.text,
                sha256=None,
                size=look.size,
                mtime_ns=look.mtime_ns,
                now=now,
            )
            log.info("job.sidecar_current", path=str(job.path), guid=receipt.text)
            return Result(Outcome.ADOPTED, guid=receipt.text)
        self._journal.mark_rejected(
            job.path,
            reason=receipt.text,
            size=look.size,
            mtime_ns=look.mtime_ns,
            now=now,
        )
        log.info("job.sidecar_current", path=str(job.path), error=receipt.text)
        return Result(Outcome.REJECTED, receipt.text)

    def _deduplicated(
        self,
        job: Job,
        look: Look,
        sha256: str,
        key: str,
        found: tuple[Path, str, float],
        runtime: Runtime,
    ) -> Result:
        """The service accepted this content with these settings lately: reuse its GUID."""
        source, guid, accepted_at = found
        self._write_guid(job, guid, runtime)
        self._journal.mark_submitted(
            job.path,
            guid=guid,
            sha256=sha256,
            size=look.size,
            mtime_ns=look.mtime_ns,
            now=self._clock(),
            settings_key=key,
            accepted_at=accepted_at,
        )
        log.info("job.deduplicated", path=str(job.path), same_as=str(source), guid=guid)
        # This content under a name that is gone (it was renamed or moved to this one).
        for other, other_guid in self._journal.same_content(
            sha256, key, besides=job.path
        ):
            if not os.path.lexists(other):
                self._remove_orphan(other, other_guid)
        return Result(Outcome.DEDUPLICATED, guid=guid)

    def _remove_orphan(self, source: Path, guid: str) -> None:
        """A file moved or renamed: the `.guid` it left behind goes, if it is the one ocrwatch
        wrote (the journal's GUID for that path); its row goes with it."""
        if read_guid(source) == guid:
            with contextlib.suppress(OSError):
                sidecar_path(source, Kind.GUID).unlink()
                log.info("sidecar.orphan_removed", path=str(source), guid=guid)
        self._journal.forget(source)

    def _changed_after_upload(
        self, job: Job, sub: Submission, key: str, runtime: Runtime
    ) -> Result:
        """The service took the file, but it changed or went away meanwhile.

        Gone (renamed, moved): the task is recorded under the old path, without a sidecar, so
        that the file under its new name reuses its GUID instead of being paid for again.
        Changed: no sidecar may claim the new content; it settles and is sent again.
        """
        if os.path.lexists(job.path):
            look = look_at(job.path) or Look(0, 0)
            log.warning("job.changed_after_upload", path=str(job.path), guid=sub.guid)
            return self._unsettled(job, look, runtime, str(sub.changed))
        self._record_upload(job, sub, key)
        log.warning("job.gone_after_upload", path=str(job.path), guid=sub.guid)
        return Result(Outcome.GONE, str(sub.changed), guid=sub.guid)

    def _incomplete(self, job: Job, look: Look, why: str, runtime: Runtime) -> Result:
        """Not whole yet: wait for the rest, up to incomplete_timeout of quiet, then `.error`.

        `submit` does not wait: the file gets its `.error` at once. Either way, the rest
        arriving later changes the file, which is then sent, and its `.guid` replaces that.
        """
        now = self._clock()
        quiet_s = max(0.0, now - look.mtime_ns / 1e9)
        timeout = runtime.config.incomplete_timeout
        if self._one_shot:
            return self._reject(job, f"{why}; not sent", runtime)
        if quiet_s >= timeout:
            waited = f"nothing more was written for {quiet_s / 60:.0f} min"
            return self._reject(job, f"{why}; {waited}, so it was not sent", runtime)
        # Look again sooner while it is fresh, and right at the timeout at the latest.
        wait = max(
            runtime.settle_s(job.root), min(INCOMPLETE_RECHECK_MAX_S, quiet_s / 2)
        )
        not_before = min(now + wait, look.mtime_ns / 1e9 + timeout)
        reason = f"waiting for the rest of the file: {why}"
        self._journal.release(job, now=now, not_before=not_before, reason=reason)
        log.info("job.incomplete", path=str(job.path), error=why)
        return Result(Outcome.INCOMPLETE, why)

    def _reject(self, job: Job, reason: str, runtime: Runtime) -> Result:
        try:
            write_sidecar(job.path, Kind.ERROR, reason, staging=runtime.staging)
        except SidecarError as exc:
            log.error("sidecar.write_failed", path=str(job.path), error=str(exc))
            return self._retry_later(job, f"{reason} (and {exc})")
        look = look_at(job.path) or Look(job.size, job.mtime_ns)
        self._journal.mark_rejected(
            job.path,
            reason=reason,
            size=look.size,
            mtime_ns=look.mtime_ns,
            now=self._clock(),
        )
        log.warning("job.rejected", path=str(job.path), error=reason)
        return Result(Outcome.REJECTED, reason)

    def _retry_later(
        self,
        job: Job,
        error: str,
        retry_after_s: float | None = None,
        attempts: int = 1,
    ) -> Result:
        now = self._clock()
        when = next_attempt_at(job.attempts + 1, now, retry_after_s)
        self._journal.mark_failed(job.path, error=error, next_attempt_at=when, now=now)
        log.warning(
            "job.retry_later",
            path=str(job.path),
            error=error,
            wait_s=round(when - now, 1),
            attempts=job.attempts + 1,
            tries_this_round=attempts,
        )
        return Result(Outcome.RETRY, error)

    def _unsettled(self, job: Job, look: Look, runtime: Runtime, why: str) -> Result:
        """Back to the queue with how it looks now, to be claimed once it stayed so a while."""
        now = self._clock()
        changed = Job(job.path, job.root, look.size, look.mtime_ns)
        not_before = now + runtime.settle_s(job.root)
        self._journal.release(changed, now=now, not_before=not_before, reason=why)
        log.info("job.changed", path=str(job.path), error=why)
        return Result(Outcome.UNSETTLED, why)

    def _gone(self, job: Job) -> Result:
        self._journal.forget(job.path)
        log.info("job.gone", path=str(job.path))
        return Result(Outcome.GONE, "the file disappeared before it could be read")

    def _hold(self, job: Job, reason: str, *, once_per: Path | None = None) -> Result:
        """Keep the file queued but unclaimable, with the reason, until its folder is looked at
        again. `once_per`: log only the first such file of this folder (every rescan looks)."""
        self._journal.hold(job.path, reason=f"held: {reason}", now=self._clock())
        with self._cond:
            logged = once_per in self._held_logged
            if once_per is not None:
                self._held_logged.add(once_per)
        if not logged:
            log.error("job.held", path=str(job.path), error=reason)
        return Result(Outcome.HELD, reason)

    def _unconfigured(self, job: Job) -> Result:
        reason = "its folder is no longer in the config"
        now = self._clock()
        self._journal.release(
            job, now=now, not_before=now + UNCONFIGURED_RETRY_S, reason=reason
        )
        return Result(Outcome.UNCONFIGURED, reason)

    def _pause(self, job: Job, exc: AuthError, runtime: Runtime) -> Result:
        """Refused credentials: this file back to the queue, and every upload waits.

        Not if the refusal was of credentials a reload has replaced meanwhile.
        """
        now = self._clock()
        self._journal.release(job, now=now, reason=str(exc))
        wait = min(
            AUTH_RETRY_S if exc.retry_after_s is None else exc.retry_after_s,
            AUTH_PAUSE_MAX_S,
        )
        with self._cond:
            current = runtime is self._runtime
            was_paused = now < self._paused_until
            if current:
                self._paused_until = max(self._paused_until, now + wait)
        if current and not was_paused:  # several workers may meet it at once: one line
            log.error(
                "auth.refused",
                error=str(exc),
                retry_in_s=round(wait),
                queued_files_kept=True,
            )
        return Result(Outcome.AUTH, str(exc))
