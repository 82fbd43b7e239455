"""The daemon in-process: real watchdog observers on real folders, the emulator over loopback."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter

import pytest
from structlog.testing import capture_logs

from ocrwatch.journal import Journal

from .conftest import wait_until, write_config
from .daemon_harness import daemon_thread, sha256, sidecars
from .images import png_bytes, write_png


def entry_of(daemon, path):
    return daemon.journal.lookup([path]).get(str(path))


def received_shas(emulator) -> Counter[str]:
    return Counter(r["image_sha256"] for r in emulator.submissions())


@pytest.fixture
def folder_config(tmp_path, inbox, emulator):
    def make(**folder):
        return write_config(
            tmp_path / "config.yaml",
            emulator.url,
            [{"path": str(inbox), "settle_seconds": 0.3, **folder}],
        )

    return make


def test_200_images_in_a_recursive_tree_each_sent_exactly_once(
    folder_config, inbox, emulator
):
    """Every one of 200 files dropped into nested folders gets its sidecar; each sha256 arrives once."""
    config = folder_config()
    with daemon_thread(config):
        files = [
            write_png(inbox / f"d{i % 7}" / f"e{i % 3}" / f"scan-{i:04d}.png", i)
            for i in range(200)
        ]

        wait_until(
            lambda: len(emulator.submissions()) >= 200 and len(sidecars(inbox)) == 200,
            60,
            "200 sidecars",
        )

    shas = received_shas(emulator)
    assert {sha256(f) for f in files} == set(shas)
    assert {1} == set(shas.values())
    assert {f.name + ".guid" for f in files} == {p.name for p in sidecars(inbox)}


def test_slowly_written_files_are_never_sent_partial(folder_config, inbox, emulator):
    """10 files written in 5 chunks over 3 s, closed and reopened between chunks, are sent only complete."""
    config = folder_config(settle_seconds=1.0)
    finals = {f"slow-{i}.png": png_bytes(i, 64, 64) for i in range(10)}
    with daemon_thread(config):

        def write(name: str, data: bytes) -> None:
            step = len(data) // 5 + 1
            for n in range(5):
                with (inbox / name).open(
                    "ab"
                ) as handle:  # a scanner closing between pages
                    handle.write(data[n * step : (n + 1) * step])
                time.sleep(0.6)

        threads = [threading.Thread(target=write, args=item) for item in finals.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: len(sidecars(inbox)) == 10, 20, "10 sidecars")

    import hashlib

    assert {hashlib.sha256(d).hexdigest() for d in finals.values()} == set(
        received_shas(emulator)
    )
    assert 10 == len(emulator.submissions())


def test_files_and_folders_moved_in_are_picked_up(
    folder_config, inbox, emulator, tmp_path
):
    """A file moved in, and a whole folder of files moved in, are all submitted."""
    outside = tmp_path / "outside"
    single = write_png(outside / "single.png", 1)
    for i in range(3):
        write_png(outside / "batch" / "deeper" / f"b{i}.png", 10 + i)
    config = folder_config()
    with daemon_thread(config):
        shutil.move(single, inbox / "single.png")
        shutil.move(outside / "batch", inbox / "batch")

        wait_until(lambda: len(sidecars(inbox)) == 4, 15, "4 sidecars")

    assert 4 == len(emulator.submissions())
    assert (inbox / "batch" / "deeper" / "b0.png.guid").exists()


def test_restart_with_1000_done_files_submits_nothing(folder_config, inbox, emulator):
    """After all files are done, a restart's catch-up scan sees every file and finds none to send."""
    for i in range(1000):
        write_png(inbox / f"s{i // 100}" / f"f{i}.png", i)
    config = folder_config()
    with daemon_thread(config) as first:
        wait_until(
            lambda: first.journal.counts()["submitted"] == 1000, 120, "1000 submitted"
        )
    sent = len(emulator.submissions())

    with capture_logs() as logs, daemon_thread(config) as second:
        settling = second.health().settling

    [scan] = [e for e in logs if e["event"] == "rescan.finished"]
    assert (1000, 0) == (scan["seen"], scan["found"])
    assert 0 == settling
    assert (1000, 1000) == (sent, len(emulator.submissions()))
    assert 1000 == len(sidecars(inbox))


