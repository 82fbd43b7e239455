"""The job loop: `process()` driven directly (a real journal, the emulator, real files), then its threads."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from ocrwatch.config import Credentials, parse_config
from ocrwatch.emulator import Emulator
from ocrwatch.jobloop import JobLoop
from ocrwatch.journal import Job, Journal
from ocrwatch.outcome import Outcome, Result
from ocrwatch.runtime import Runtime

from .conftest import CLIENT_ID, SECRET, wait_until
from .images import png_bytes, write_png


def make_runtime(tmp_path: Path, url: str, secret: str = SECRET, **config) -> Runtime:
    data = {
        "api": {"base_url": url, "retry": {"max_attempts": 2, "max_delay": 0.01}},
        "state_dir": str(tmp_path / "state"),
        "folders": [{"path": str(tmp_path / "in"), "settle_seconds": 0.5}],
        **config,
    }
    return Runtime.build(
        parse_config(data, "test"), Credentials(CLIENT_ID, SecretStr(secret))
    )


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "state" / "journal.sqlite3")
    yield j
    j.close()


@pytest.fixture
def inbox(tmp_path):
    (tmp_path / "in").mkdir()
    return tmp_path / "in"


class Clock:
    """The loop's time, set by the test."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def loop(tmp_path, emulator, journal, clock):
    return JobLoop(journal, make_runtime(tmp_path, emulator.url), clock=clock)


def queue(journal: Journal, *paths: Path, now: float = 0.0) -> None:
    jobs = []
    for path in paths:
        st = path.stat() if path.exists() else None
        size, mtime = (st.st_size, st.st_mtime_ns) if st else (1, 1)
        jobs.append(Job(path, path.parent, size, mtime))
    journal.note_many(jobs, now)


def row(journal: Journal, path: Path):
    return journal.lookup([path])[str(path)]


