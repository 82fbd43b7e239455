"""How a job ended, made durable: the one place that writes sidecars and records journal states.

Each method takes a claimed job to one outcome: the journal row and the sidecar (the receipt;
written even when the journal cannot be), then one log line that carries the whole story. The
job loop decides which outcome applies; nothing else writes a `.guid`/`.error` or moves a row out of `submitting`.
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

from ocrwatch.client import Submission, TaskResult
from ocrwatch.errors import JournalError, SidecarError
from ocrwatch.journal import Fetch, Job, Journal, Poll
from ocrwatch.metrics import Metrics
from ocrwatch.preflight import Receipt
from ocrwatch.results import write_results, written_signature
from ocrwatch.retry import next_attempt_at
from ocrwatch.runtime import Runtime
from ocrwatch.settings import shorten
from ocrwatch.settle import Look
from ocrwatch.sidecar import (
    NO_ERROR_NOTE,
    Kind,
    read_guid,
    sidecar_path,
    write_sidecar,
)
from ocrwatch.upkeep import has_entries

log = structlog.get_logger()

UNCONFIGURED_RETRY_S: Final = 3600.0
INCOMPLETE_RECHECK_MAX_S: Final = 60.0
REASON_MAX: Final = 400


class Outcome(StrEnum):
    SUBMITTED = "submitted"
    # the same content was accepted lately: its GUID, no upload
    DEDUPLICATED = "deduplicated"
    ADOPTED = "adopted"  # a current .guid was there already (a copy, a move): no upload
    INCOMPLETE = "incomplete"  # not a whole image yet: wait for the rest
    REJECTED = "rejected"
    RETRY = "retry"  # transient trouble outlasted the client's retries: try later
    UNSETTLED = "unsettled"  # it changed since it settled, or while it was sent
    GONE = "gone"  # deleted before it could be sent
    AUTH = "auth"  # credentials refused: uploads pause, nothing is failed
    HELD = "held"  # its .ocrwatch.yaml is invalid, or its sidecar could not be written
    UNCONFIGURED = "unconfigured"  # its folder is no longer in the config
    FETCHING = "fetching"  # its result is not ready yet: polled again later
    COMPLETED = "completed"  # its result files are written
    RESUBMITTED = "resubmitted"  # the service lost the task: queued for one more upload


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    error: str | None = None
    guid: str | None = None
    files: tuple[Path, ...] = ()  # result files written (COMPLETED)


def look_at(path: Path) -> Look | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return Look(st.st_size, st.st_mtime_ns)


def _remove(files: tuple[Path, ...]) -> None:
    """Results just written for content the file no longer has."""
    for path in files:
        with contextlib.suppress(OSError):
            path.unlink()


def restore_guid(path: Path, guid: str) -> None:
    """Write back the `.guid` of a submitted, unchanged file that lost it (the catch-up scan)."""
    try:
        write_sidecar(path, Kind.GUID, guid)
    except SidecarError as exc:
        log.error("sidecar.restore_failed", path=str(path), guid=guid, error=str(exc))
        return
    log.info("sidecar.restored", path=str(path), guid=guid)


def remove_stale_guid(path: Path, guid: str) -> None:
    """Remove a `.guid` the journal shows ocrwatch wrote for content the file no longer has."""
    if read_guid(path) == guid:
        with contextlib.suppress(OSError):
            sidecar_path(path, Kind.GUID).unlink()
            log.info("sidecar.stale_removed", path=str(path), guid=guid)


class Recorder:
    """Records outcomes for the job loop; safe to share between its threads."""

    def __init__(
        self,
        journal: Journal,
        *,
        clock: Callable[[], float] = time.time,
        one_shot: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._metrics = metrics or Metrics()
        # `submit`: report a file that is not ready, do not wait.
        self._one_shot = one_shot
        self._held_logged: set[object] = set()
        self._lock = threading.Lock()

    def submitted(
        self,
        job: Job,
        profile: str,
        sub: Submission,
        key: str,
        runtime: Runtime,
        started: float,
        fetch: Fetch | None = None,
    ) -> Result:
        # The journal first: a crash before the sidecar is written leaves a row the next scan
        # restores the `.guid` from, and the journal then knows every GUID a sidecar holds
        # (what lets a renamed file's `.guid` be cleaned up). If the journal cannot take it,
        # the sidecar is written all the same: it is the receipt.
        try:
            self.record_upload(job, sub, key, fetch)
        except JournalError:
            self._write_guid(job, sub.guid, runtime)
            raise
        self._write_guid(job, sub.guid, runtime)
        log.info(
            "job.submitted",
            path=str(job.path),
            profile=profile,
            guid=sub.guid,
            attempts=sub.attempts,
            bytes=sub.size,
            image_type=sub.image_type,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            fetching=fetch is not None,
        )
        return Result(Outcome.SUBMITTED, guid=sub.guid)

    def record_upload(
        self, job: Job, sub: Submission, key: str, fetch: Fetch | None = None
    ) -> None:
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
            fetch=fetch,
        )

    def adopted(
        self, job: Job, look: Look, receipt: Receipt, fetch: Fetch | None = None
    ) -> Result:
        """Its sidecar is current (a copied tree, a folder moved with its sidecars): the
        sidecar is the receipt; record it and send nothing. With `fetch`, its result is
        fetched (a file moved with its `.guid` while it was waited for)."""
        now = self._clock()
        if receipt.kind is Kind.GUID:
            self._journal.mark_adopted(
                job.path,
                guid=receipt.text,
                size=look.size,
                mtime_ns=look.mtime_ns,
                now=now,
                fetch=fetch,
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

    def deduplicated(
        self,
        job: Job,
        look: Look,
        sha256: str,
        key: str,
        found: tuple[Path, str, float],
        runtime: Runtime,
        fetch: Fetch | None = None,
    ) -> Result:
        """The service accepted this content with these settings lately: reuse its GUID."""
        source, guid, accepted_at = found
        now = look_at(job.path)
        if now != look:  # rewritten while it waited for a twin
            return self.unsettled(job, now or Look(0, 0), runtime, "it changed")
        self._journal.mark_submitted(
            job.path,
            guid=guid,
            sha256=sha256,
            size=look.size,
            mtime_ns=look.mtime_ns,
            now=self._clock(),
            settings_key=key,
            accepted_at=accepted_at,
            fetch=fetch,  # the results of the same task, for this name
        )
        self._write_guid(job, guid, runtime)
        self._metrics.deduplicated()
        log.info("job.deduplicated", path=str(job.path), same_as=str(source), guid=guid)
        # This content under a name that is gone (it was renamed or moved to this one).
        for other, other_guid in self._journal.same_content(
            sha256, key, besides=job.path
        ):
            if not os.path.lexists(other):
                remove_stale_guid(other, other_guid)
                self._journal.forget(other)
        return Result(Outcome.DEDUPLICATED, guid=guid)

    def changed_after_upload(
        self,
        job: Job,
        profile: str,
        sub: Submission,
        key: str,
        now_sha256: str | None,
        runtime: Runtime,
        fetch: Fetch | None = None,
    ) -> Result:
        """The service took the file, but it changed or went away meanwhile.

        Its time alone changed (`now_sha256` is what was sent): the GUID describes it; kept.
        Gone (renamed, moved): the task is recorded under the old path, without a sidecar, so
        that the file under its new name reuses its GUID instead of being paid for again.
        Changed: no sidecar may claim the new content; it settles and is sent again.
        """
        look = look_at(job.path)
        if look is not None and now_sha256 == sub.sha256:
            same = Submission(
                sub.guid,
                sub.sha256,
                look.size,
                look.mtime_ns,
                sub.attempts,
                sub.image_type,
            )
            return self.submitted(
                job, profile, same, key, runtime, time.monotonic(), fetch
            )
        if os.path.lexists(job.path):
            log.warning("job.changed_after_upload", path=str(job.path), guid=sub.guid)
            return self.unsettled(job, look or Look(0, 0), runtime, str(sub.changed))
        self.record_upload(job, sub, key)
        log.warning("job.gone_after_upload", path=str(job.path), guid=sub.guid)
        return Result(Outcome.GONE, str(sub.changed), guid=sub.guid)

    def incomplete(self, job: Job, look: Look, why: str, runtime: Runtime) -> Result:
        """Not whole yet: wait for the rest, up to incomplete_timeout of quiet, then `.error`.

        `submit` does not wait: the file gets its `.error` at once. Either way, the rest
        arriving later changes the file, which is then sent, and its `.guid` replaces that.
        """
        now = self._clock()
        quiet_s = max(0.0, now - look.mtime_ns / 1e9)
        timeout = runtime.config.incomplete_timeout
        if self._one_shot:
            return self.rejected(job, f"{why}; not sent", runtime)
        if quiet_s >= timeout:
            waited = f"nothing more was written for {quiet_s / 60:.0f} min"
            return self.rejected(job, f"{why}; {waited}, so it was not sent", runtime)
        # Look again sooner while it is fresh, and right at the timeout at the latest.
        wait = max(
            runtime.settle_s(job.root), min(INCOMPLETE_RECHECK_MAX_S, quiet_s / 2)
        )
        not_before = min(now + wait, look.mtime_ns / 1e9 + timeout)
        reason = f"waiting for the rest of the file: {why}"
        self._journal.release(job, now=now, not_before=not_before, reason=reason)
        log.info("job.incomplete", path=str(job.path), error=why)
        return Result(Outcome.INCOMPLETE, why)

    def rejected(self, job: Job, reason: str, runtime: Runtime) -> Result:
        """Can never succeed as it is. Recorded even if its `.error` cannot be written (a
        name one byte too long for it): trying again would only pay again."""
        try:
            write_sidecar(job.path, Kind.ERROR, reason, staging=runtime.staging)
        except SidecarError as exc:
            log.error("sidecar.write_failed", path=str(job.path), error=str(exc))
            reason = f"{reason} {NO_ERROR_NOTE}{exc})"
        # The look it settled with (a link out is looked at as the link, not its target): a
        # rescan finds it the same and leaves it; one changed since is examined again.
        self._journal.mark_rejected(
            job.path,
            reason=reason,
            size=job.size,
            mtime_ns=job.mtime_ns,
            now=self._clock(),
        )
        self._metrics.rejected()
        log.warning("job.rejected", path=str(job.path), error=reason)
        return Result(Outcome.REJECTED, reason)

    def retry_later(
        self,
        job: Job,
        error: str,
        retry_after_s: float | None = None,
        attempts: int = 1,
    ) -> Result:
        now = self._clock()
        when = next_attempt_at(job.attempts + 1, now, retry_after_s)
        self._journal.mark_failed(job.path, error=error, next_attempt_at=when, now=now)
        self._metrics.retry_later()
        log.warning(
            "job.retry_later",
            path=str(job.path),
            error=error,
            wait_s=round(when - now, 1),
            attempts=job.attempts + 1,
            tries_this_round=attempts,
        )
        return Result(Outcome.RETRY, error)

    def unsettled(self, job: Job, look: Look, runtime: Runtime, why: str) -> Result:
        """Back to the queue with how it looks now, to be claimed once it stayed so a while."""
        now = self._clock()
        changed = Job(job.path, job.root, look.size, look.mtime_ns)
        not_before = now + runtime.settle_s(job.root)
        self._journal.release(changed, now=now, not_before=not_before, reason=why)
        log.info("job.changed", path=str(job.path), error=why)
        return Result(Outcome.UNSETTLED, why)

    def gone(self, job: Job) -> Result:
        self._journal.forget(job.path)
        log.info("job.gone", path=str(job.path))
        return Result(Outcome.GONE, "the file disappeared before it could be read")

    def held(self, job: Job, reason: str, *, once_per: object = None) -> Result:
        """Keep the file queued but unclaimable, with the reason, until its folder is looked at
        again. `once_per`: log only once for it (a folder, a broken file's version), not at
        every rescan."""
        reason = shorten(reason, REASON_MAX)
        self._journal.hold(job.path, reason=f"held: {reason}", now=self._clock())
        with self._lock:
            logged = once_per in self._held_logged
            if once_per is not None:
                self._held_logged.add(once_per)
        if not logged:
            log.error("job.held", path=str(job.path), error=reason)
        return Result(Outcome.HELD, reason)

    def unconfigured(self, job: Job) -> Result:
        reason = "its folder is no longer in the config"
        now = self._clock()
        self._journal.release(
            job, now=now, not_before=now + UNCONFIGURED_RETRY_S, reason=reason
        )
        return Result(Outcome.UNCONFIGURED, reason)

    def refused(self, job: Job, reason: str) -> Result:
        """Credentials refused: the file goes back to the queue; the loop pauses uploads."""
        self._journal.release(job, now=self._clock(), reason=reason)
        return Result(Outcome.AUTH, reason)

    def poll_again(
        self,
        poll: Poll,
        at: float,
        error: str | None = None,
        *,
        seen_completed: bool = False,
    ) -> Result:
        """Not done yet, or the service could not be asked: the next look at `at`."""
        self._journal.schedule_poll(
            poll, at=at, now=self._clock(), error=error, seen_completed=seen_completed
        )
        return Result(Outcome.FETCHING, error, guid=poll.guid)

    def stuck(
        self,
        poll: Poll,
        error: str,
        runtime: Runtime,
        *,
        seen_completed: bool = False,
    ) -> Result:
        """Trouble on our side (a result that cannot be written, a bug):
        asked again every max_s, but only until fetch_timeout. Then `.error`, and `retry`
        asks again; a task left to expire would otherwise be uploaded (billed) once more."""
        now = self._clock()
        if now >= poll.deadline:
            return self.fetch_failed(
                poll, f"no result written in time: {error}", runtime, refetch=True
            )
        at = min(poll.deadline, now + runtime.poll.max_s)
        return self.poll_again(poll, at, error, seen_completed=seen_completed)

    def changed_while_fetching(
        self, poll: Poll, look: Look, runtime: Runtime
    ) -> Result:
        """Rewritten since it was sent, and the watcher has not queued it again (yet): it is
        queued here, as the watcher would, and the old task's result is never written. It
        waits its folder's settle time first: it may be caught mid-rewrite."""
        now = self._clock()
        changed = Job(poll.path, poll.root, look.size, look.mtime_ns)
        self._journal.note_many([changed], now)
        self._journal.release(
            changed, now=now, not_before=now + runtime.settle_s(poll.root)
        )
        log.info(
            "job.changed", path=str(poll.path), error="it changed after it was sent"
        )
        return Result(Outcome.UNSETTLED, "it changed after it was sent")

    def gone_while_fetching(self, poll: Poll, runtime: Runtime) -> Result:
        """The file is not there any more while its result is waited for.

        A watched folder that is missing or empty is a share not mounted: asked again later,
        nothing forgotten. Otherwise it was renamed or moved: the row stays as a dedupe source
        (see `Journal.keep_as_source`), so that the file under its new name is not paid for
        again."""
        if not has_entries(poll.root):
            why = "its watched folder is missing or empty (a share not mounted?)"
            return self.poll_again(poll, self._clock() + runtime.poll.max_s, why)
        self._journal.keep_as_source(poll, self._clock())
        log.info("job.gone", path=str(poll.path), guid=poll.guid)
        return Result(Outcome.GONE, "the file went away before its result came")

    def completed(self, poll: Poll, task: TaskResult, runtime: Runtime) -> Result:
        """Write the task's results next to the original, then the row is `completed`.

        A name that holds a file the journal does not know as ours is a user's: the result
        goes to `<name>.ocr.<ext>` instead. If the folder refuses the write, the result is
        asked for again later (the service keeps it for a day). A file rewritten while its
        result was written gets none of it: the results go, and the new content is sent.
        """
        recorded = {name: (ino, size, mtime) for name, ino, size, mtime in poll.results}

        def is_ours(path: Path) -> bool:
            try:
                st = path.lstat()
            except OSError:
                return False
            return recorded.get(path.name) == (st.st_ino, st.st_size, st.st_mtime_ns)

        entries = [(e.kind, e.data) for e in task.results]
        wrote_guid = False
        try:
            written = write_results(
                poll.path, entries, is_ours, staging=runtime.staging
            )
            signatures = [(p.name, *written_signature(p)) for p in written.files]
            if (now := look_at(poll.path)) != Look(poll.size, poll.mtime_ns):
                _remove(written.files)
                if now is None:
                    return self.gone_while_fetching(poll, runtime)
                return self.changed_while_fetching(poll, now, runtime)
            # `retry` after a timeout: it had `.error`.
            if read_guid(poll.path) != poll.guid:
                try:
                    write_sidecar(
                        poll.path, Kind.GUID, poll.guid, staging=runtime.staging
                    )
                except SidecarError:
                    _remove(written.files)  # not recorded: they would not be ours later
                    raise
                wrote_guid = True
        except SidecarError as exc:
            log.error("result.write_failed", path=str(poll.path), error=str(exc))
            return self.stuck(
                poll, f"result not written: {exc}", runtime, seen_completed=True
            )
        # Ours even if the row goes (a prune, the original deleted): never taken as input.
        self._journal.note_results(poll.path, signatures, self._clock())
        if not self._journal.mark_completed(
            poll, results=signatures, now=self._clock()
        ):
            # The row moved on meanwhile (the file was rewritten and queued again).
            _remove(written.files)
            if wrote_guid:
                remove_stale_guid(poll.path, poll.guid)
            log.info("result.dropped", path=str(poll.path), guid=poll.guid)
            return Result(Outcome.UNSETTLED, "it changed while its result was fetched")
        for skipped in written.skipped:
            log.warning("result.skipped", path=str(poll.path), reason=skipped.reason)
        if task.warnings:
            log.warning(
                "task.warned", path=str(poll.path), warnings=list(task.warnings)
            )
        self._metrics.result_fetched()
        log.info(
            "job.completed",
            path=str(poll.path),
            guid=poll.guid,
            files=[p.name for p in written.files],
            polls=poll.polls + 1,
        )
        return Result(Outcome.COMPLETED, guid=poll.guid, files=written.files)

    def fetch_failed(
        self, poll: Poll, reason: str, runtime: Runtime, *, refetch: bool
    ) -> Result:
        """No result: `.error` with why (it replaces the `.guid`; the journal keeps the GUID).

        The row first: a file rewritten meanwhile gets no `.error` for its old content."""
        if not self._journal.mark_fetch_failed(
            poll, reason=reason, refetch=refetch, now=self._clock()
        ):
            return Result(Outcome.UNSETTLED, "it changed while its result was fetched")
        try:
            write_sidecar(poll.path, Kind.ERROR, reason, staging=runtime.staging)
        except SidecarError as exc:
            log.error("sidecar.write_failed", path=str(poll.path), error=str(exc))
            reason = f"{reason} {NO_ERROR_NOTE}{exc})"
            self._journal.note_reason(poll.path, reason, now=self._clock())
        self._metrics.fetch_failed()
        log.warning(
            "job.fetch_failed", path=str(poll.path), guid=poll.guid, error=reason
        )
        return Result(Outcome.REJECTED, reason, guid=poll.guid)

    def resubmitted(self, poll: Poll, reason: str) -> Result:
        """The service lost the task: its `.guid` goes, and the file is uploaded once more
        (a new, billed task; logged as such)."""
        # The `.guid` first: once queued, another thread may claim the file, and would adopt
        # a `.guid` of the lost task. A `.guid` naming a lost task is worth nothing anyway.
        remove_stale_guid(poll.path, poll.guid)
        if not self._journal.resubmit(poll, reason=reason, now=self._clock()):
            return Result(Outcome.UNSETTLED, "it changed while its result was fetched")
        self._metrics.resubmitted()
        log.warning(
            "job.resubmitted", path=str(poll.path), lost_guid=poll.guid, error=reason
        )
        return Result(Outcome.RESUBMITTED, reason)

    def _write_guid(self, job: Job, guid: str, runtime: Runtime) -> None:
        try:
            write_sidecar(job.path, Kind.GUID, guid, staging=runtime.staging)
        except SidecarError as exc:
            # The task exists and is billed: it is recorded all the same and not sent again;
            # the next scan writes the `.guid` from the journal once it can.
            log.error(
                "sidecar.write_failed", path=str(job.path), guid=guid, error=str(exc)
            )
