"""Results stay true to the file and are paid for once: a poll's answer never seals content
that changed meanwhile; a file renamed or moved while its result is waited for is not sent
again; a lost task is no dedupe source for its copies; `ocrwatch fetch` neither trusts a stale
`.guid` nor uploads again without `--resubmit`; trouble on our side ends at fetch_timeout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ocrwatch.cli import main
from ocrwatch.emulator.state import TaskScript
from ocrwatch.journal import Fetch, Job, Journal, Poll
from ocrwatch.taskpoll import SCALE_ENV, Next, PollSchedule, decide

from .conftest import wait_until, write_config
from .daemon_harness import daemon_thread, journal_entry
from .images import png_bytes
from .test_fetch import expected_text, fetch_config, txt

P = Path("/srv/scans/a.png")
ROOT = Path("/srv/scans")


@pytest.fixture(autouse=True)
def _short_polls(monkeypatch):
    monkeypatch.setenv(SCALE_ENV, "0.05")


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


def claimed_poll(journal: Journal) -> Poll:
    journal.note_many([Job(P, ROOT, 10, 1)], now=99.0)
    assert journal.claim(99.0) is not None
    journal.mark_submitted(
        P,
        guid="g-1",
        sha256="h",
        size=10,
        mtime_ns=1,
        now=100.0,
        settings_key="k",
        accepted_at=100.0,
        fetch=Fetch(timeout_s=600.0, first_poll_s=2.0, pdf=False),
    )
    poll = journal.claim_poll(102.0)
    assert poll is not None
    return poll


def state_of(journal: Journal, path: Path = P) -> str:
    return journal.lookup([path])[str(path)].state


def test_no_poll_outcome_applies_to_a_row_queued_anew_meanwhile(journal):
    """The scan is rewritten while its poll is in flight and the watcher queues it again:
    Completed, Error, NotExist and "not yet" about the old task all leave the row queued."""
    poll = claimed_poll(journal)
    assert [Job(P, ROOT, 11, 2)] == journal.note_many([Job(P, ROOT, 11, 2)], now=103.0)

    outcomes = [
        journal.mark_completed(poll, results=[("a.png.txt", 1, 1, 1)], now=104.0),
        journal.mark_fetch_failed(poll, reason="Error", refetch=False, now=104.0),
        journal.resubmit(poll, reason="NotExist", now=104.0),
        journal.schedule_poll(poll, at=110.0, now=104.0),
    ]

    assert [False] * 4 == outcomes
    entry = journal.lookup([P])[str(P)]
    assert ("queued", 11, 2) == (entry.state, entry.size, entry.mtime_ns)


def test_a_poll_outcome_applies_to_the_row_as_claimed(journal):
    """The same outcome on an unchanged row is recorded (the guard is no blanket refusal)."""
    poll = claimed_poll(journal)

    assert journal.mark_completed(poll, results=[], now=104.0)
    assert "completed" == state_of(journal)


def test_a_lost_task_is_no_dedupe_source_for_its_copies(journal):
    """NotExist on one file strips the dedupe fields of every row holding that GUID, so a
    copy cannot hand the lost GUID back to the file sent once more."""
    poll = claimed_poll(journal)
    copy = P.with_name("copy.png")
    journal.note_many([Job(copy, ROOT, 10, 5)], now=103.0)
    assert journal.claim(103.0) is not None
    journal.mark_submitted(
        copy,
        guid="g-1",
        sha256="h",
        size=10,
        mtime_ns=5,
        now=103.0,
        settings_key="k",
        accepted_at=100.0,
    )
    assert journal.find_accepted("h", "k", 0.0, own=P) is not None

    assert journal.resubmit(poll, reason="NotExist", now=104.0)

    assert journal.find_accepted("h", "k", 0.0, own=P) is None


def test_a_scan_rewritten_while_its_poll_is_in_flight_gets_its_own_text(
    emulator, tmp_path, inbox
):
    """The scan is rewritten while the GET for its first content's result is on the wire:
    that answer seals nothing; the new content is sent and gets its own text."""
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        api={"concurrency": 1},
        profiles={"default": {"fetch_results": True}},
    )
    scan = inbox / "scan.png"

    with daemon_thread(config):
        scan.write_bytes(png_bytes(5))
        wait_until(lambda: (inbox / "scan.png.guid").exists(), 20, "the .guid")
        emulator.state.latency_s = 1.5
        wait_until(lambda: emulator.state.in_flight > 0, 10, "a poll on the wire")
        emulator.state.latency_s = 0.0
        scan.write_bytes(png_bytes(77))
        wait_until(
            lambda: txt(scan).exists() and txt(scan).read_text() == expected_text(scan),
            20,
            "the new content's text",
        )

    assert 2 == len(emulator.submissions())
    entry = journal_entry(tmp_path / "state", scan)
    assert entry is not None
    assert "completed" == entry.state


def test_a_scan_renamed_while_its_result_is_waited_for_is_not_sent_again(
    emulator, tmp_path, inbox
):
    """Renamed while its task runs: the new name reuses the task (one upload) and gets the
    text; the old row is not forgotten on the way."""
    config = fetch_config(tmp_path, emulator.url, inbox)
    emulator.script_next_tasks(TaskScript(processing_s=2))
    scan, new = inbox / "scan.png", inbox / "invoice.png"

    with daemon_thread(config):
        scan.write_bytes(png_bytes(5))
        wait_until(lambda: (inbox / "scan.png.guid").exists(), 20, "the .guid")
        scan.rename(new)
        wait_until(lambda: txt(new).exists(), 20, "the text under the new name")

    assert 1 == len(emulator.submissions())
    assert expected_text(new) == txt(new).read_text()


def test_a_scan_moved_with_its_guid_while_fetching_still_gets_its_result(
    emulator, tmp_path, inbox
):
    """Moved to a subfolder together with its `.guid` while its task runs: the `.guid` is
    adopted, and the result is fetched for the new path, with no second upload."""
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2, "recursive": True}],
        profiles={"default": {"fetch_results": True}},
    )
    emulator.script_next_tasks(TaskScript(processing_s=2))
    done = inbox / "done"
    done.mkdir()
    scan = inbox / "scan.png"

    with daemon_thread(config):
        scan.write_bytes(png_bytes(5))
        wait_until(lambda: (inbox / "scan.png.guid").exists(), 20, "the .guid")
        (inbox / "scan.png.guid").rename(done / "scan.png.guid")
        scan.rename(done / "scan.png")
        wait_until(lambda: txt(done / "scan.png").exists(), 20, "the moved file's text")

    assert 1 == len(emulator.submissions())
    assert expected_text(done / "scan.png") == txt(done / "scan.png").read_text()


def test_a_watched_folder_that_empties_while_fetching_forgets_nothing(
    emulator, tmp_path, inbox
):
    """Everything vanishes from the watched folder (a share unmounted) while a result is
    waited for: the row keeps `fetching` and says why; back again, the result is written
    and nothing is sent twice."""
    config = fetch_config(tmp_path, emulator.url, inbox)
    emulator.script_next_tasks(TaskScript(processing_s=3))
    scan, away = inbox / "scan.png", tmp_path / "away"
    away.mkdir()
    state = tmp_path / "state"

    def waiting_for_the_share() -> bool:
        entry = journal_entry(state, scan)
        return (
            entry is not None
            and entry.state == "fetching"
            and "missing or empty" in (entry.last_error or "")
        )

    with daemon_thread(config):
        scan.write_bytes(png_bytes(5))
        wait_until(lambda: (inbox / "scan.png.guid").exists(), 20, "the .guid")
        for name in ("scan.png", "scan.png.guid"):
            (inbox / name).rename(away / name)
        wait_until(waiting_for_the_share, 20, "a poll that found the folder empty")
        for name in ("scan.png.guid", "scan.png"):
            (away / name).rename(inbox / name)
        wait_until(lambda: txt(scan).exists(), 20, "the text once it is back")

    assert 1 == len(emulator.submissions())


def test_a_lost_task_shared_by_a_copy_is_sent_again_for_both(emulator, tmp_path, inbox):
    """A copy deduped onto a task the service then loses: the file is sent once more (not
    deduped back onto the lost GUID) and both get their text from the new task."""
    config = fetch_config(tmp_path, emulator.url, inbox)
    emulator.script_next_tasks(TaskScript(processing_s=60))
    scan, copy = inbox / "scan.png", inbox / "copy.png"

    with daemon_thread(config):
        scan.write_bytes(png_bytes(5))
        wait_until(lambda: (inbox / "scan.png.guid").exists(), 20, "the .guid")
        copy.write_bytes(png_bytes(5))
        wait_until(lambda: (inbox / "copy.png.guid").exists(), 20, "the copy's .guid")
        emulator.lose_task((inbox / "scan.png.guid").read_text().strip())
        wait_until(lambda: txt(scan).exists() and txt(copy).exists(), 20, "both texts")

    assert 2 == len(emulator.submissions())
    assert not (inbox / "scan.png.error").exists()
    assert not (inbox / "copy.png.error").exists()


def test_fetch_refuses_a_stale_guid(emulator, tmp_path, inbox, capsys):
    """A new scan under the name of a fetched one, with the old `.guid` still beside it:
    `fetch` does not write the old task's text for it, and says why (exit 1)."""
    config = write_config(
        tmp_path / "config.yaml", emulator.url, [{"path": str(inbox)}]
    )
    scan = inbox / "a.png"
    scan.write_bytes(png_bytes(10))
    assert 0 == main(["submit", "-c", str(config), str(inbox)])
    assert 0 == main(["fetch", "-c", str(config)])
    old_text = txt(scan).read_text()
    scan.write_bytes(png_bytes(99))
    st = scan.stat()
    os.utime(scan, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    capsys.readouterr()

    code = main(["fetch", "-c", str(config), str(scan)])

    assert 1 == code
    assert "stale .guid" in capsys.readouterr().out
    assert old_text == txt(scan).read_text()
    entry = journal_entry(tmp_path / "state", scan)
    assert entry is not None
    assert (entry.size, entry.mtime_ns) != (
        scan.stat().st_size,
        scan.stat().st_mtime_ns,
    )


def test_fetch_uploads_an_expired_task_again_only_with_resubmit(
    emulator, tmp_path, inbox, capsys
):
    """Tasks the service no longer has: plain `fetch` uploads nothing and says so; with
    `--resubmit` the file is sent again and the summary says it was billed."""
    config = write_config(
        tmp_path / "config.yaml", emulator.url, [{"path": str(inbox)}]
    )
    old, kept = inbox / "old.png", inbox / "kept.png"
    old.write_bytes(png_bytes(30))
    kept.write_bytes(png_bytes(31))
    assert 0 == main(["submit", "-c", str(config), str(inbox)])
    for scan in (old, kept):
        emulator.lose_task(scan.with_name(scan.name + ".guid").read_text().strip())
    capsys.readouterr()

    plain = main(["fetch", "-c", str(config), str(old)])
    plain_out = capsys.readouterr().out
    resubmit = main(["fetch", "-c", str(config), "--resubmit", str(kept)])
    resubmit_out = capsys.readouterr().out

    assert 1 == plain
    assert "no longer has the task" in plain_out
    assert not txt(old).exists()
    assert 0 == resubmit
    assert "fetched 1 (1 uploaded again, billed)" in resubmit_out
    assert expected_text(kept) == txt(kept).read_text()
    assert 3 == len(emulator.submissions())


def test_a_result_that_cannot_be_written_ends_at_fetch_timeout(
    emulator, tmp_path, inbox
):
    """Its `.guid` cannot be written (a folder holds the name), so its result cannot be
    recorded: asked for again only until fetch_timeout, then `.error`, with one upload."""
    config = fetch_config(tmp_path, emulator.url, inbox, fetch_timeout="1s")
    scan = inbox / "scan.png"
    blocker = inbox / "scan.png.guid"
    blocker.mkdir()
    (blocker / "keep").write_text("x")
    error = inbox / "scan.png.error"

    with daemon_thread(config):
        scan.write_bytes(png_bytes(6))
        wait_until(error.exists, 20, ".error at fetch_timeout")

    assert "no result written in time" in error.read_text()
    assert not txt(scan).exists()
    assert 1 == len(emulator.submissions())
    entry = journal_entry(tmp_path / "state", scan)
    assert entry is not None
    assert "rejected" == entry.state


def test_a_task_seen_completed_is_never_uploaded_again(journal):
    """The service had the result once (it could not be written): NotExist later means it
    expired, and the poll says so instead of sending the file again."""
    poll = claimed_poll(journal)
    assert not poll.refetch

    assert journal.schedule_poll(poll, at=103.0, now=102.5, seen_completed=True)
    again = journal.claim_poll(103.0)

    assert again is not None
    assert again.refetch
    decision = decide(
        "NotExist",
        messages=(),
        polls=again.polls,
        resubmits=0,
        refetch=again.refetch,
        deadline=again.deadline,
        timeout_s=again.fetch_s,
        now=103.0,
        schedule=PollSchedule(),
    )
    assert Next.FAIL is decision.next
    assert "no longer has the task" in decision.reason
