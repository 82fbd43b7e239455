"""Pure decisions (settle, catch-up) and the journal's state machine, without threads or sleeps."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from ocrwatch.catchup import lost_sidecar_guid, needs_submission
from ocrwatch.errors import JournalError
from ocrwatch.journal import CLAIM_SQL, MIGRATIONS, Entry, Job, Journal
from ocrwatch.selection import Found
from ocrwatch.settle import Look, SettleTracker, Verdict, is_settled

P = Path("/in/a.png")
ROOT = Path("/in")


def entry(size, mtime, state, guid=None, /):
    return Entry(str(P), size, mtime, state, guid, 0, 0.0, None, False, 0.0)


def row_of(journal, path):
    return journal.lookup([path]).get(str(path))


def note(journal, path=P, size=10, mtime=1, *, now):
    """Queue one settled file; True if it was queued."""
    return bool(journal.note_many([Job(path, ROOT, size, mtime)], now))


class TestSettle:
    def test_quiet_and_unchanged_is_settled(self):
        """Quiet for settle_s and the same size/mtime as the last look: settled."""
        tracker = SettleTracker()
        tracker.touch(P, ROOT, 2.0, 0.0, Look(10, 1))

        assert [] == tracker.due(1.9)
        assert [(P, ROOT)] == tracker.due(2.0)
        assert Verdict.SETTLED is tracker.confirm(P, Look(10, 1), 2.0)
        assert 0 == len(tracker)

    def test_close_then_reopen_between_pages_restarts_the_quiet_period(self):
        """A close-after-write starts the quiet period; the next page's write starts it again."""
        tracker = SettleTracker()
        tracker.touch(P, ROOT, 2.0, 0.0, Look(10, 1))  # page 1 written, closed
        tracker.touch(P, ROOT, 2.0, 1.5, Look(20, 2))  # reopened 1.5 s later for page 2

        assert [] == tracker.due(2.0)
        assert [(P, ROOT)] == tracker.due(3.5)

    def test_change_without_event_waits_again(self):
        """If the file changed since the last look (no event seen, e.g. polling), wait another period."""
        tracker = SettleTracker()
        tracker.touch(P, ROOT, 2.0, 0.0, Look(10, 1))

        assert Verdict.WAIT is tracker.confirm(P, Look(15, 2), 2.0)
        assert [] == tracker.due(3.9)
        assert Verdict.SETTLED is tracker.confirm(P, Look(15, 2), 4.0)

    def test_vanished_file_is_gone(self):
        """A file deleted before it settled is dropped."""
        tracker = SettleTracker()
        tracker.touch(P, ROOT, 2.0, 0.0, Look(10, 1))

        assert Verdict.GONE is tracker.confirm(P, None, 2.0)
        assert 0 == len(tracker)

    def test_next_due_in(self):
        """The main loop sleeps exactly until the earliest file may be settled."""
        tracker = SettleTracker()
        assert tracker.next_due_in(0.0) is None
        tracker.touch(P, ROOT, 2.0, 0.0, None)
        tracker.touch(Path("/in/b.png"), ROOT, 5.0, 0.0, None)

        assert 1.5 == tracker.next_due_in(0.5)

    @pytest.mark.parametrize(
        ("last", "now", "prev", "cur", "expected"),
        [
            (0, 2, Look(1, 1), Look(1, 1), True),
            (0, 1, Look(1, 1), Look(1, 1), False),
            (0, 2, Look(1, 1), Look(2, 1), False),
            (0, 2, None, Look(1, 1), False),
            (0, 2, Look(1, 1), None, False),
        ],
    )
    def test_is_settled_table(self, last, now, prev, cur, expected):
        """is_settled needs both the quiet period and an unchanged look."""
        assert expected is is_settled(last, 2.0, now, prev, cur)


