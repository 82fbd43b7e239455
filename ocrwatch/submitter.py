"""One file, end to end: settings -> client -> sidecar -> journal. Never raises for a per-file problem.

Every outcome is one canonical log line (`job.submitted`, `job.rejected`, `job.retry_later`, ...)
carrying the whole context, and, in the daemon, one journal transition.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import structlog

from ocrwatch.client import OcrClient
from ocrwatch.errors import (
    AuthError,
    ConfigError,
    FileChangedError,
    RejectedError,
    SidecarError,
    TransientApiError,
)
from ocrwatch.journal import Job, Journal
from ocrwatch.profiles import ProfileBook
from ocrwatch.retry import next_attempt_at
from ocrwatch.sidecar import Kind, write_sidecar
from ocrwatch.uploader import LocalUploader, Uploader

log = structlog.get_logger()


class Outcome(StrEnum):
    SUBMITTED = "submitted"
    REJECTED = "rejected"
    RETRY = "retry"  # transient trouble outlasted the client's retries
    CHANGED = "changed"  # the file changed while being sent: settle again
    GONE = "gone"  # deleted before it could be sent
    AUTH = "auth"  # credentials refused: pause everything, fail nothing
    HELD = "held"  # its .ocrwatch.yaml is invalid


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    path: Path
    profile: str | None = None
    guid: str | None = None
    error: str | None = None
    attempts: int = 0
    size: int = 0
    mtime_ns: int = 0
    sha256: str | None = None
    retry_after_s: float | None = None


class Submitter:
    """Sends files with the client it is given; `process_one` adds the journal's bookkeeping."""

    def __init__(
        self,
        client: OcrClient,
        book: ProfileBook,
        journal: Journal | None = None,
        *,
        clock: Callable[[], float] = time.time,
        uploader: Uploader | None = None,
    ) -> None:
        self.client = client
        self.book = book
        self.journal = journal
        self._clock = clock
        self.uploader = uploader or LocalUploader(client)

    def send(self, path: Path, root: Path, profile: str) -> Result:
        """Submit one file and write its sidecar; the outcome says what happened."""
        started = time.monotonic()
        try:
            resolved = self.book.resolve_for(path, root, profile)
        except ConfigError as exc:
            return Result(Outcome.HELD, path, profile, error=str(exc))
        profile = resolved.profile
        try:
            upload = self.uploader.upload(path, resolved.settings)
        except RejectedError as exc:
            return self._reject(path, profile, str(exc))
        except FileChangedError as exc:
            outcome = (
                Outcome.CHANGED if path.exists() or path.is_symlink() else Outcome.GONE
            )
            return Result(outcome, path, profile, error=str(exc))
        except (AuthError, TransientApiError) as exc:
            outcome = Outcome.AUTH if isinstance(exc, AuthError) else Outcome.RETRY
            return Result(
                outcome,
                path,
                profile,
                error=str(exc),
                attempts=exc.attempts,
                retry_after_s=exc.retry_after_s,
            )
        sub = upload.submission
        result = Result(
            Outcome.SUBMITTED,
            path,
            profile,
            guid=sub.guid,
            attempts=sub.attempts,
            size=sub.size,
            mtime_ns=sub.mtime_ns,
            sha256=sub.sha256,
        )
        if upload.sidecar_error is not None:
            # The task exists and is billed: record it, don't send it again.
            log.error(
                "sidecar.write_failed",
                path=str(path),
                guid=sub.guid,
                error=upload.sidecar_error,
            )
            return replace(result, error=upload.sidecar_error)
        log.info(
            "job.submitted",
            path=str(path),
            profile=profile,
            guid=sub.guid,
            attempts=sub.attempts,
            bytes=sub.size,
            image_type=sub.image_type,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return result

    def _reject(self, path: Path, profile: str, reason: str) -> Result:
        try:
            size, mtime_ns = _stat(path)
            write_sidecar(path, Kind.ERROR, reason)
        except SidecarError as exc:
            log.error("sidecar.write_failed", path=str(path), error=str(exc))
            return Result(Outcome.RETRY, path, profile, error=f"{reason} (and {exc})")
        log.warning("job.rejected", path=str(path), profile=profile, error=reason)
        return Result(
            Outcome.REJECTED, path, profile, error=reason, size=size, mtime_ns=mtime_ns
        )

    def process_one(self, job: Job, profile: str) -> Result:
        """Send a claimed job and record the outcome in the journal."""
        assert self.journal is not None, "process_one needs a journal"
        try:
            result = self.send(job.path, job.root, profile)
        except Exception as exc:
            log.exception("job.crashed", path=str(job.path))
            result = Result(
                Outcome.RETRY,
                job.path,
                profile,
                error=f"internal error: {type(exc).__name__}: {exc}",
            )
        self._record(job, result)
        return result

    def _record(self, job: Job, result: Result) -> None:
        assert self.journal is not None
        now = self._clock()
        journal, path = self.journal, job.path
        match result.outcome:
            case Outcome.SUBMITTED:
                journal.mark_submitted(
                    path,
                    guid=result.guid or "",
                    sha256=result.sha256 or "",
                    size=result.size,
                    mtime_ns=result.mtime_ns,
                    now=now,
                )
            case Outcome.REJECTED:
                journal.mark_rejected(
                    path,
                    reason=result.error or "",
                    size=result.size or job.size,
                    mtime_ns=result.mtime_ns or job.mtime_ns,
                    now=now,
                )
            case Outcome.RETRY:
                when = next_attempt_at(job.attempts + 1, now, result.retry_after_s)
                journal.mark_failed(
                    path, error=result.error or "", next_attempt_at=when, now=now
                )
                log.warning(
                    "job.retry_later",
                    path=str(path),
                    error=result.error,
                    wait_s=round(when - now, 1),
                    attempts=job.attempts + 1,
                )
            case Outcome.CHANGED:
                # Settle again: the daemon's tracker re-queues it once it is quiet.
                journal.forget(path)
                log.info("job.changed", path=str(path), error=result.error)
            case Outcome.GONE:
                journal.forget(path)
                log.info("job.gone", path=str(path))
            case Outcome.AUTH:
                journal.release(path, now=now, reason=result.error)
            case Outcome.HELD:
                journal.hold(path, reason=f"held: {result.error}", now=now)
                log.error("job.held", path=str(path), error=result.error)


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return 0, 0
    return st.st_size, st.st_mtime_ns