def test_broken_observer_is_restarted_and_later_files_processed(
    folder_config, inbox, emulator
):
    """Stopping the observer's emitter is noticed; a new observer watches and later files go through."""
    config = folder_config()
    with daemon_thread(config) as daemon:
        watcher = daemon.watchers.get(inbox)
        assert watcher is not None
        broken = watcher.observer
        assert broken is not None
        for emitter in list(broken.emitters):
            emitter.stop()

        wait_until(
            lambda: (
                watcher.observer is not None
                and watcher.observer is not broken
                and watcher.is_alive()
            ),
            10,
            "observer restarted",
        )
        write_png(inbox / "after.png", 5)
        wait_until(
            lambda: (inbox / "after.png.guid").exists(), 10, "file after restart"
        )


def test_polling_mode_finds_files_without_inotify(folder_config, inbox, emulator):
    """polling: true uses a PollingObserver; new files are still found."""
    config = folder_config(polling=True, poll_interval=0.2)
    with daemon_thread(config) as daemon:
        from watchdog.observers.polling import PollingObserver

        watcher = daemon.watchers.get(inbox)
        assert watcher is not None
        assert isinstance(watcher.observer, PollingObserver)
        write_png(inbox / "sub" / "polled.png", 3)

        wait_until(
            lambda: (inbox / "sub" / "polled.png.guid").exists(), 10, "polled file"
        )


def test_missing_folder_is_watched_once_it_appears(tmp_path, emulator):
    """A folder missing at start (a late mount) is a warning; files are processed once it appears."""
    late = tmp_path / "late-mount"
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(late), "settle_seconds": 0.2}],
    )
    with daemon_thread(config, folders=0) as daemon:
        assert late in daemon.health().missing
        late.mkdir()
        wait_until(lambda: late not in daemon.health().missing, 10, "folder watched")
        write_png(late / "a.png", 1)

        wait_until(lambda: (late / "a.png.guid").exists(), 10, "file in late folder")


def test_per_folder_override_files(folder_config, inbox, emulator):
    """A subfolder's .ocrwatch.yaml gives German + Rotate 90, a sibling keeps the default, edits apply
    to the next file, and an invalid file holds its files with a reason until it is fixed."""
    (inbox / "de").mkdir()
    (inbox / "plain").mkdir()
    (inbox / "de" / ".ocrwatch.yaml").write_text("language: German\nrotate: 90\n")
    config = folder_config()
    with daemon_thread(config) as daemon:
        write_png(inbox / "de" / "a.png", 1)
        write_png(inbox / "plain" / "b.png", 2)
        wait_until(lambda: len(sidecars(inbox)) == 2, 10)
        by_sha = {r["image_sha256"]: r["settings"] for r in emulator.submissions()}
        assert {"language": "German", "Rotate": 90} == by_sha[
            sha256(inbox / "de" / "a.png")
        ]
        assert {} == by_sha[sha256(inbox / "plain" / "b.png")]

        (inbox / "de" / ".ocrwatch.yaml").write_text("language: French\n")
        write_png(inbox / "de" / "c.png", 3)
        wait_until(lambda: (inbox / "de" / "c.png.guid").exists(), 10)
        assert {"language": "French"} == emulator.submissions()[-1]["settings"]

        (inbox / "de" / ".ocrwatch.yaml").write_text("langauge: German\n")
        write_png(inbox / "de" / "d.png", 4)
        held = inbox / "de" / "d.png"
        wait_until(
            lambda: (e := entry_of(daemon, held)) is not None and e.held, 10, "held"
        )
        entry = entry_of(daemon, held)
        assert (
            f"held: {inbox / 'de' / '.ocrwatch.yaml'}: langauge: unknown key; did you mean `language`?"
            == entry.last_error
        )
        assert not (inbox / "de" / "d.png.guid").exists()
        assert not (inbox / "de" / "d.png.error").exists()

        (inbox / "de" / ".ocrwatch.yaml").write_text("language: German\n")
        wait_until(
            lambda: (inbox / "de" / "d.png.guid").exists(), 10, "released after fix"
        )
        assert {"language": "German"} == emulator.submissions()[-1]["settings"]