class TestCatchUpDecision:
    def found(self, size=10, mtime=100, sidecar=None):
        return Found(str(P), size, mtime, sidecar)

    @pytest.mark.parametrize(
        ("found", "known", "expected"),
        [
            pytest.param(dict(), None, True, id="new-file"),
            pytest.param(dict(sidecar=200), None, False, id="sidecar-no-journal"),
            pytest.param(
                dict(mtime=300, sidecar=200), None, True, id="sidecar-older-than-file"
            ),
            pytest.param(
                dict(sidecar=200), (10, 100, "submitted"), False, id="done-same"
            ),
            pytest.param(
                dict(size=11, sidecar=200),
                (10, 100, "submitted"),
                True,
                id="done-changed",
            ),
            pytest.param(dict(), (10, 100, "rejected"), False, id="rejected-same"),
            pytest.param(dict(), (10, 100, "queued"), False, id="already-queued"),
            pytest.param(dict(), (10, 100, "submitting"), False, id="in-flight"),
            pytest.param(dict(), (10, 100, "failed"), False, id="retry-scheduled"),
        ],
    )
    def test_needs_submission(self, found, known, expected):
        """The journal is authoritative; without it a sidecar no older than the file means done."""
        record = None if known is None else entry(known[0], known[1], known[2], "g")
        assert expected is needs_submission(self.found(**found), record)

    @pytest.mark.parametrize(
        ("found", "known", "expected"),
        [
            pytest.param(
                dict(), entry(10, 100, "submitted", "g1"), "g1", id="lost-sidecar"
            ),
            pytest.param(
                dict(sidecar=200),
                entry(10, 100, "submitted", "g1"),
                None,
                id="sidecar-present",
            ),
            pytest.param(
                dict(size=11),
                entry(10, 100, "submitted", "g1"),
                None,
                id="changed-resubmit-instead",
            ),
            pytest.param(dict(), entry(10, 100, "rejected", None), None, id="rejected"),
            pytest.param(dict(), None, None, id="unknown"),
        ],
    )
    def test_lost_sidecar_is_restored_not_resubmitted(self, found, known, expected):
        """A submitted, unchanged file without its .guid gets the journal's GUID back, not a new task."""
        assert expected == lost_sidecar_guid(self.found(**found), known)


