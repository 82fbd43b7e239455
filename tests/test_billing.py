"""Every upload is billed: the situations in which ocrwatch used to pay twice for one scan.

Each test counts what the emulator accepted. The daemon runs in-process (real observers on real
folders) or as a subprocess where a kill or a resource limit is part of the story.
"""

from __future__ import annotations

import hashlib
import resource
import shutil
import signal
import time
from collections import Counter

import pytest

from ocrwatch.emulator import Emulator

from .conftest import CLIENT_ID, SECRET, wait_until, write_config
from .daemon_harness import daemon_thread, journal_counts, sidecars, spawn, stop
from .images import png_bytes, write_png


@pytest.fixture
def config(tmp_path, inbox, emulator):
    return write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.3}],
    )


def run_cli(*args: str):
    from .test_cli import run

    return run(*args)


def guid_of(path) -> str:
    return str(path.with_name(path.name + ".guid").read_text().strip())


def uploads(emulator) -> Counter[str]:
    return Counter(r["image_sha256"] for r in emulator.submissions())


def test_a_copied_tree_with_current_sidecars_is_not_uploaded(
    config, inbox, tmp_path, emulator
):
    """`cp -a done/ inbox/copy/`: the copies keep their sidecars' GUIDs; nothing is sent."""
    done = tmp_path / "done"
    for i in range(6):
        write_png(done / f"scan-{i}.png", i)
        (done / f"scan-{i}.png.guid").write_text(
            f"{i:08d}-0000-4000-8000-000000000000\n"
        )
    with daemon_thread(config) as daemon:
        shutil.copytree(done, inbox / "copy")  # copy2 keeps the mtimes, as cp -a does

        wait_until(
            lambda: daemon.journal.counts()["submitted"] == 6, 10, "6 recorded done"
        )

    assert [] == emulator.submissions()
    assert [f"{i:08d}-0000-4000-8000-000000000000" for i in range(6)] == [
        guid_of(inbox / "copy" / f"scan-{i}.png") for i in range(6)
    ]


def test_a_rename_and_a_symlink_reuse_the_guid(config, inbox, emulator):
    """The same bytes under a new name, or behind a link, are not paid for again; the renamed
    file's old `.guid` goes with it."""
    with daemon_thread(config):
        original = write_png(inbox / "a.png", 1)
        wait_until(lambda: (inbox / "a.png.guid").exists(), 10, "first upload")
        guid = guid_of(original)

        original.rename(inbox / "renamed.png")
        (inbox / "link.png").symlink_to(inbox / "renamed.png")
        wait_until(
            lambda: (
                (inbox / "renamed.png.guid").exists()
                and (inbox / "link.png.guid").exists()
            ),
            10,
            "sidecars for the new names",
        )

    assert 1 == len(emulator.submissions())
    assert (guid, guid) == (guid_of(inbox / "renamed.png"), guid_of(inbox / "link.png"))
    assert not (inbox / "a.png.guid").exists()


def test_a_folder_moved_within_the_tree_is_not_uploaded_again(config, inbox, emulator):
    """`mv inbox/batch inbox/archive` after its files got their `.guid`s: the moved files are
    looked at, found done by their sidecars, and nothing is sent."""
    moved = [inbox / "archive" / f"s{i}.png" for i in range(5)]
    with daemon_thread(config) as daemon:
        for i in range(5):
            write_png(inbox / "batch" / f"s{i}.png", i)
        wait_until(lambda: len(sidecars(inbox)) == 5, 10, "5 uploads")

        (inbox / "batch").rename(inbox / "archive")
        wait_until(
            lambda: (
                len(daemon.journal.lookup(moved)) == 5
                and all(
                    e.state == "submitted"
                    for e in daemon.journal.lookup(moved).values()
                )
            ),
            10,
            "the moved files recorded",
        )

    assert 5 == len(emulator.submissions())
    assert {1} == set(uploads(emulator).values())