def test_bad_file_gets_error_and_daemon_keeps_going(folder_config, inbox, emulator):
    """A non-image gets .error and is not retried; good files keep flowing."""
    config = folder_config()
    with daemon_thread(config) as daemon:
        (inbox / "bad.png").write_text("not an image")
        write_png(inbox / "good.png", 1)

        wait_until(
            lambda: (
                (inbox / "bad.png.error").exists()
                and (inbox / "good.png.guid").exists()
            ),
            10,
        )
        assert {"rejected": 1, "submitted": 1} == {
            k: v for k, v in daemon.journal.counts().items() if v
        }


def test_transient_failure_is_rescheduled_not_dropped(tmp_path, inbox, emulator):
    """When retries run out, the file stays in the journal as failed with a next attempt time, and no .error."""
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        api={"retry": {"max_attempts": 2, "max_delay": 0.05}},
    )
    emulator.fail_next(503, times=2)
    with daemon_thread(config) as daemon:
        write_png(inbox / "a.png", 1)

        wait_until(lambda: daemon.journal.counts()["failed"] == 1, 10, "failed")
        entry = entry_of(daemon, inbox / "a.png")
        assert entry.next_attempt_at > time.time() + 20
        assert "HTTP 503" in (entry.last_error or "")
        assert not (inbox / "a.png.error").exists()


def test_sidecars_and_hidden_files_never_submitted(folder_config, inbox, emulator):
    """Our own sidecars, hidden files, temp files and NAS junk produce no uploads."""
    config = folder_config()
    with daemon_thread(config):
        for name in (
            ".hidden.png",
            "x.png.part",
            "._x.png",
            "Thumbs.db",
            "a.png.guid",
            "~$x.png",
        ):
            (inbox / name).write_bytes(png_bytes(1))
        (inbox / "@eaDir").mkdir()
        (inbox / "@eaDir" / "thumb.png").write_bytes(png_bytes(2))
        write_png(inbox / "real.png", 3)

        wait_until(lambda: (inbox / "real.png.guid").exists(), 10)

    assert 1 == len(emulator.submissions())


def test_state_dir_is_locked_against_a_second_daemon(folder_config, inbox, emulator):
    """Two daemons on one state_dir would double-submit: the second refuses to start."""
    from ocrwatch.daemon import Daemon
    from ocrwatch.errors import JournalError

    config = folder_config()
    with (
        daemon_thread(config),
        pytest.raises(
            JournalError, match="another `ocrwatch run` is using this state_dir"
        ),
        Daemon.open(config, {}),
    ):
        pass


def test_journal_rows_are_queryable_while_running(
    folder_config, inbox, emulator, tmp_path
):
    """status can read the journal while the daemon writes it (WAL)."""
    config = folder_config()
    with daemon_thread(config):
        write_png(inbox / "a.png", 1)
        wait_until(lambda: (inbox / "a.png.guid").exists(), 10)
        reader = Journal(tmp_path / "state" / "journal.sqlite3", readonly=True)
        counts = reader.counts()
        reader.close()

    assert 1 == counts["submitted"]


def test_lost_sidecar_is_restored_from_the_journal_not_resubmitted(
    folder_config, inbox, emulator
):
    """A .guid that went missing (deleted, or unwritable at the time) is rewritten from the journal
    at the next scan; the file is not paid for again."""
    config = folder_config()
    path = write_png(inbox / "a.png", 1)
    with daemon_thread(config):
        wait_until(lambda: (inbox / "a.png.guid").exists(), 10)
    guid = (inbox / "a.png.guid").read_text()
    (inbox / "a.png.guid").unlink()

    with daemon_thread(config):
        wait_until(lambda: (inbox / "a.png.guid").exists(), 10, "sidecar restored")

    assert guid == (inbox / "a.png.guid").read_text()
    assert 1 == len(emulator.submissions())
    assert path.exists()