class TestJournal:
    @pytest.fixture
    def journal(self, tmp_path):
        j = Journal(tmp_path / "state" / "journal.sqlite3")
        yield j
        j.close()

    def test_note_claim_submit(self, journal):
        """A settled file is queued once, claimed once, and done."""
        assert note(journal, P, 10, 1, now=0.0)
        assert not note(journal, P, 10, 1, now=0.1)

        job = journal.claim(now=1.0)
        assert (P, 0) == (job.path, job.attempts)
        assert journal.claim(now=1.0) is None
        assert not note(journal, P, 10, 1, now=1.1)  # duplicate event while in flight

        journal.mark_submitted(P, guid="g", sha256="h", size=10, mtime_ns=1, now=2.0)
        assert {
            "queued": 0,
            "submitting": 0,
            "submitted": 1,
            "fetching": 0,
            "completed": 0,
            "failed": 0,
            "rejected": 0,
        } == journal.counts()
        assert not note(journal, P, 10, 1, now=3.0)
        assert note(journal, P, 12, 2, now=4.0)  # content changed after its sidecar

    def test_failed_is_offered_again_only_when_due(self, journal):
        """A transient failure is rescheduled, never dropped."""
        note(journal, P, 10, 1, now=0.0)
        journal.claim(now=0.0)

        journal.mark_failed(P, error="HTTP 503", next_attempt_at=30.0, now=0.0)

        assert journal.claim(now=29.0) is None
        assert 30.0 == journal.next_due_at()
        job = journal.claim(now=30.0)
        assert (P, 1) == (job.path, job.attempts)

    def test_resume_puts_in_flight_back(self, tmp_path):
        """After a crash, `submitting` entries are queued again; nothing else changes."""
        path = tmp_path / "j.sqlite3"
        first = Journal(path)
        note(first, P, 10, 1, now=0.0)
        note(first, Path("/in/b.png"), 10, 1, now=0.0)
        first.claim(now=0.0)
        first.close()

        second = Journal(path)
        resumed = second.resume(now=1.0)

        assert 1 == resumed
        assert {"queued": 2, "submitting": 0} == {
            k: v for k, v in second.counts().items() if k in ("queued", "submitting")
        }
        second.close()

    def test_held_until_released(self, journal):
        """A held file is not claimed until its folder's override is fixed."""
        note(journal, Path("/in/sub/a.png"), 10, 1, now=0.0)
        journal.claim(now=0.0)
        journal.hold(Path("/in/sub/a.png"), reason="held: bad", now=0.0)

        assert journal.claim(now=5.0) is None
        assert 0 == journal.release_held(Path("/in/other"), now=6.0)
        assert 1 == journal.release_held(Path("/in/sub"), now=6.0)
        assert journal.claim(now=6.0) is not None

    def test_claim_file_takes_new_queued_and_changed_files_only(self, journal):
        """`submit` claims a file by path: not one in flight elsewhere, nor one already
        submitted with this very content; a claimed file is invisible to `run`'s claim."""
        b, c = Path("/in/b.png"), Path("/in/c.png")
        note(journal, b, now=0.0)
        note(journal, c, now=0.0)
        in_flight = journal.claim(now=0.0)

        new = journal.claim_file(Job(P, ROOT, 10, 1, 0, "de"), now=1.0)
        queued = journal.claim_file(
            Job(c if in_flight.path == b else b, ROOT, 10, 1), 1.0
        )
        busy = journal.claim_file(Job(in_flight.path, ROOT, 10, 1), now=1.0)
        journal.mark_submitted(P, guid="g", sha256="h", size=10, mtime_ns=1, now=2.0)
        same = journal.claim_file(Job(P, ROOT, 10, 1), now=3.0)
        changed = journal.claim_file(Job(P, ROOT, 11, 2), now=3.0)

        assert (P, "de") == (new.path, new.profile)
        assert queued is not None
        assert (None, None) == (busy, same)
        assert (P, 11, 2, 0) == (
            changed.path,
            changed.size,
            changed.mtime_ns,
            changed.attempts,
        )
        assert journal.claim(now=9.0) is None

    def test_mark_content_refuses_while_a_twin_is_sent_or_was_accepted(self, journal):
        """The check and the mark are one statement: of two twins, only one is sent, even if
        the other finishes between a lookup and the mark."""
        b = Path("/in/b.png")
        note(journal, now=0.0)
        note(journal, b, now=0.0)
        first, second = journal.claim(now=0.0), journal.claim(now=0.0)

        ok_first = journal.mark_content(first.path, "sha", "key", since=0.0)
        blocked_in_flight = journal.mark_content(second.path, "sha", "key", since=0.0)
        journal.mark_submitted(
            first.path,
            guid="g",
            sha256="sha",
            size=10,
            mtime_ns=1,
            now=5.0,
            settings_key="key",
            accepted_at=5.0,
        )
        blocked_accepted = journal.mark_content(second.path, "sha", "key", since=1.0)
        outside_window = journal.mark_content(second.path, "sha", "key", since=6.0)

        assert (True, False, False, True) == (
            ok_first,
            blocked_in_flight,
            blocked_accepted,
            outside_window,
        )
        assert (first.path, "g", 5.0) == journal.find_accepted(
            "sha", "key", 1.0, own=second.path
        )

    def test_release_stores_the_new_look_and_waits(self, journal):
        """A file that changed after it settled goes back with how it looks now, and waits."""
        note(journal, now=0.0)
        job = journal.claim(now=0.0)

        journal.release(
            Job(job.path, ROOT, 20, 5), now=1.0, not_before=3.0, reason="changed"
        )

        assert journal.claim(now=2.9) is None
        again = journal.claim(now=3.0)
        assert (20, 5, 0) == (again.size, again.mtime_ns, again.attempts)

    def test_resume_takes_back_only_what_a_process_that_is_gone_left(self, journal):
        """A daemon starting beside a live `submit` must not take the file it is sending; rows
        of a killed process, and this process's own that are no longer in flight, go back."""
        import subprocess
        import sys

        from ocrwatch.journal import owner_of

        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            live, gone = owner_of(child.pid), owner_of(2**22 + 1)
            paths = [
                Path(f"/in/{name}.png") for name in ("live", "gone", "mine", "busy")
            ]
            for path in paths:
                note(journal, path, now=0.0)
            while journal.claim(now=0.0) is not None:
                pass
            other = sqlite3.connect(journal.path)  # plays the other processes
            for owner, name in ((live, "/in/live.png"), (gone, "/in/gone.png")):
                other.execute(
                    "UPDATE files SET claimed_by=? WHERE path=?", (owner, name)
                )
            other.commit()
            other.close()

            resumed = journal.resume(1.0, in_flight=[Path("/in/busy.png")])
            states = {p.name: e.state for p in paths if (e := row_of(journal, p))}
        finally:
            child.kill()
            child.wait()

        assert 2 == resumed
        assert {
            "live.png": "submitting",
            "gone.png": "queued",
            "mine.png": "queued",
            "busy.png": "submitting",
        } == states

    def test_a_claim_whose_owner_proc_hides_is_believed_for_an_hour_only(self, journal):
        """Under ProtectProc= the daemon cannot read another user's /proc entry, only see
        that its pid is taken: such a claim holds while an upload could last, then goes
        back, since the pid may belong to another process by now."""
        import sys

        from ocrwatch.journal import UNVERIFIED_CLAIM_MAX_S, owner_of

        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            boot, pid, _ = owner_of(child.pid).split("/")
            hidden = (
                f"{boot}/{pid}/?"  # what an owner with an unreadable start looks like
            )
            note(journal, Path("/in/a.png"), now=0.0)
            journal.claim(now=0.0)
            other = sqlite3.connect(journal.path)
            other.execute("UPDATE files SET claimed_by=?", (hidden,))
            other.commit()
            other.close()

            early = journal.resume(UNVERIFIED_CLAIM_MAX_S - 60)
            late = journal.resume(UNVERIFIED_CLAIM_MAX_S + 60)
        finally:
            child.kill()
            child.wait()

        assert (0, 1) == (early, late)

    def test_processes_opening_a_fresh_journal_at_once_all_succeed(self, tmp_path):
        """`run` and `submit` starting together on a new state_dir: one migrates, the rest wait."""
        import threading

        errors = []
        for round_ in range(30):
            path = tmp_path / f"j{round_}.sqlite3"
            barrier = threading.Barrier(4)

            def open_it(path=path, barrier=barrier):
                barrier.wait()
                try:
                    Journal(path).close()
                except JournalError as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=open_it) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        assert [] == errors

    def test_lookup_in_batches(self, journal):
        """Batched lookups return every known path, across batch boundaries."""
        paths = [Path(f"/in/{i}.png") for i in range(1200)]
        for i, p in enumerate(paths):
            note(journal, p, i, i, now=0.0)

        known = journal.lookup([*paths, Path("/in/unknown.png")])

        assert 1200 == len(known)
        row = known["/in/7.png"]
        assert (7, 7, "queued", None) == (row.size, row.mtime_ns, row.state, row.guid)

    def test_schema_version_is_recorded_and_newer_is_refused(self, tmp_path):
        """The journal carries its schema version; one from a newer ocrwatch is refused clearly."""
        path = tmp_path / "j.sqlite3"
        Journal(path).close()
        db = sqlite3.connect(path)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        db.execute("PRAGMA user_version=99")
        db.commit()
        db.close()

        with pytest.raises(
            JournalError,
            match="schema 99 is newer than this ocrwatch understands; upgrade ocrwatch",
        ):
            Journal(path)
        assert len(MIGRATIONS) == version

    def test_a_version_1_journal_is_migrated_and_claims_use_the_backlog_index(
        self, tmp_path
    ):
        """Upgrading keeps every row; claiming then walks an index instead of sorting the backlog."""
        path = tmp_path / "j.sqlite3"
        db = sqlite3.connect(path)
        db.executescript(
            f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version=1; COMMIT;"  # noqa: S608 -- our own schema
            "INSERT INTO files(path, root, size, mtime_ns, state, created_at, updated_at)"
            " VALUES ('/in/a.png', '/in', 1, 1, 'queued', 0, 0);"
        )
        db.close()

        journal = Journal(path)
        job = journal.claim(now=1.0)
        journal.close()

        db = sqlite3.connect(path)
        plan = db.execute(
            f"EXPLAIN QUERY PLAN {CLAIM_SQL}", ("me", 1.0, 1.0)
        ).fetchall()
        assert len(MIGRATIONS) == db.execute("PRAGMA user_version").fetchone()[0]
        db.close()
        assert job is not None
        assert Path("/in/a.png") == job.path
        assert "files_todo" in " ".join(str(row) for row in plan)
        assert "TEMP B-TREE" not in " ".join(str(row) for row in plan)

    def test_a_damaged_journal_is_moved_aside_and_rebuilt(self, tmp_path):
        """A journal that is not SQLite any more is kept for a post-mortem under a name that
        says so, and a fresh one takes its place; `status` (read-only) says what will happen."""
        path = tmp_path / "j.sqlite3"
        path.write_bytes(b"this is not a database" * 100)

        with pytest.raises(
            JournalError, match=r"the journal is damaged .* rebuilds it"
        ):
            Journal(path, readonly=True)
        with pytest.raises(JournalError, match="the journal is damaged"):
            Journal(path)  # `submit`: reports, leaves the file as it is
        journal = Journal(path, heal=True)
        counts, rebuilds = journal.counts(), journal.rebuilds
        journal.close()

        [kept] = tmp_path.glob("j.sqlite3.corrupt-*")
        assert b"this is not a database" * 100 == kept.read_bytes()
        assert (1, 0) == (rebuilds, sum(counts.values()))

    def test_a_damaged_journal_that_cannot_be_moved_aside_is_a_journal_error(
        self, tmp_path
    ):
        """The name to keep it under is taken (here by folders, as root ignores modes):
        one JournalError, which `run` prints as a sentence, not an OSError traceback."""
        import datetime as dt

        path = tmp_path / "j.sqlite3"
        path.write_bytes(b"this is not a database" * 100)
        start = dt.datetime.now(dt.UTC)
        for second in range(10):
            stamp = (start + dt.timedelta(seconds=second)).strftime("%Y%m%dT%H%M%SZ")
            (tmp_path / f"j.sqlite3.corrupt-{stamp}" / "taken").mkdir(parents=True)

        with pytest.raises(JournalError, match="cannot open the journal"):
            Journal(path, heal=True)

        assert b"this is not a database" * 100 == path.read_bytes()

    def test_a_journal_deleted_while_open_is_written_again_with_its_rows(
        self, tmp_path
    ):
        """Someone deletes journal.sqlite3 under the running daemon: its rows come back."""
        path = tmp_path / "j.sqlite3"
        journal = Journal(path)
        note(journal, now=0.0)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

        journal.check_file()
        reader = Journal(path, readonly=True)
        counts = reader.counts()
        reader.close()
        journal.close()

        assert (1, 1) == (journal.rebuilds, counts["queued"])

    def test_claims_written_back_after_a_failed_first_try_and_rows_kept_as_they_are(
        self, tmp_path
    ):
        """Writing the claims in flight into a rebuilt journal fails once (a full disk): the
        error is a JournalError, and the next use writes them. A journal rebuilt with its rows
        keeps a finished row as it is, even if its job is still being wrapped up."""
        path = tmp_path / "j.sqlite3"
        journal = Journal(path, heal=True)
        in_flight = Job(Path("/in/flight.png"), ROOT, 5, 1)
        calls = []

        def claims() -> list[Job]:
            calls.append(1)
            if len(calls) == 1:
                raise sqlite3.OperationalError("database or disk is full")
            return [in_flight]

        journal.in_flight = claims
        with pytest.raises(JournalError, match="rebuilt journal cannot be written"):
            journal.rebuild("test: damage")
        counts = journal.counts()

        note(journal, now=0.0)
        [job] = [j for j in [journal.claim(1.0)] if j is not None]
        journal.mark_failed(job.path, error="x", next_attempt_at=99.0, now=1.0)
        journal.in_flight = lambda: [job, in_flight]  # P's outcome is recorded already
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        journal.check_file()
        kept = journal.lookup([P])[str(P)]
        journal.close()

        assert (2, 1) == (len(calls), counts["submitting"])
        assert ("failed", 99.0) == (kept.state, journal_next_attempt(path, P))