def test_a_png_written_in_two_halves_is_uploaded_once_and_whole(
    config, inbox, emulator
):
    """A writer that pauses longer than settle_seconds in the middle of a PNG: the half is
    not sent; the whole file is, once."""
    data = png_bytes(7, 64, 64)
    path = inbox / "slow.png"
    with daemon_thread(config):
        path.write_bytes(data[:426])
        time.sleep(1.5)  # the writer pauses for five settle periods
        with path.open("ab") as handle:
            handle.write(data[426:])
        wait_until(lambda: (inbox / "slow.png.guid").exists(), 10, "the whole file")

    assert [hashlib.sha256(data).hexdigest()] == list(uploads(emulator))
    assert 1 == len(emulator.submissions())


def test_a_truncated_image_gets_an_error_after_incomplete_timeout_never_an_upload(
    tmp_path, inbox, emulator
):
    """Quiet but still without its IEND after incomplete_timeout: `.error` naming what is
    missing, nothing sent; completing it later replaces the `.error` with a `.guid`."""
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        incomplete_timeout="1s",
    )
    data = png_bytes(3, 64, 64)
    path = inbox / "cut.png"
    with daemon_thread(config):
        path.write_bytes(data[:426])
        wait_until(lambda: (inbox / "cut.png.error").exists(), 10, ".error")
        error = (inbox / "cut.png.error").read_text()
        sent_before = len(emulator.submissions())
        with path.open("ab") as handle:
            handle.write(data[426:])
        wait_until(lambda: (inbox / "cut.png.guid").exists(), 10, "completed later")

    assert error.startswith(
        "truncated PNG: no IEND chunk after 426 bytes; nothing more"
    )
    assert 0 == sent_before
    assert not (inbox / "cut.png.error").exists()
    assert 1 == len(emulator.submissions())


def test_a_250_byte_name_is_uploaded_once(config, inbox, emulator):
    """`<name>.guid` fits (255 bytes) but a stale `<name>.error` could not even be named:
    removing it must not turn the success into a retry."""
    path = write_png(inbox / ("a" * 246 + ".png"), 1)
    with daemon_thread(config) as daemon:
        wait_until(lambda: daemon.journal.counts()["submitted"] == 1, 10, "submitted")

    assert 1 == len(emulator.submissions())
    assert emulator.submissions()[0]["guid"] == guid_of(path)


def test_a_name_whose_sidecar_cannot_fit_is_held_not_uploaded(config, inbox, emulator):
    """A 251-byte name leaves no room for `.guid`: nothing is sent, the file is held with the
    reason, logged once."""
    from structlog.testing import capture_logs

    path = write_png(inbox / ("b" * 247 + ".png"), 1)
    with capture_logs() as logs, daemon_thread(config) as daemon:
        wait_until(
            lambda: (
                (e := daemon.journal.lookup([path]).get(str(path))) is not None
                and e.held
            ),
            10,
            "held",
        )
        entry = daemon.journal.lookup([path])[str(path)]

    status = run_cli("status", "-c", str(config))
    assert f"  {path}: held: its sidecar name would be 256 bytes" in status.stdout
    assert [] == emulator.submissions()
    assert "its sidecar name would be 256 bytes, more than the 255" in (
        entry.last_error or ""
    )
    assert 1 == sum(e["event"] == "job.held" for e in logs)


def test_a_token_429_is_waited_out_and_every_file_goes_through(
    tmp_path, inbox, emulator
):
    """Rate limiting at the token endpoint is not refused credentials: its Retry-After is
    honoured, and every file is submitted."""
    from .test_cli import run

    for i in range(5):
        write_png(inbox / f"s{i}.png", i)
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox)}],
        api={"retry": {"max_attempts": 6, "max_delay": 5}},
    )
    emulator.fail_token_next(429, times=2, retry_after="1")

    result = run("submit", "-c", str(config), str(inbox))

    token_calls = [r for r in emulator.received if r["path"] == "/connect/token"]
    assert (0, 5) == (result.returncode, len(emulator.submissions()))
    assert [429, 429, 200] == [r["status"] for r in token_calls]
    assert token_calls[1]["ts"] - token_calls[0]["ts"] >= 1.0
    assert token_calls[2]["ts"] - token_calls[1]["ts"] >= 1.0
    assert "auth.refused" not in result.stderr


