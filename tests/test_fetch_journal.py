"""The journal's side of results (schema 5): a poll is claimed once, a dead process's poll is
freed, `retry` after a timeout fetches again, and an older journal is upgraded in place."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ocrwatch.journal import MIGRATIONS, Fetch, Job, Journal
from ocrwatch.journalfile import JournalFile

P = Path("/srv/scans/a.png")
ROOT = Path("/srv/scans")


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


def submitted_fetching(journal: Journal, *, now: float = 100.0) -> None:
    journal.note_many([Job(P, ROOT, 10, 1)], now=now - 1)
    assert journal.claim(now - 1) is not None
    journal.mark_submitted(
        P,
        guid="g-1",
        sha256="h",
        size=10,
        mtime_ns=1,
        now=now,
        settings_key="k",
        accepted_at=now,
        fetch=Fetch(timeout_s=600.0, first_poll_s=2.0, pdf=True),
    )


def test_a_poll_is_due_after_its_wait_and_claimed_once(journal):
    """The first poll is due 2 s after the upload; one claim gets it, a second gets none."""
    submitted_fetching(journal)

    early = journal.claim_poll(101.0)
    poll = journal.claim_poll(102.0)
    again = journal.claim_poll(102.0)

    assert (None, None) == (early, again)
    assert poll is not None
    assert ("g-1", True, 0, 700.0) == (poll.guid, poll.pdf, poll.polls, poll.deadline)
    assert math.inf == journal.next_due_at()  # a poll in flight wakes no idle thread


def test_a_dead_processs_poll_is_freed_at_resume(journal):
    """A poll claimed by a process that is gone (a kill) is due again at once after resume."""
    submitted_fetching(journal)
    journal._file.write(
        "UPDATE files SET claimed_by='gone/1/1', next_attempt_at=500 WHERE path=?",
        (str(P),),
    )

    journal.resume(200.0)
    poll = journal.claim_poll(200.0)

    assert poll is not None
    assert P == poll.path


def test_retry_after_a_timeout_fetches_again_without_upload(journal):
    """A row failed at its deadline (refetch) goes back to `fetching` with a new deadline,
    its GUID kept; one failed in Error goes back to the queue for an upload."""
    submitted_fetching(journal)
    first = journal.claim_poll(800.0)
    assert first is not None
    journal.mark_fetch_failed(
        first, reason="no result after 10 min", refetch=True, now=800.0
    )

    [back] = journal.requeue([P], now=900.0)
    poll = journal.claim_poll(900.0)

    assert P == back
    assert poll is not None
    assert ("g-1", 1500.0) == (poll.guid, poll.deadline)
    journal.mark_fetch_failed(poll, reason="Error", refetch=False, now=901.0)
    journal.requeue([P], now=902.0)
    assert "queued" == journal.lookup([P])[str(P)].state


def test_a_journal_of_schema_4_is_upgraded_with_its_rows(tmp_path):
    """An older journal gains schema 5 at open; its submitted row stays as it was."""
    path = tmp_path / "journal.sqlite3"
    old = JournalFile(path, MIGRATIONS[:4])
    old.write(
        "INSERT INTO files(path, root, size, mtime_ns, state, guid, created_at,"
        " updated_at) VALUES (?, ?, 1, 1, 'submitted', 'g', 1, 1)",
        (str(P), str(ROOT)),
    )
    old.close()

    journal = Journal(path)
    try:
        entry = journal.lookup([P])[str(P)]
        counts = journal.counts()
    finally:
        journal.close()

    assert ("submitted", "g") == (entry.state, entry.guid)
    assert (1, 0, 0) == (counts["submitted"], counts["fetching"], counts["completed"])


def test_result_files_outlive_their_originals_row(tmp_path):
    """The result files written stay known as ocrwatch's after the original's row is gone."""
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        journal.note_results(
            P, [("a.png.txt", 7, 12, 34), ("a.png.pdf", 8, 56, 78)], 1.0
        )
        journal.forget(P)
        written = journal.written_results([P.parent / "a.png.pdf", P.parent / "b.pdf"])
    finally:
        journal.close()

    assert {str(P.parent / "a.png.pdf"): (56, 78)} == written


def test_schema_6_takes_the_results_rows_already_hold(tmp_path):
    """A journal of schema 5 gains the results table filled from its rows' `results`."""
    path = tmp_path / "journal.sqlite3"
    old = JournalFile(path, MIGRATIONS[:5])
    old.write(
        "INSERT INTO files(path, root, size, mtime_ns, state, guid, results, created_at,"
        " updated_at) VALUES (?, ?, 1, 1, 'completed', 'g', ?, 1, 1)",
        (str(P), str(ROOT), '[["a.png.pdf", 8, 56, 78]]'),
    )
    old.close()

    journal = Journal(path)
    try:
        written = journal.written_results([P.parent / "a.png.pdf"])
    finally:
        journal.close()

    assert {str(P.parent / "a.png.pdf"): (56, 78)} == written
