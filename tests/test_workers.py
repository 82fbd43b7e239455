"""The worker pool survives a failing journal: it logs, backs off, and its threads stay alive."""

from __future__ import annotations

from structlog.testing import capture_logs

from ocrwatch.journal import Journal
from ocrwatch.workers import WorkerPool

from .conftest import wait_until


def test_journal_failure_is_logged_and_the_worker_lives_on(tmp_path):
    """A journal that errors on claim (here: its connection is gone) does not kill worker threads."""
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.close()  # every query now raises JournalError
    pool = WorkerPool(
        journal,
        2,
        submitter=lambda: None,
        profile_for=lambda job: "default",
        on_result=lambda r: None,
    )

    with capture_logs() as logs:
        pool.start()
        wait_until(
            lambda: sum(e["event"] == "worker.failed" for e in logs) >= 2,
            5,
            "both workers logged",
        )
        alive = [t.is_alive() for t in pool._threads]
        stopped = pool.stop(timeout_s=10)

    assert [True, True] == alive
    assert stopped
    failed = next(e for e in logs if e["event"] == "worker.failed")
    assert ("error", 5.0) == (failed["log_level"], failed["retry_in_s"])