def test_a_full_state_dir_during_uploads_gives_no_second_upload_after_restart(
    tmp_path, inbox
):
    """The journal cannot grow while four uploads are on the wire: their `.guid`s are
    written, their rows stay `submitting`. After a restart the `.guid`s are the truth."""
    with Emulator(client_id=CLIENT_ID, client_secret=SECRET, latency_s=1.0) as emu:
        config = write_config(
            tmp_path / "config.yaml",
            emu.url,
            [{"path": str(inbox), "settle_seconds": 0.2}],
        )
        log = tmp_path / "run.log"
        proc = spawn(config, log, wait_started=True)
        write_png(inbox / "warm-up.png", 99)  # the token is fetched with this one
        wait_until(lambda: (inbox / "warm-up.png.guid").exists(), 15, "warm-up")
        bodies = emu.bodies_read
        for i in range(4):
            write_png(inbox / f"s{i}.png", i)
        wait_until(lambda: emu.bodies_read == bodies + 4, 15, "4 uploads on the wire")
        # No file of the daemon's may grow past its size now: the journal's WAL is full.
        state = tmp_path / "state"
        wal = (state / "journal.sqlite3-wal").stat().st_size
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (wal, wal))
        try:
            wait_until(lambda: len(sidecars(inbox)) == 5, 15, "4 more sidecars")
            wait_until(
                lambda: b"uploads.paused" in log.read_bytes(), 15, "journal full"
            )
        except AssertionError as exc:
            tail = log.read_text()[-3000:]
            raise AssertionError(f"{exc}; WAL {wal} bytes; log tail: {tail}") from None
        proc.kill()
        proc.wait(10)
        left_submitting = journal_counts(state)["submitting"]

        proc = spawn(config, log, wait_started=True)
        wait_until(lambda: journal_counts(state)["submitted"] == 5, 15, "settled")
        assert 0 == stop(proc)
        sent = emu.submissions()

    assert 4 == left_submitting
    assert 5 == len(sent)
    assert {r["guid"] for r in sent} == {guid_of(p) for p in inbox.glob("*.png")}


def test_copies_dropped_at_once_are_uploaded_once(config, inbox, emulator):
    """Ten copies of one scan dropped together: one upload; every copy gets its GUID."""
    data = png_bytes(11)
    with daemon_thread(config):
        for i in range(10):
            (inbox / f"copy-{i}.png").write_bytes(data)
        wait_until(lambda: len(sidecars(inbox)) == 10, 15, "10 sidecars")

    guids = {guid_of(inbox / f"copy-{i}.png") for i in range(10)}
    assert 1 == len(emulator.submissions())
    assert {emulator.submissions()[0]["guid"]} == guids


def test_dedupe_window_0_turns_it_off(tmp_path, inbox, emulator):
    """With dedupe off, a copy is a new task."""
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        dedupe_window=0,
    )
    with daemon_thread(config):
        write_png(inbox / "a.png", 1)
        wait_until(lambda: (inbox / "a.png.guid").exists(), 10)
        shutil.copy(inbox / "a.png", inbox / "b.png")
        wait_until(lambda: (inbox / "b.png.guid").exists(), 10)

    assert 2 == len(emulator.submissions())
    assert guid_of(inbox / "a.png") != guid_of(inbox / "b.png")


def test_a_kill_during_an_upload_is_the_only_other_double_bill(tmp_path, inbox):
    """SIGKILL with one upload on the wire: at most that file is sent again; its journal row
    says `submitting`, which is how the case is told apart."""
    with Emulator(client_id=CLIENT_ID, client_secret=SECRET, latency_s=1.0) as emu:
        config = write_config(
            tmp_path / "config.yaml",
            emu.url,
            [{"path": str(inbox), "settle_seconds": 0.2}],
            api={"concurrency": 1},
        )
        log = tmp_path / "run.log"
        proc = spawn(config, log, wait_started=True)
        write_png(inbox / "a.png", 1)
        wait_until(lambda: emu.bodies_read >= 2, 10, "the upload on the wire")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        in_flight = journal_counts(tmp_path / "state")["submitting"]
        wait_until(lambda: len(emu.submissions()) == 1, 5, "the server finished it")

        proc = spawn(config, log)
        wait_until(lambda: (inbox / "a.png.guid").exists(), 15)
        assert 0 == stop(proc)

    assert (1, 2) == (in_flight, len(emu.submissions()))