def journal_next_attempt(path: Path, file: Path) -> float:
    db = sqlite3.connect(path)
    try:
        return float(
            db.execute(
                "SELECT next_attempt_at FROM files WHERE path=?", (str(file),)
            ).fetchone()[0]
        )
    finally:
        db.close()


class TestReadiness:
    def test_unreadable_file_waits_then_goes_ahead(self):
        """A file a writer still holds (read-only open fails) waits; after 10 looks it goes ahead for an .error."""
        from ocrwatch.settle import MAX_UNREADABLE_LOOKS

        tracker = SettleTracker()
        tracker.touch(P, ROOT, 1.0, 0.0, Look(10, 1))
        verdicts = []
        now = 1.0
        for _ in range(MAX_UNREADABLE_LOOKS + 1):
            assert [(P, ROOT)] == tracker.due(now)
            verdicts.append(tracker.confirm(P, Look(10, 1), now, readable=False))
            now += 1.0

        assert [Verdict.WAIT] * MAX_UNREADABLE_LOOKS + [Verdict.SETTLED] == verdicts

    def test_is_readable_never_blocks_on_a_fifo(self, tmp_path):
        """The readiness check opens read-only and non-blocking: a FIFO does not hang it."""
        import os

        from ocrwatch.intake import is_readable

        os.mkfifo(tmp_path / "fifo.png")
        (tmp_path / "a.png").write_bytes(b"x")

        assert (True, True, False) == (
            is_readable(tmp_path / "a.png"),
            is_readable(tmp_path / "fifo.png"),
            is_readable(tmp_path / "nope.png"),
        )