class TestProcess:
    def test_a_file_is_sent_once_and_gets_its_guid(
        self, loop, journal, inbox, emulator
    ):
        """Claimed, uploaded, `.guid` written, recorded `submitted` with the sha256 that was sent."""
        path = write_png(inbox / "a.png", 1)
        queue(journal, path)

        with capture_logs() as logs:
            result = loop.step()

        [sent] = emulator.submissions()
        entry = row(journal, path)
        assert (Outcome.SUBMITTED, sent["guid"]) == (result.outcome, result.guid)
        assert f"{sent['guid']}\n" == (inbox / "a.png.guid").read_text()
        assert ("submitted", sent["guid"]) == (entry.state, entry.guid)
        assert ["job.submitted"] == [e["event"] for e in logs]

    def test_a_bad_file_gets_an_error_sidecar_and_is_not_retried(
        self, loop, journal, inbox, emulator, clock
    ):
        """Not an image: `.error` with the reason, `rejected`, nothing claimable, nothing sent."""
        path = inbox / "notes.png"
        path.write_text("not an image")
        queue(journal, path)

        result = loop.step()

        assert Outcome.REJECTED is result.outcome
        assert (
            (inbox / "notes.png.error").read_text().startswith("not a supported image")
        )
        assert "rejected" == row(journal, path).state
        clock.now += 86400
        assert loop.step() is None
        assert [] == emulator.submissions()

    def test_transient_trouble_is_retried_later_never_dropped(
        self, loop, journal, inbox, emulator
    ):
        """503s past the retry budget: `failed` with a next attempt 30 s or more away, no sidecar."""
        path = write_png(inbox / "a.png", 1)
        queue(journal, path)
        emulator.fail_next(503, times=2)

        result = loop.step()

        entry = row(journal, path)
        assert Outcome.RETRY is result.outcome
        assert ("failed", "the service answered HTTP 503") == (
            entry.state,
            entry.last_error,
        )
        assert entry.next_attempt_at >= 1000.0 + 27  # 30 s, less at most 10 % jitter
        assert not (inbox / "a.png.guid").exists()

    def test_a_file_changed_after_it_settled_is_not_sent_until_it_settles_again(
        self, loop, journal, inbox, emulator, clock
    ):
        """Checked right before the upload: a changed file waits its folder's settle time, unsent."""
        path = write_png(inbox / "a.png", 1)
        queue(journal, path)
        path.write_bytes(png_bytes(2) + b"more")

        result = loop.step()

        entry = row(journal, path)
        assert Outcome.UNSETTLED is result.outcome
        assert [] == emulator.submissions()
        assert ("queued", path.stat().st_size) == (entry.state, entry.size)
        clock.now += 0.4
        assert loop.step() is None
        clock.now += 0.1
        assert Outcome.SUBMITTED is loop.step().outcome

    def test_a_file_deleted_before_its_upload_is_forgotten(
        self, loop, journal, inbox, emulator
    ):
        """Gone before it was read: no upload, no sidecar, no row."""
        path = write_png(inbox / "a.png", 1)
        queue(journal, path)
        path.unlink()

        result = loop.step()

        assert Outcome.GONE is result.outcome
        assert {} == journal.lookup([path])
        assert [] == emulator.submissions()

    def test_an_invalid_override_file_holds_the_file_with_its_reason(
        self, loop, journal, inbox, emulator
    ):
        """A broken `.ocrwatch.yaml` keeps the file queued but unclaimable, with the reason."""
        path = write_png(inbox / "a.png", 1)
        (inbox / ".ocrwatch.yaml").write_text("langauge: German\n")
        queue(journal, path)

        result = loop.step()

        entry = row(journal, path)
        assert Outcome.HELD is result.outcome
        assert (True, "queued") == (entry.held, entry.state)
        assert "did you mean `language`?" in entry.last_error
        assert [] == emulator.submissions()

    def test_refused_credentials_pause_uploads_and_fail_nothing(
        self, tmp_path, emulator, journal, inbox
    ):
        """A refusal puts the file back, pauses every upload, and is logged once."""
        loop = JobLoop(journal, make_runtime(tmp_path, emulator.url, secret="wrong"))
        paths = [write_png(inbox / f"{i}.png", i) for i in range(3)]
        queue(journal, *paths)

        with capture_logs() as logs:
            first = loop.step()
            second = loop.step()

        assert first is not None
        assert (Outcome.AUTH, None) == (first.outcome, second)
        assert loop.paused
        assert {"queued": 3} == {k: v for k, v in journal.counts().items() if v}
        assert 1 == emulator.token_calls
        assert ["auth.refused"] == [e["event"] for e in logs]

    def test_a_profile_that_left_the_config_holds_the_file(
        self, loop, journal, inbox, emulator
    ):
        """A file `submit --profile gone` left queued is not sent with other settings."""
        path = write_png(inbox / "a.png", 1)
        st = path.stat()
        journal.note_many([Job(path, inbox, st.st_size, st.st_mtime_ns)], 0.0)
        job = journal.claim_file(
            Job(path, inbox, st.st_size, st.st_mtime_ns, 0, "gone"), 0.0
        )
        assert job is not None

        result = loop.process(job)

        assert Outcome.HELD is result.outcome
        assert (
            "profile `gone` is not defined in the config"
            in row(journal, path).last_error
        )
        assert [] == emulator.submissions()

    def test_a_file_whose_folder_left_the_config_waits_an_hour(
        self, loop, journal, tmp_path, emulator
    ):
        """A queued file under a folder no longer configured is neither sent nor dropped."""
        elsewhere = write_png(tmp_path / "gone-folder" / "a.png", 1)
        queue(journal, elsewhere)

        result = loop.step()

        entry = row(journal, elsewhere)
        assert Outcome.UNCONFIGURED is result.outcome
        assert ("queued", 1000.0 + 3600) == (entry.state, entry.next_attempt_at)
        assert [] == emulator.submissions()

    def test_a_bug_on_one_file_is_logged_and_the_file_retried_later(
        self, loop, journal, inbox
    ):
        """A path no system call accepts (a NUL byte) crashes only its own job."""
        journal.note_many([Job(Path(f"{inbox}/a\0.png"), inbox, 1, 1)], 0.0)

        with capture_logs() as logs:
            result = loop.step()

        assert Outcome.RETRY is result.outcome
        assert result.error.startswith("internal error: ValueError")
        assert "job.crashed" in [e["event"] for e in logs]
        assert 1 == journal.counts()["failed"]