def test_a_reply_lost_in_flight_is_sent_again_once(config, inbox, emulator):
    """The service accepted the file but the reply never came: ocrwatch cannot know, so it
    sends it again. That is the other case, and it costs exactly one more upload."""
    emulator.drop_next(after_accept=True)
    with daemon_thread(config):
        write_png(inbox / "a.png", 1)
        wait_until(lambda: (inbox / "a.png.guid").exists(), 10)

    assert 2 == len(emulator.submissions())
    assert emulator.submissions()[-1]["guid"] == guid_of(inbox / "a.png")


def test_removing_a_stale_error_never_fails_a_success(tmp_path):
    """The `.error` of a 251-byte name cannot exist; trying to remove it is not a failure."""
    from ocrwatch.sidecar import Kind, write_sidecar

    original = tmp_path / ("c" * 246 + ".png")
    original.write_bytes(b"x")

    written = write_sidecar(original, Kind.GUID, "a197aade-bba9-4c7a-92c7-46851b3dceaa")

    assert written.exists()


def test_touch_does_not_send_a_file_again(config, inbox, emulator):
    """Only its time changed: the same content keeps its GUID, within the dedupe window."""
    import os

    path = write_png(inbox / "a.png", 1)
    with daemon_thread(config) as daemon:
        wait_until(lambda: (inbox / "a.png.guid").exists(), 10, "first upload")
        guid = guid_of(path)
        later = path.stat().st_mtime_ns + 5_000_000_000
        os.utime(path, ns=(later, later))
        wait_until(
            lambda: (
                (e := daemon.journal.lookup([path])[str(path)]).mtime_ns == later
                and e.state == "submitted"
            ),
            10,
            "looked at again",
        )
        entry = daemon.journal.lookup([path])[str(path)]

    assert (1, guid) == (len(emulator.submissions()), guid_of(path))
    assert (later, "submitted") == (entry.mtime_ns, entry.state)


def test_a_file_replaced_by_an_older_one_is_sent_not_given_the_old_guid(
    config, inbox, tmp_path, emulator
):
    """`mv new.png a.png` where new.png's mtime is older than a.png.guid: the journal knows
    that .guid was written for other content, so it is not adopted; the new content is sent."""
    import os

    path = write_png(inbox / "a.png", 1)
    older = write_png(tmp_path / "new.png", 2)
    with daemon_thread(config):
        wait_until(lambda: (inbox / "a.png.guid").exists(), 10, "first upload")
        first = guid_of(path)
        past = (inbox / "a.png.guid").stat().st_mtime_ns - 10_000_000_000
        os.utime(older, ns=(past, past))
        older.replace(path)
        wait_until(lambda: len(emulator.submissions()) == 2, 10, "the new content sent")
        wait_until(lambda: guid_of(path) != first, 10, "its own .guid")

    assert emulator.submissions()[-1]["guid"] == guid_of(path)
    assert (
        hashlib.sha256(path.read_bytes()).hexdigest()
        == emulator.submissions()[-1]["image_sha256"]
    )


def test_a_rejection_whose_error_cannot_be_named_is_recorded_not_retried(
    config, inbox, emulator
):
    """A 250-byte name: `.guid` fits, `.error` (256 bytes) does not. A rejection by the
    service is recorded without it, not sent again every hour."""
    path = write_png(inbox / ("r" * 246 + ".png"), 1)
    emulator.fail_next(400, detail="unreadable scan")
    with daemon_thread(config) as daemon:
        wait_until(
            lambda: daemon.journal.counts()["rejected"] == 1, 10, "recorded rejected"
        )
        entry = daemon.journal.lookup([path])[str(path)]

    posts = [r for r in emulator.received if r["path"].endswith("RecognizeImage")]
    assert 1 == len(posts)
    assert "unreadable scan" in (entry.last_error or "")
    assert "no .error" in (entry.last_error or "")
