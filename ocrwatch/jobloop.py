"""The job loop: a claimed file, end to end, in `api.concurrency` threads.

`JobLoop.process()` takes one claimed job through its checks (is it settled, already done, whole,
content the service has already?), its upload, and one outcome, which `outcome.Recorder` makes
durable. It never raises for a problem with a file. Around it, each thread only claims, waits and
stops; every wait ends on `stop()`. What a job needs from the config comes in one immutable
`Runtime`, which a reload swaps between jobs: a job in flight finishes with the runtime it
started with.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from ocrwatch.client import Submission
from ocrwatch.errors import (
    AuthError,
    ConfigError,
    FileChangedError,
    JournalError,
    ProtocolError,
    RejectedError,
    TokenRateLimitError,
    TransientApiError,
)
from ocrwatch.fetcher import Fetcher
from ocrwatch.hooks import HookRunner
from ocrwatch.journal import TASK_LIFETIME_S, Fetch, Job, Journal, Poll
from ocrwatch.metrics import Metrics
from ocrwatch.outcome import Recorder, Result, look_at, remove_stale_guid
from ocrwatch.pause import PAUSE_KEY, Pause, Why
from ocrwatch.preflight import (
    Receipt,
    content_key,
    current_receipt,
    inspect,
    open_within,
)
from ocrwatch.progress import Heartbeats, Worker, call_bound_s
from ocrwatch.results import has_results
from ocrwatch.runtime import AUTH_RETRY_S, Runtime
from ocrwatch.selection import candidate_stat
from ocrwatch.settings import Settings
from ocrwatch.settle import Look
from ocrwatch.sidecar import Kind, sidecar_path, why_unwritable

log = structlog.get_logger()

IDLE_WAIT_S: Final = 1.0
# Never later than ten minutes: the token endpoint's own lockout after refused credentials.
AUTH_PAUSE_MAX_S: Final = 600.0
JOURNAL_ERROR_BACKOFF_S: Final = 5.0
# How long a file waits for the GUID of a twin that is on the wire before it is queued again.
TWIN_WAIT_S: Final = 30.0
TWIN_POLL_S: Final = 0.1
# A 200 without a task id (a proxy's login page, a service in trouble): every upload waits,
# first ten minutes, then twice as long each time up to an hour, until an answer makes sense.
PROTOCOL_PAUSE_S: Final = 600.0
PROTOCOL_PAUSE_MAX_S: Final = 3600.0
# A pause noted this soon after the last one for the same reason ended continues it.
NOTE_CONTINUES_S: Final = 120.0
# Hashing a file slower than this (a share in trouble) counts as no progress.
HASH_MIN_BYTES_PER_S: Final = 1 << 20
PDF_MAGIC: Final = b"%PDF-"


class JobLoop:
    """Threads that claim due jobs from the journal and process them, one at a time each."""

    def __init__(
        self,
        journal: Journal,
        runtime: Runtime,
        *,
        clock: Callable[[], float] = time.time,
        one_shot: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self._journal = journal
        journal.in_flight = self.in_flight_jobs
        self._runtime = runtime
        self._clock = clock
        self._metrics = metrics or Metrics()
        # `one_shot` (`submit`): a file that is not ready is reported, not waited for.
        self._recorder = Recorder(
            journal, clock=clock, one_shot=one_shot, metrics=self._metrics
        )
        self._one_shot = one_shot
        # Guards everything below; waited on by idle threads, notified by wake/resize/stop.
        self._cond = threading.Condition()
        # Bumped by wake(): a wake between a claim and the wait that follows is kept.
        self._generation = 0
        self._size = 0
        self._stopping = False
        self._threads: dict[int, threading.Thread] = {}
        self._in_flight: dict[Path, Job] = {}
        self._paused_until = 0.0
        # What the pause waits out: "credentials" or "bad answers".
        self._paused_for = ""
        # Until when the pause noted in the journal (for `status`) lasts; 0: none noted;
        # inf: unknown (a killed daemon may have left one), so that start() removes it.
        self._noted_until = math.inf
        self._note_lock = threading.Lock()
        self._last_note: Pause | None = None  # the latest pause noted, for its `since`
        # The last pause for senseless answers; 0 once an answer made sense.
        self._protocol_pause_s = 0.0
        self._journal_down = False
        # Uploads the journal could not record (it failed): their receipt until it can.
        self._unrecorded: dict[Path, tuple[Submission, str]] = {}
        # Held from a claim until its job is in `_in_flight`, so that `resume_orphans` never
        # takes a row that a thread has just claimed for one of this process's orphans.
        self._claim_lock = threading.Lock()
        self._beats = Heartbeats()
        # Polls in flight: kept apart from uploads, which a rebuilt journal gets back.
        self._polling: dict[Path, Poll] = {}
        self._turns = itertools.count()  # whose turn, a poll's or an upload's
        self.hooks = HookRunner()
        self._fetcher = Fetcher(
            self._recorder, self.hooks, clock=clock, metrics=self._metrics
        )

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

    def worker_states(self) -> list[Worker]:
        """Every thread the pool should have, alive or not, with its last heartbeat."""
        with self._cond:
            threads = list(self._threads.values())
        return [Worker(t.name, t.is_alive(), self._beats.of(t)) for t in threads]

    @property
    def concurrency(self) -> int:
        """The threads it is meant to run (0 before `start()`)."""
        with self._cond:
            return self._size

    @property
    def paused(self) -> bool:
        """Uploads wait out refused credentials, or answers that made no sense."""
        return self._clock() < self._paused_until

    @property
    def credentials_refused(self) -> bool:
        """Uploads wait because the service refused the credentials."""
        with self._cond:
            return self.paused and self._paused_for == "credentials"

    def start(self) -> None:
        self._note_pause(None)  # one a killed daemon left says nothing about this one
        self.resize(self._runtime.config.api.concurrency)

    def swap(self, runtime: Runtime) -> None:
        """Use `runtime` for every job claimed from now on (a reload), with its concurrency.

        New credentials deserve a try at once, so an auth pause ends here.
        """
        with self._cond:
            self._runtime = runtime
            self._paused_until = 0.0
            self._protocol_pause_s = 0.0
            started = self._size > 0
        if started:
            self._note_pause(None)
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
        self.hooks.stop(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def step(self) -> Result | None:
        """Claim the next due poll or upload and process it; None if none is due or uploads
        are paused."""
        now = self._clock()
        if now < self._paused_until:
            return None
        if 0 < self._noted_until <= now:
            self._note_pause(None, ended_by=now)
        # Polls and uploads take turns when both are due: a poll is one short GET and a
        # result waiting is a scan waiting, but a long backlog of polls (a slow service)
        # must not hold back the uploads, nor a burst of uploads the results.
        polls_first = next(self._turns) % 2 == 0
        if polls_first and (result := self._step_poll(now)) is not None:
            return result
        with self._claim_lock:
            job = self._journal.claim(now, on_claimed=self._begin)
        self._journal_is_back()  # a claim went through, whether or not one was due
        if job is not None:
            return self.process(job)
        return None if polls_first else self._step_poll(now)

    def _step_poll(self, now: float) -> Result | None:
        with self._claim_lock:
            poll = self._journal.claim_poll(now, on_claimed=self._begin_poll)
        return None if poll is None else self.process_poll(poll)

    def resume_orphans(self) -> int:
        """Queue again the rows that a process that is gone left `submitting`, and this
        process's own whose outcome could not be recorded (the journal failed meanwhile)."""
        with self._claim_lock:
            with self._cond:
                in_flight = set(self._in_flight) | set(self._polling)
            return self._journal.resume(self._clock(), in_flight=in_flight)

    def _begin(self, job: Job) -> None:
        with self._cond:
            self._in_flight[job.path] = job

    def _begin_poll(self, poll: Poll) -> None:
        with self._cond:
            self._polling[poll.path] = poll

    def process_poll(self, poll: Poll) -> Result:
        """One look at a claimed poll's task. Raises only JournalError."""
        runtime = self._runtime
        self._begin_poll(poll)
        try:
            self._beat(runtime, f"asking for the result of {poll.path}")
            return self._fetcher.poll(
                poll, runtime, functools.partial(self._beat, runtime)
            )
        except JournalError:
            raise
        except Exception as exc:  # a bug on one file must not end a worker
            log.exception("poll.crashed", path=str(poll.path))
            return self._recorder.stuck(poll, f"internal error: {exc}", runtime)
        finally:
            with self._cond:
                self._polling.pop(poll.path, None)

    def in_flight_jobs(self) -> list[Job]:
        """The jobs being processed now (a rebuilt journal gets their claims back)."""
        with self._cond:
            return list(self._in_flight.values())

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
            return self._recorder.retry_later(
                job, f"internal error: {type(exc).__name__}: {exc}"
            )
        finally:
            with self._cond:
                self._in_flight.pop(job.path, None)

    def _work(self, slot: int) -> None:
        self._beats.register("starting", self._quiet_s(self._runtime))
        try:
            self._serve(slot)
        finally:
            self._beats.forget()

    def _serve(self, slot: int) -> None:
        while True:
            with self._cond:
                if self._stopping or slot >= self._size:
                    del self._threads[slot]
                    return
                generation = self._generation
            # An idle wait ends within IDLE_WAIT_S, and the next beat comes with it.
            self._beat(self._runtime, "claiming the next file", IDLE_WAIT_S)
            try:
                if self.step() is None:
                    self._idle(generation)
            except JournalError as exc:
                # A full or failing state_dir: uploads pause, said once by the first worker
                # to meet it. A claimed job stays `submitting` until `resume_orphans`.
                self._journal_is_down(exc)
                self._pause_worker(JOURNAL_ERROR_BACKOFF_S)
            except Exception:  # a worker that dies silently shrinks the pool for months
                log.exception("worker.failed", retry_in_s=JOURNAL_ERROR_BACKOFF_S)
                self._pause_worker(JOURNAL_ERROR_BACKOFF_S)

    @staticmethod
    def _quiet_s(runtime: Runtime) -> float:
        timeout = runtime.config.api.timeout
        return call_bound_s(timeout.connect, timeout.read)

    def _beat(self, runtime: Runtime, doing: str, wait_s: float = 0.0) -> None:
        """This thread progresses; it may be quiet for `wait_s` plus one network call now
        (with the timeouts of the runtime its job uses, whatever a reload did since)."""
        self._beats.beat(doing, self._quiet_s(runtime) + wait_s)

    def _journal_is_down(self, exc: JournalError) -> None:
        with self._cond:
            first, self._journal_down = not self._journal_down, True
        if first:
            log.error(
                "uploads.paused", error=str(exc), retry_every_s=JOURNAL_ERROR_BACKOFF_S
            )

    def _journal_is_back(self) -> None:
        with self._cond:
            back, self._journal_down = self._journal_down, False
        if back:
            log.info("uploads.resumed")

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
        self._beat(self._runtime, "waiting out a journal error", seconds)
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._stopping and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)

    def _process(self, job: Job, runtime: Runtime) -> Result:
        started = time.monotonic()
        self._beat(runtime, f"processing {job.path}")
        rec = self._recorder
        profile = runtime.profile_for(job)
        if profile is None:
            return rec.unconfigured(job)
        roots = runtime.roots_for(job)
        # Looked at as it settled: a link that leads out of the watched folders as the link.
        st = candidate_stat(job.path, roots)
        look = None if st is None else Look(st.st_size, st.st_mtime_ns)
        if look is not None and look != Look(job.size, job.mtime_ns):
            return rec.unsettled(job, look, runtime, "it changed after it settled")
        if look is not None and (pending := self._unrecorded.get(job.path)) is not None:
            return self._record_again(job, profile, look, pending, runtime, started)
        receipt = None if look is None else current_receipt(job.path, look)
        try:
            fd = open_within(job.path, roots)
        except FileChangedError:
            return rec.gone(job)
        except RejectedError as exc:
            return rec.rejected(job, str(exc), runtime)
        try:
            if (
                look is None
            ):  # it was just opened: whatever raced the first look is gone
                st = os.fstat(fd)
                look = Look(st.st_size, st.st_mtime_ns)
            if receipt is not None and not self._is_stale(job, receipt, fd, runtime):
                fetch = self._adopted_fetch(job, profile, fd, look, receipt, runtime)
                return rec.adopted(job, look, receipt, fetch)
            return self._send(job, fd, look, profile, runtime, started)
        finally:
            os.close(fd)

    def _adopted_fetch(
        self,
        job: Job,
        profile: str,
        fd: int,
        look: Look,
        receipt: Receipt,
        runtime: Runtime,
    ) -> Fetch | None:
        """A `.guid` that came with its file (moved while its result was waited for) still
        gets the result, if its profile fetches results, none is there yet, and the task
        may still be kept (the `.guid` is less than a day old)."""
        if receipt.kind is not Kind.GUID:
            return None
        try:
            policy = runtime.book.resolve_for(job.path, job.root, profile).fetch
            written_at = sidecar_path(job.path, Kind.GUID).stat().st_mtime
        except (ConfigError, OSError):
            return None
        if not policy.enabled or has_results(job.path, look.mtime_ns):
            return None
        if self._clock() - written_at > TASK_LIFETIME_S:
            return None
        pdf = os.pread(fd, len(PDF_MAGIC), 0) == PDF_MAGIC
        return Fetch(policy.timeout_s, runtime.poll.first_s, pdf)

    def _send(
        self,
        job: Job,
        fd: int,
        look: Look,
        profile: str,
        runtime: Runtime,
        started: float,
    ) -> Result:
        """The opened file: settings, the checks before an upload, the upload, its outcome."""
        rec = self._recorder
        try:
            resolved = runtime.book.resolve_for(job.path, job.root, profile)
        except ConfigError as exc:
            # Logged once per broken version of the file, not at every rescan.
            return rec.held(job, str(exc), once_per=str(exc))
        if (why := why_unwritable(job.path)) is not None:
            return rec.held(job, why, once_per=job.path.parent)
        key = content_key(resolved.settings, runtime.client.trial)
        fetch = None
        if resolved.fetch.enabled:
            pdf = os.pread(fd, len(PDF_MAGIC), 0) == PDF_MAGIC
            fetch = Fetch(resolved.fetch.timeout_s, runtime.poll.first_s, pdf)
        if early := self._before_upload(job, fd, look, key, runtime, fetch):
            return early
        upload_started = time.monotonic()
        try:
            sub = self._upload(job, fd, resolved.settings, runtime)
        except RejectedError as exc:
            return rec.rejected(job, str(exc), runtime)
        except FileChangedError as exc:
            now = look_at(job.path)
            if now is None and not os.path.lexists(job.path):
                return rec.gone(job)
            return rec.unsettled(job, now or Look(0, 0), runtime, str(exc))
        except AuthError as exc:
            return self._pause(job, exc, runtime)
        except TokenRateLimitError as exc:
            result = rec.retry_later(job, str(exc), exc.retry_after_s, exc.attempts)
            wait = exc.retry_after_s or 1.0
            self._note_pause(Pause(Why.RATE_LIMITED, str(exc), *self._span(wait)))
            return result
        except TransientApiError as exc:
            return rec.retry_later(job, str(exc), exc.retry_after_s, exc.attempts)
        except ProtocolError as exc:
            return self._protocol_pause(job, exc, runtime)
        self._metrics.upload_accepted(time.monotonic() - upload_started)
        if sub.changed is not None:
            self._beat(runtime, f"hashing {job.path}", look.size / HASH_MIN_BYTES_PER_S)
            now_sha256 = self._sha256_of(job.path)
            return rec.changed_after_upload(
                job, resolved.profile, sub, key, now_sha256, runtime, fetch
            )
        with self._cond:
            self._protocol_pause_s = 0.0
        try:
            return rec.submitted(
                job, resolved.profile, sub, key, runtime, started, fetch
            )
        except JournalError:
            # Billed, and perhaps without a `.guid`: remembered here, so that when the row
            # comes back (resume_orphans) it is recorded, not sent again.
            with self._cond:
                self._unrecorded[job.path] = (sub, key)
            raise

    def _upload(
        self, job: Job, fd: int, settings: Settings, runtime: Runtime
    ) -> Submission:
        try:
            return runtime.client.submit(
                job.path,
                settings,
                fd=fd,
                progress=functools.partial(self._beat, runtime),
            )
        finally:  # recording the outcome gets its own allowance, whatever the call used up
            self._beat(runtime, f"recording what became of {job.path}")

    @staticmethod
    def _sha256_of(path: Path) -> str | None:
        """What the file at `path` holds now (after its time changed during an upload)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            return inspect(fd, want_sha256=True).sha256
        finally:
            os.close(fd)

    def _record_again(
        self,
        job: Job,
        profile: str,
        look: Look,
        unrecorded: tuple[Submission, str],
        runtime: Runtime,
        started: float,
    ) -> Result:
        sub, key = unrecorded
        if (sub.size, sub.mtime_ns) != (look.size, look.mtime_ns):
            with self._cond:
                self._unrecorded.pop(job.path, None)
            return self._recorder.unsettled(job, look, runtime, "it changed")
        result = self._recorder.submitted(job, profile, sub, key, runtime, started)
        with self._cond:
            self._unrecorded.pop(job.path, None)
        return result

    def _is_stale(self, job: Job, receipt: Receipt, fd: int, runtime: Runtime) -> bool:
        """A current-looking `.guid` that ocrwatch wrote for other content (a file replaced by
        one with an older mtime, `mv new.png scan.png`): removed, not adopted."""
        if receipt.kind is not Kind.GUID:
            return False
        entry = self._journal.lookup([job.path]).get(str(job.path))
        if entry is None or entry.guid != receipt.text or entry.sha256 is None:
            return False
        self._beat(runtime, f"hashing {job.path}", job.size / HASH_MIN_BYTES_PER_S)
        now_sha256 = inspect(fd, want_sha256=True).sha256
        if now_sha256 is None or now_sha256 == entry.sha256:
            return False
        remove_stale_guid(job.path, receipt.text)
        return True

    def _before_upload(
        self,
        job: Job,
        fd: int,
        look: Look,
        key: str,
        runtime: Runtime,
        fetch: Fetch | None,
    ) -> Result | None:
        """Not a whole image yet, or content the service already has: no upload."""
        window = runtime.config.dedupe_window
        self._beat(runtime, f"hashing {job.path}", look.size / HASH_MIN_BYTES_PER_S)
        seen = inspect(fd, want_sha256=window > 0)
        if seen.incomplete is not None:
            return self._recorder.incomplete(job, look, seen.incomplete, runtime)
        if seen.sha256 is None:
            return None
        deadline = time.monotonic() + TWIN_WAIT_S
        while True:
            since = self._clock() - window
            found = self._journal.find_accepted(seen.sha256, key, since, own=job.path)
            if found is not None:
                return self._recorder.deduplicated(
                    job, look, seen.sha256, key, found, runtime, fetch
                )
            if self._journal.mark_content(job.path, seen.sha256, key, since=since):
                return None  # nobody has sent or is sending this content: send it
            # A twin (a copy, the same file under another name) is on the wire: its GUID
            # will do for this one too.
            self._beat(runtime, f"waiting for the twin of {job.path} to be sent")
            if time.monotonic() > deadline or self._wait_a_little():
                why = "the same content is being sent as another file"
                return self._recorder.unsettled(job, look, runtime, why)

    def _wait_a_little(self) -> bool:
        """Wait TWIN_POLL_S, or less if the loop stops; True if it stops."""
        with self._cond:
            if not self._stopping:
                self._cond.wait(TWIN_POLL_S)
            return self._stopping

    def _protocol_pause(self, job: Job, exc: ProtocolError, runtime: Runtime) -> Result:
        """An answer that makes no sense is about the service or the network, not this file:
        no `.error` (the file is fine), and no other file sent into it either, since every
        POST may be billed. Every upload waits, longer each time; the file stays queued."""

        def longer() -> float:
            self._protocol_pause_s = min(
                PROTOCOL_PAUSE_MAX_S, max(PROTOCOL_PAUSE_S, 2 * self._protocol_pause_s)
            )
            return self._protocol_pause_s

        started, wait = self._pause_uploads(runtime, longer, "bad answers")
        if started:
            self._note_pause(Pause(Why.BAD_ANSWERS, str(exc), *self._span(wait)))
            log.error(
                "uploads.paused_for_bad_answers",
                error=str(exc),
                retry_in_s=round(wait),
                queued_files_kept=True,
                hint="if a proxy sits in between, check that it lets the service through",
            )
        return self._recorder.retry_later(job, str(exc), retry_after_s=wait)

    def _pause(self, job: Job, exc: AuthError, runtime: Runtime) -> Result:
        """Refused credentials: this file back to the queue, and every upload waits."""
        result = self._recorder.refused(job, str(exc))
        started, wait = self._pause_uploads(
            runtime,
            lambda: min(
                AUTH_RETRY_S if exc.retry_after_s is None else exc.retry_after_s,
                AUTH_PAUSE_MAX_S,
            ),
            "credentials",
        )
        if started:
            self._note_pause(
                Pause(Why.CREDENTIALS_REFUSED, str(exc), *self._span(wait))
            )
            log.error(
                "auth.refused",
                error=str(exc),
                retry_in_s=round(wait),
                queued_files_kept=True,
            )
        return result

    def _pause_uploads(
        self, runtime: Runtime, length: Callable[[], float], cause: str
    ) -> tuple[bool, float]:
        """Every upload waits `length()` seconds, unless a pause runs already (several workers
        may meet the trouble at once: one pause, one log line) or a reload replaced `runtime`
        meanwhile (the trouble may be gone with it). Returns (started, seconds left)."""
        now = self._clock()
        with self._cond:
            started = runtime is self._runtime and now >= self._paused_until
            if started:
                self._paused_until = now + length()
                self._paused_for = cause
            return started, max(0.0, self._paused_until - now)

    def _span(self, wait: float) -> tuple[float, float]:
        now = self._clock()
        return now, now + wait

    def _note_pause(
        self, pause: Pause | None, *, ended_by: float | None = None
    ) -> None:
        """Tell `status` why uploads wait, or that they no longer do. Only the daemon's loop
        notes (a `submit` is over before anyone asks), and only a note is lost if the
        journal cannot take it.

        Workers note from their own threads: one at a time, under a lock, and a clearing
        (`ended_by`: the time the caller saw the note run out) gives way to a newer note. A
        pause that follows one for the same reason at once (refused again a minute later)
        keeps the first one's `since`: status says since when the trouble lasts.
        """
        if self._one_shot:
            return
        with self._note_lock:
            if pause is None and (
                self._noted_until == 0
                or (ended_by is not None and self._noted_until > ended_by)
            ):
                return
            last = self._last_note
            if (
                pause is not None
                and last is not None
                and last.why is pause.why
                and pause.since - last.until <= NOTE_CONTINUES_S
            ):
                pause = Pause(pause.why, pause.error, last.since, pause.until)
            if pause is not None or ended_by is None:  # a start or reload starts afresh
                self._last_note = pause
            self._noted_until = 0.0 if pause is None else pause.until
            try:
                self._journal.put_meta(
                    PAUSE_KEY, None if pause is None else pause.encode(), self._clock()
                )
            except JournalError as exc:
                log.warning("uploads.pause_not_noted", error=str(exc))
