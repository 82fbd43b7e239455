"""`status` that tells the truth, `retry`, a deleted `.error`, and the daily prune of the journal."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ocrwatch.catchup import error_removed
from ocrwatch.daemon import Rescan
from ocrwatch.emulator import Emulator
from ocrwatch.jobloop import JobLoop
from ocrwatch.journal import MIGRATIONS, Entry, Job, Journal
from ocrwatch.journalfile import JournalFile
from ocrwatch.pause import PAUSE_KEY, Pause
from ocrwatch.selection import Found
from ocrwatch.upkeep import BATCH, Pruner, prune_due

from .conftest import CLIENT_ID, OCRWATCH, SECRET, cli_env, wait_until, write_config
from .daemon_harness import (
    daemon_thread,
    in_flight,
    journal_entry,
    spawn,
    status_json,
)
from .images import write_png
from .test_jobloop import Clock, make_runtime, queue

DAY = 86400.0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OCRWATCH, *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        check=False,
        timeout=60,
    )


def config_for(tmp_path: Path, url: str, inbox: Path, **extra) -> Path:
    tmp_path.mkdir(exist_ok=True)
    return write_config(
        tmp_path / "config.yaml",
        url,
        [{"path": str(inbox), "settle_seconds": 0.1}],
        **extra,
    )


def open_journal(config: Path) -> Journal:
    return Journal(config.parent / "state" / "journal.sqlite3")


def note(journal: Journal, path: Path, now: float) -> Job:
    job = Job(path, path.parent, 1, 1)
    journal.note_many([job], now)
    return job


def reject(journal: Journal, path: Path, now: float, why: str = "bad") -> None:
    note(journal, path, now)
    journal.mark_rejected(path, reason=why, size=1, mtime_ns=1, now=now)


def submit(journal: Journal, path: Path, now: float) -> None:
    note(journal, path, now)
    guid = "0" * 8 + "-0000-0000-0000-" + "0" * 12
    journal.mark_submitted(
        path, guid=guid, sha256=None, size=1, mtime_ns=1, now=now, accepted_at=now
    )


class TestKeys:
    @pytest.mark.parametrize(
        "state",
        [
            pytest.param("missing", id="no-state-dir"),
            pytest.param("no-journal", id="state-dir-without-journal"),
            pytest.param("empty", id="zero-byte-journal"),
            pytest.param("damaged", id="damaged-journal"),
        ],
    )
    def test_a_fresh_state_dir_has_every_key_a_populated_one_has(
        self, tmp_path, inbox, emulator, state
    ):
        """Scripts need no special case: the same keys whatever state_dir holds."""
        populated = config_for(tmp_path / "a", emulator.url, inbox)
        journal = open_journal(populated)
        now = time.time()
        submit(journal, inbox / "done.png", now - 60)
        reject(journal, inbox / "bad.png", now - 30)
        note(journal, inbox / "waiting.png", now - 300)
        note(journal, inbox / "held.png", now)
        journal.hold(inbox / "held.png", reason="held: broken .ocrwatch.yaml", now=now)
        journal.close()
        fresh = config_for(tmp_path / "b", emulator.url, inbox)
        state_dir = fresh.parent / "state"
        if state != "missing":
            state_dir.mkdir()
        if state == "empty":
            (state_dir / "journal.sqlite3").touch()
        if state == "damaged":
            (state_dir / "journal.sqlite3").write_bytes(b"garbage!" * 512)

        full, bare = status_json(populated), status_json(fresh)

        assert sorted(full) == sorted(bare)
        assert sorted(full["pause"]) == sorted(bare["pause"])
        assert (False, None, 0, None) == (
            bare["daemon_running"],
            bare["daemon_pid"],
            bare["total"],
            bare["oldest_queued"],
        )
        assert bare["note"]

    def test_a_populated_journal_shows_oldest_queued_submissions_and_held(
        self, tmp_path, inbox, emulator
    ):
        """Counts, the oldest queued file with its age, submissions in the last hour and day,
        and every held file with its reason, as JSON and as text."""
        config = config_for(tmp_path, emulator.url, inbox)
        journal = open_journal(config)
        now = time.time()
        submit(journal, inbox / "recent.png", now - 60)
        submit(journal, inbox / "today.png", now - 7200)
        submit(journal, inbox / "old.png", now - 3 * DAY)
        note(journal, inbox / "waiting.png", now - 300)
        note(journal, inbox / "newer.png", now - 10)
        for i in range(12):
            note(journal, inbox / f"held-{i}.png", now)
            journal.hold(inbox / f"held-{i}.png", reason=f"held: reason {i}", now=now)
        journal.close()

        report = status_json(config)
        text = run_cli("status", "-c", str(config)).stdout

        assert (1, 2, 3) == (
            report["submitted_last_hour"],
            report["submitted_last_day"],
            report["counts"]["submitted"],
        )
        assert str(inbox / "waiting.png") == report["oldest_queued"]["path"]
        assert 299 <= report["oldest_queued"]["age_s"] < 400
        assert 12 == len(report["held_files"]) == report["held"]
        assert f"oldest queued: {inbox / 'waiting.png'}, since " in text
        assert "(5m ago)" in text
        assert "submitted: 1 in the last hour, 2 in the last day" in text
        assert f"  {inbox / 'held-11.png'}: held: reason 11" in text
        assert "daemon: not running" in text

    def test_status_reads_a_journal_of_the_previous_schema(
        self, tmp_path, inbox, emulator
    ):
        """A daemon of the previous version still runs (schema 3, no meta table, no new
        indexes): status reads it as it is, read-only, without a note."""
        config = config_for(tmp_path, emulator.url, inbox)
        old = JournalFile(tmp_path / "state" / "journal.sqlite3", MIGRATIONS[:3])
        old.write(
            "INSERT INTO files(path, root, size, mtime_ns, state, accepted_at,"
            " created_at, updated_at) VALUES (?, ?, 1, 1, 'submitted', ?, ?, ?)",
            (str(inbox / "a.png"), str(inbox), time.time(), time.time(), time.time()),
        )
        old.close()

        report = status_json(config)

        assert (None, 1, 1) == (
            report["note"],
            report["counts"]["submitted"],
            report["submitted_last_hour"],
        )


class TestWhileRunningAndAfter:
    def test_status_while_the_daemon_runs_names_it_and_its_pid(
        self, tmp_path, inbox, emulator
    ):
        """A running daemon (in this process): running, its pid, the submission counted."""
        config = config_for(tmp_path, emulator.url, inbox)
        with daemon_thread(config):
            write_png(inbox / "a.png", 1)
            wait_until(lambda: (inbox / "a.png.guid").exists(), 10, "sent")
            report = status_json(config)
            text = run_cli("status", "-c", str(config)).stdout

        assert (True, os.getpid(), 1, 0) == (
            report["daemon_running"],
            report["daemon_pid"],
            report["submitted_last_hour"],
            report["queue_depth"],
        )
        assert f"daemon: running (pid {os.getpid()})" in text
        assert "uploads: not paused" in text

    def test_after_kill_9_status_says_not_running_and_shows_the_claim(
        self, tmp_path, inbox
    ):
        """A daemon killed mid-upload: not running, no pid, the row still `submitting`."""
        with Emulator(client_id=CLIENT_ID, client_secret=SECRET, latency_s=30) as slow:
            config = config_for(tmp_path, slow.url, inbox)
            write_png(inbox / "a.png", 1)
            proc = spawn(config, tmp_path / "run.log", wait_started=True)
            state = tmp_path / "state"
            wait_until(lambda: in_flight(state) == 1, 15, "claimed")
            running = status_json(config)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

            report = status_json(config)
            text = run_cli("status", "-c", str(config)).stdout

        assert (True, proc.pid) == (running["daemon_running"], running["daemon_pid"])
        assert (False, None, 1, 1) == (
            report["daemon_running"],
            report["daemon_pid"],
            report["counts"]["submitting"],
            report["queue_depth"],
        )
        assert "daemon: not running" in text
        assert "submitting 1" in text


class TestPause:
    def test_refused_credentials_show_as_a_pause_with_why_and_until(
        self, tmp_path, inbox, emulator
    ):
        """The emulator refuses the credentials: status says paused, why, until when; after
        the daemon stops, that the pause was left by a stopped daemon."""
        config = config_for(tmp_path, emulator.url, inbox)
        with daemon_thread(config) as daemon:
            emulator.set_credentials(CLIENT_ID, "another-secret")
            write_png(inbox / "a.png", 1)
            wait_until(lambda: daemon.health().paused, 10, "paused")
            paused = status_json(config)
            text = run_cli("status", "-c", str(config)).stdout
        stopped = status_json(config)
        stopped_text = run_cli("status", "-c", str(config)).stdout

        pause = paused["pause"]
        until = dt.datetime.fromisoformat(pause["until"]).timestamp()
        assert (True, "credentials_refused") == (pause["active"], pause["reason"])
        assert f"client_id `{CLIENT_ID}`" in pause["error"]
        assert until - time.time() > 30
        assert 1 == paused["counts"]["queued"]
        assert "uploads: PAUSED, the credentials were refused" in text
        assert (False, True) == (
            stopped["pause"]["active"],
            stopped["pause"]["left_by_stopped_daemon"],
        )
        assert "the daemon that stopped had paused them" in stopped_text
        assert SECRET not in text + json.dumps(paused) + stopped_text

    def test_a_reload_removes_the_pause_note(self, tmp_path, inbox, emulator):
        """New credentials deserve a try: after a reload, status shows no pause."""
        config = config_for(tmp_path, emulator.url, inbox)
        with daemon_thread(config) as daemon:
            emulator.set_credentials(CLIENT_ID, "another-secret")
            write_png(inbox / "a.png", 1)
            wait_until(lambda: daemon.health().paused, 10, "paused")
            emulator.set_credentials(CLIENT_ID, SECRET)
            daemon.flags.reload = True
            wait_until(lambda: (inbox / "a.png.guid").exists(), 10, "sent")
            report = status_json(config)

        assert (False, None) == (report["pause"]["active"], report["pause"]["reason"])

    def test_a_refusal_that_goes_on_keeps_its_since(self, tmp_path, emulator):
        """Refused again when the minute's pause ends: status says since when it lasts,
        not since the last try; a reload starts afresh."""
        clock = Clock(time.time())
        (tmp_path / "in").mkdir()
        journal = Journal(tmp_path / "state" / "journal.sqlite3")
        loop = JobLoop(journal, make_runtime(tmp_path, emulator.url), clock=clock)
        emulator.set_credentials(CLIENT_ID, "another-secret")
        queue(journal, write_png(tmp_path / "in" / "a.png", 1), now=clock.now)
        first_at = clock.now

        loop.step()
        first = Pause.decode(journal.meta().get(PAUSE_KEY))
        clock.now = first.until + 1 if first else clock.now
        loop.step()  # the pause ran out: cleared, then refused again
        second = Pause.decode(journal.meta().get(PAUSE_KEY))
        journal.close()

        assert first is not None
        assert second is not None
        assert (first_at, first_at) == (first.since, second.since)
        assert second.until > first.until

    def test_the_token_endpoints_rate_limit_is_noted(self, tmp_path, emulator):
        """A 429 from the token endpoint that outlasts the retries is noted as a pause."""
        clock = Clock(time.time())
        (tmp_path / "in").mkdir()
        journal = Journal(tmp_path / "state" / "journal.sqlite3")
        loop = JobLoop(journal, make_runtime(tmp_path, emulator.url), clock=clock)
        emulator.fail_token_next(429, times=20, retry_after="30")
        queue(journal, write_png(tmp_path / "in" / "a.png", 1), now=clock.now)

        loop.step()

        pause = Pause.decode(journal.meta().get(PAUSE_KEY))
        journal.close()
        assert pause is not None
        assert ("rate_limited", True) == (pause.why.value, pause.until > clock.now)


class TestRetry:
    def rejected_three(self, config: Path, inbox: Path, emulator: Emulator) -> None:
        for name in ("a", "b", "c"):
            write_png(inbox / f"{name}.png", ord(name))
        emulator.fail_next(400, times=3, detail="quota exceeded")
        result = run_cli("submit", "-c", str(config), str(inbox))
        assert 1 == result.returncode, result.stderr
        assert 3 == len(list(inbox.glob("*.error")))

    def test_retry_requeues_exactly_the_named_files_and_the_daemon_sends_them(
        self, tmp_path, inbox, emulator
    ):
        """`retry a b`: their `.error` goes, they are queued again and sent; c stays."""
        config = config_for(tmp_path, emulator.url, inbox)
        self.rejected_three(config, inbox, emulator)

        result = run_cli(
            "retry", "-c", str(config), str(inbox / "a.png"), str(inbox / "b.png")
        )
        rows = [journal_entry(tmp_path / "state", inbox / f"{n}.png") for n in "abc"]
        entries = {n: row.state for n, row in zip("abc", rows, strict=True) if row}
        with daemon_thread(config):
            wait_until(
                lambda: (
                    (inbox / "a.png.guid").exists() and (inbox / "b.png.guid").exists()
                ),
                10,
                "a and b sent",
            )
        sent = len(emulator.submissions())

        assert 0 == result.returncode
        assert "re-queued 2, not re-queued 0" in result.stdout
        assert {"a": "queued", "b": "queued", "c": "rejected"} == entries
        assert 2 == sent
        assert (inbox / "c.png.error").exists()
        assert not (inbox / "c.png.guid").exists()

    def test_retry_all_failed_while_the_daemon_runs(self, tmp_path, inbox, emulator):
        """`retry --all-failed` beside a running daemon: it claims them within seconds."""
        config = config_for(tmp_path, emulator.url, inbox)
        with daemon_thread(config):
            emulator.fail_next(400, times=2)
            write_png(inbox / "a.png", 1)
            write_png(inbox / "b.png", 2)
            wait_until(lambda: len(list(inbox.glob("*.error"))) == 2, 10, "rejected")

            result = run_cli("retry", "-c", str(config), "--all-failed")
            wait_until(lambda: len(list(inbox.glob("*.guid"))) == 2, 10, "sent")
            errors = list(inbox.glob("*.error"))

        assert (0, []) == (result.returncode, errors)
        assert "re-queued 2" in result.stdout

    def test_retry_says_what_it_did_not_requeue(self, tmp_path, inbox, emulator):
        """A folder stands for its failed files; a file not in the journal, or submitted,
        is named with why."""
        config = config_for(tmp_path, emulator.url, inbox)
        journal = open_journal(config)
        now = time.time()
        reject(journal, inbox / "sub" / "x.png", now)
        submit(journal, inbox / "done.png", now)
        journal.close()
        (inbox / "sub").mkdir()

        result = run_cli(
            "retry",
            "-c",
            str(config),
            str(inbox / "sub"),
            str(inbox / "done.png"),
            str(inbox / "never.png"),
        )

        assert 0 == result.returncode
        assert f"  re-queued: {inbox / 'sub' / 'x.png'}" in result.stdout
        assert (
            f"  not re-queued: {inbox / 'done.png'}: submitted, not failed or rejected"
            in result.stdout
        )
        assert f"  not re-queued: {inbox / 'never.png'}: not in the journal" in (
            result.stdout
        )

    @pytest.mark.parametrize(
        "args",
        [
            pytest.param([], id="nothing"),
            pytest.param(["x.png", "--all-failed"], id="both"),
        ],
    )
    def test_retry_usage_errors_exit_2(self, config_file, args):
        """Neither paths nor --all-failed, or both: one sentence, exit 2."""
        result = run_cli("retry", "-c", str(config_file), *args)

        assert (2, "") == (result.returncode, result.stdout)
        assert "give the files or folders to retry, or --all-failed" in result.stderr

    def test_status_failed_lists_every_failed_and_rejected_file(
        self, tmp_path, inbox, emulator
    ):
        """More than the 10 recent ones: `--failed` lists them all, with time and reason."""
        config = config_for(tmp_path, emulator.url, inbox)
        journal = open_journal(config)
        now = time.time()
        for i in range(12):
            reject(journal, inbox / f"bad-{i:02}.png", now - i, why=f"reason {i}")
        journal.close()

        text = run_cli("status", "-c", str(config), "--failed").stdout
        report = json.loads(
            run_cli("status", "-c", str(config), "--json", "--failed").stdout
        )

        assert (10, 12) == (len(report["recent_failures"]), len(report["failed_files"]))
        assert 12 == sum(line.startswith("  ") for line in text.splitlines())
        assert f"rejected {inbox / 'bad-11.png'} (attempts 1): reason 11" in text


class TestDeletedError:
    def test_deleting_an_error_requeues_the_file_at_the_next_scan(
        self, tmp_path, inbox, emulator
    ):
        """The user fixed the cause and deleted `.error`: the next scan sends it again; a
        rejected file whose `.error` stays is left alone."""
        config = config_for(tmp_path, emulator.url, inbox)
        with daemon_thread(config) as daemon:
            emulator.fail_next(400, times=2)
            write_png(inbox / "a.png", 1)
            write_png(inbox / "b.png", 2)
            wait_until(lambda: len(list(inbox.glob("*.error"))) == 2, 10, "rejected")
            (inbox / "a.png.error").unlink()
            scans = daemon.health().scans_finished
            daemon.items.put(Rescan(inbox, "test: another look"))
            wait_until(lambda: daemon.health().scans_finished > scans, 10, "scanned")
            wait_until(lambda: (inbox / "a.png.guid").exists(), 10, "a sent again")
            b = daemon.journal.lookup([inbox / "b.png"])[str(inbox / "b.png")]

        assert 1 == len(emulator.submissions())
        assert ("rejected", True) == (b.state, (inbox / "b.png.error").exists())

    @pytest.mark.parametrize(
        ("state", "sidecar", "changed", "reason", "expected"),
        [
            pytest.param("rejected", None, False, "bad", True, id="error-deleted"),
            pytest.param("rejected", 5, False, "bad", False, id="error-kept"),
            pytest.param("rejected", None, True, "bad", False, id="changed-is-note"),
            pytest.param("failed", None, False, "bad", False, id="failed"),
            pytest.param(
                "rejected",
                None,
                False,
                "bad (no .error: cannot write x.error: File name too long)",
                False,
                id="error-never-written",
            ),
        ],
    )
    def test_error_removed(self, state, sidecar, changed, reason, expected):
        """Only an unchanged rejected file whose `.error` was written and is gone."""
        found = Found("/in/a.png", 10, 20 if changed else 10, sidecar)
        known = Entry("/in/a.png", 10, 10, state, None, 1, 0.0, reason, False, 0.0)

        assert expected == error_removed(found, known)


class TestPrune:
    def test_prune_removes_only_old_finished_rows_of_missing_files(self, tmp_path):
        """Kept: a file that exists (a dangling link too), a recent row, rows not done."""
        journal = Journal(tmp_path / "journal.sqlite3")
        now = 1_000 * DAY
        old = now - 91 * DAY
        files = tmp_path / "files"
        files.mkdir()
        (files / "here.png").write_bytes(b"x")
        (files / "link.png").symlink_to(files / "nowhere")
        submit(journal, files / "gone.png", old)
        reject(journal, files / "gone-bad.png", old)
        submit(journal, files / "here.png", old)
        submit(journal, files / "link.png", old)
        submit(journal, files / "recent-gone.png", now - 89 * DAY)
        note(journal, files / "queued-gone.png", old)
        journal.mark_failed(
            files / "queued-gone.png", error="x", next_attempt_at=now, now=old
        )

        with capture_logs() as logs:
            removed = Pruner(journal, lambda: 90).run(now)
        left = sorted(Path(p).name for p in journal.lookup(files.iterdir()))
        rows = journal.counts()
        journal.close()

        assert 2 == removed
        assert ["here.png", "link.png"] == left
        assert (2, 1) == (rows["submitted"] - 1, rows["failed"])
        assert {
            "event": "journal.pruned",
            "rows": 2,
            "result_records": 0,
            "keep_days": 90,
            "log_level": "info",
        } in logs

    def test_prune_keeps_the_rows_of_a_watched_folder_that_is_empty_or_missing(
        self, tmp_path
    ):
        """A share not mounted yet is an empty mount point (or no folder): its files are
        not gone, only out of sight, and keep their rows; a folder with files in it does not."""
        journal = Journal(tmp_path / "journal.sqlite3")
        now, old = 1_000 * DAY, 1_000 * DAY - 100 * DAY
        mounted, unmounted, absent = (tmp_path / n for n in ("nas", "usb", "gone"))
        mounted.mkdir()
        unmounted.mkdir()
        (mounted / "other.png").write_bytes(b"x")
        for root in (mounted, unmounted, absent):
            submit(journal, root / "a.png", old)

        removed = Pruner(
            journal, lambda: 90, roots=lambda: [mounted, unmounted, absent]
        ).run(now)
        left = sorted(
            journal.lookup([r / "a.png" for r in (mounted, unmounted, absent)])
        )
        journal.close()

        assert (1, [str(absent / "a.png"), str(unmounted / "a.png")]) == (removed, left)

    def test_prune_drops_the_records_of_result_files_that_are_gone(self, tmp_path):
        """A kept result's record outlives its original (so it is never input), but not the
        result file itself: the journal must not grow with every result ever written."""
        journal = Journal(tmp_path / "journal.sqlite3")
        now = 1_000 * DAY
        files = tmp_path / "in"
        files.mkdir()
        (files / "kept.png.txt").write_text("text")
        journal.note_results(
            files / "kept.png",
            [("kept.png.txt", 1, 4, 1), ("gone.png.txt", 2, 4, 1)],
            now - 100 * DAY,
        )
        journal.note_results(
            files / "young.png", [("young.png.txt", 3, 4, 1)], now - DAY
        )

        Pruner(journal, lambda: 90).run(now)
        left = sorted(
            Path(p).name
            for p in journal.written_results(
                files / n for n in ("kept.png.txt", "gone.png.txt", "young.png.txt")
            )
        )
        journal.close()

        assert ["kept.png.txt", "young.png.txt"] == left

    def test_prune_walks_in_batches_and_runs_once_a_day(self, tmp_path):
        """More rows than a batch all go, one batch per step; then nothing until a day later."""
        journal = Journal(tmp_path / "journal.sqlite3")
        now = 1_000 * DAY
        for i in range(BATCH * 2 + 10):
            submit(journal, tmp_path / f"gone-{i}.png", now - 100 * DAY)
        pruner = Pruner(journal, lambda: 90)

        steps = 1
        while pruner.step(now):
            steps += 1
        again = pruner.step(now + 3600)
        submit(journal, tmp_path / "later.png", now - 100 * DAY)
        tomorrow = pruner.step(now + DAY)
        total = sum(journal.counts().values())
        journal.close()

        # Three batches of rows, then the result files' records.
        assert (4, False, True, 0) == (
            steps,
            again,
            tomorrow,
            total,
        )  # tomorrow: a walk

    @pytest.mark.parametrize(
        ("last", "now", "due"),
        [
            pytest.param(None, 5.0, True, id="never"),
            pytest.param(0.0, DAY - 1, False, id="within-a-day"),
            pytest.param(0.0, DAY, True, id="a-day-later"),
            pytest.param(DAY, 5.0, True, id="clock-went-back"),
        ],
    )
    def test_prune_due(self, last, now, due):
        """Daily, and at once on a journal never pruned."""
        assert due == prune_due(last, now)

    def test_the_running_daemon_prunes(self, tmp_path, inbox, emulator):
        """At its start (no prune yet), the daemon removes an old row of a file that is gone."""
        config = config_for(tmp_path, emulator.url, inbox, keep_days=30)
        (inbox / "notes.txt").write_text(
            "the folder is there: not an empty mount point"
        )
        journal = open_journal(config)
        submit(journal, inbox / "gone.png", time.time() - 31 * DAY)
        submit(journal, inbox / "young.png", time.time() - 29 * DAY)
        journal.close()

        with capture_logs() as logs, daemon_thread(config) as daemon:
            wait_until(
                lambda: any(e["event"] == "journal.pruned" for e in logs), 10, "pruned"
            )
            left = daemon.journal.lookup([inbox / "gone.png", inbox / "young.png"])
        report = status_json(config)

        assert [str(inbox / "young.png")] == list(left)
        assert report["last_pruned"] is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as nobody")
def test_status_for_a_reader_who_may_not_write_the_state_dir(tmp_path):
    """An admin in the service's group reads the journal of a stopped daemon (no -wal or
    -shm files, which it could not create): the real counts, not zeros. One who may not
    enter state_dir at all gets one sentence from `status` (exit 0) and `retry` (exit 1)."""
    import shutil
    import tempfile

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed")
    base = Path(tempfile.mkdtemp(prefix="ocrwatch-reader-", dir="/tmp"))
    try:
        base.chmod(0o755)
        inbox, state = base / "inbox", base / "state"
        inbox.mkdir()
        config = write_config(
            base / "config.yaml", "http://127.0.0.1:9", [{"path": str(inbox)}]
        )
        journal = Journal(state / "journal.sqlite3")
        journal.note_many([Job(inbox / f"{i}.png", inbox, 1, 1) for i in range(3)], 1.0)
        journal.close()  # a clean stop: the -wal and -shm files are gone
        assert not (state / "journal.sqlite3-wal").exists()
        state.chmod(0o755)
        (state / "journal.sqlite3").chmod(0o644)

        def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    "setpriv",
                    "--reuid=nobody",
                    "--regid=nogroup",
                    "--clear-groups",
                    "--",
                    *OCRWATCH,
                    *args,
                    "-c",
                    str(config),
                ],
                capture_output=True,
                text=True,
                env=cli_env(),
                check=False,
                timeout=60,
            )

        readable = as_nobody("status", "--json")
        state.chmod(0o700)
        shut_out = as_nobody("status")
        retry = as_nobody("retry", "--all-failed")
    finally:
        shutil.rmtree(base)

    assert 0 == readable.returncode, readable.stderr
    report = json.loads(readable.stdout)
    assert (None, 3) == (report["note"], report["counts"]["queued"])
    sentence = (
        f"{state}: cannot look into state_dir (Permission denied); run this as the "
        "service user, e.g. `sudo -u ocrwatch ocrwatch status`"
    )
    assert 0 == shut_out.returncode
    assert sentence in shut_out.stdout
    assert "Traceback" not in shut_out.stderr + retry.stderr
    assert (1, [f"ocrwatch: {sentence}"]) == (
        retry.returncode,
        retry.stderr.splitlines(),
    )