class TestWhileItIsSent:
    def test_a_time_change_during_the_upload_keeps_the_guid(
        self, tmp_path, journal, inbox
    ):
        """`touch` (or a sync tool) while the upload is on the wire: the content is what was
        sent, so the GUID describes it; nothing is sent again."""
        with Emulator(client_id=CLIENT_ID, client_secret=SECRET, latency_s=0.5) as emu:
            loop = JobLoop(journal, make_runtime(tmp_path, emu.url))
            path = write_png(inbox / "a.png", 1)
            queue(journal, path)
            done: list[Result | None] = []
            worker = threading.Thread(target=lambda: done.append(loop.step()))
            worker.start()
            wait_until(lambda: emu.bodies_read >= 2, 5, "the upload on the wire")
            later = path.stat().st_mtime_ns + 2_000_000_000
            os.utime(path, ns=(later, later))
            worker.join(10)
            [sent] = emu.submissions()

        assert done[0] is not None
        assert (Outcome.SUBMITTED, sent["guid"]) == (done[0].outcome, done[0].guid)
        assert f"{sent['guid']}\n" == (inbox / "a.png.guid").read_text()
        assert later == row(journal, path).mtime_ns

    def test_a_file_rewritten_while_it_waits_for_its_twin_gets_no_guid(
        self, tmp_path, journal, inbox, emulator
    ):
        """b.png waits for the GUID of a.png (same content, on the wire); b.png is rewritten
        meanwhile: it must not get a.png's GUID."""
        from ocrwatch.preflight import content_key
        from ocrwatch.settings import Settings

        runtime = make_runtime(tmp_path, emulator.url)
        loop = JobLoop(journal, runtime)
        data = png_bytes(5)
        twin, path = inbox / "a.png", inbox / "b.png"
        twin.write_bytes(data)
        path.write_bytes(data)
        queue(journal, twin, path)
        key = content_key(Settings(), trial=False)
        sha = hashlib.sha256(data).hexdigest()
        claimed = journal.claim_file(
            Job(twin, inbox, len(data), twin.stat().st_mtime_ns), 0
        )
        assert claimed is not None
        assert journal.mark_content(twin, sha, key, since=0.0)  # a.png "on the wire"
        done: list[Result | None] = []
        worker = threading.Thread(target=lambda: done.append(loop.step()))
        worker.start()
        wait_until(lambda: loop.in_flight == 1, 5, "b.png claimed")
        time.sleep(0.3)  # b.png is polling for its twin's GUID now
        path.write_bytes(png_bytes(6))
        journal.mark_submitted(
            twin,
            guid="a197aade-bba9-4c7a-92c7-46851b3dceaa",
            sha256=sha,
            size=len(data),
            mtime_ns=twin.stat().st_mtime_ns,
            now=time.time(),
            settings_key=key,
            accepted_at=time.time(),
        )
        worker.join(10)

        assert done[0] is not None
        assert Outcome.UNSETTLED is done[0].outcome
        assert not (inbox / "b.png.guid").exists()
        assert [] == emulator.submissions()

    def test_an_upload_the_journal_could_not_record_is_recorded_later_not_resent(
        self, tmp_path, journal, inbox, emulator
    ):
        """The journal is locked by another writer when the upload's outcome is recorded: the
        GUID is kept in memory, and when the row comes back it is recorded in full."""
        import sqlite3

        from ocrwatch.errors import JournalError

        loop = JobLoop(journal, make_runtime(tmp_path, emulator.url))
        path = write_png(inbox / "a.png", 1)
        queue(journal, path)
        job = journal.claim(time.time())
        assert job is not None
        other = sqlite3.connect(journal.path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # nobody else may write for now
        try:
            with pytest.raises(JournalError):
                loop.process(job)
        finally:
            other.execute("ROLLBACK")
            other.close()
        resumed = loop.resume_orphans()
        again = loop.step()

        assert 1 == resumed
        assert again is not None
        assert Outcome.SUBMITTED is again.outcome
        assert 1 == len(emulator.submissions())
        assert (
            row(journal, path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        )


class TestThreads:
    def test_resize_starts_and_ends_threads(self, loop):
        """Concurrency follows the runtime: more threads at once, fewer once each idles."""
        loop.start()
        started = loop.workers

        loop.resize(6)
        grown = loop.workers
        loop.resize(1)
        wait_until(lambda: loop.workers == 1, 5, "surplus threads to end")
        stopped = loop.stop(5)

        assert (4, 6, True) == (started, grown, stopped)

    def test_a_job_in_flight_finishes_with_the_runtime_it_started_with(
        self, tmp_path, journal, inbox
    ):
        """A swap (a reload) mid-upload lets that upload finish; the next job gets the new settings."""
        with Emulator(client_id=CLIENT_ID, client_secret=SECRET, latency_s=0.5) as emu:
            english = make_runtime(
                tmp_path, emu.url, profiles={"default": {"language": "English"}}
            )
            german = make_runtime(
                tmp_path, emu.url, profiles={"default": {"language": "German"}}
            )
            loop = JobLoop(journal, english)
            first, second = (write_png(inbox / f"{i}.png", i) for i in (1, 2))
            queue(journal, first)
            worker = threading.Thread(target=loop.step)
            worker.start()
            wait_until(lambda: emu.bodies_read >= 2, 5, "the upload on the wire")

            loop.swap(german)
            queue(journal, second)
            worker.join(10)
            loop.step()

            languages = [r["settings"]["language"] for r in emu.submissions()]
        assert ["English", "German"] == languages
        assert 2 == journal.counts()["submitted"]

    def test_a_refusal_of_replaced_credentials_does_not_pause_the_new_ones(
        self, tmp_path, journal, inbox
    ):
        """A job still on the old runtime is refused after a reload brought the right secret:
        its file goes back to the queue, but uploads with the new credentials do not wait."""
        with Emulator(client_id=CLIENT_ID, client_secret=SECRET, latency_s=0.5) as emu:
            loop = JobLoop(journal, make_runtime(tmp_path, emu.url, secret="wrong"))
            path = write_png(inbox / "a.png", 1)
            queue(journal, path)
            outcome: list[Result | None] = []
            worker = threading.Thread(target=lambda: outcome.append(loop.step()))
            with capture_logs() as logs:
                worker.start()
                wait_until(
                    lambda: emu.bodies_read >= 1, 5, "the token call on the wire"
                )
                loop.swap(make_runtime(tmp_path, emu.url))
                worker.join(10)
                retried = loop.step()

        assert outcome[0] is not None
        assert retried is not None
        assert Outcome.AUTH is outcome[0].outcome
        assert Outcome.SUBMITTED is retried.outcome
        assert "auth.refused" not in [e["event"] for e in logs]

    def test_stop_ends_idle_threads_at_once(self, loop):
        """Idle threads wait on a condition that stop() wakes: no timeout needs to pass."""
        loop.start()

        started = time.monotonic()
        stopped = loop.stop(10)

        assert stopped
        assert time.monotonic() - started < 0.5
        assert 0 == loop.workers

    def test_a_failing_journal_pauses_uploads_once_and_the_threads_live_on(
        self, tmp_path, emulator
    ):
        """A journal that errors on every claim (its connection is gone): one line, no thread
        lost, stop() still works."""
        journal = Journal(tmp_path / "journal.sqlite3")
        journal.close()
        loop = JobLoop(
            journal,
            make_runtime(
                tmp_path, emulator.url, api={"base_url": emulator.url, "concurrency": 2}
            ),
        )

        with capture_logs() as logs:
            loop.start()
            wait_until(
                lambda: any(e["event"] == "uploads.paused" for e in logs), 5, "paused"
            )
            time.sleep(0.2)  # both workers have met the closed journal by now
            alive = loop.workers
            stopped = loop.stop(timeout_s=10)

        assert (2, True) == (alive, stopped)
        assert 1 == sum(e["event"] == "uploads.paused" for e in logs)
        assert [] == [e for e in logs if e["event"] == "worker.failed"]
