"""What ocrwatch survives: hostile files, disks and services, each with the daemon still up and no
file lost. Read the test names as the list.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from ocrwatch.daemon import Rescan
from ocrwatch.emulator import Emulator

from .conftest import CLIENT_ID, SECRET, wait_until, write_config
from .daemon_harness import daemon_thread, sidecars, status_json
from .images import write_png


def config_for(tmp_path: Path, url: str, inbox: Path, **extra: object) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        **extra,
    )


def test_a_name_that_is_not_utf8_is_sent_and_the_files_beside_it_too(
    tmp_path, inbox, emulator
):
    """`bad\\xff.png` is stored losslessly, sent, and given its `.guid`; the scan of its folder
    goes on, at start and after a restart."""
    odd = Path(os.fsdecode(os.fsencode(str(inbox)) + b"/bad\xff.png"))
    write_png(odd, 1)
    write_png(inbox / "good.png", 2)
    config = config_for(tmp_path, emulator.url, inbox)
    with daemon_thread(config) as daemon:
        wait_until(lambda: len(sidecars(inbox)) == 2, 10, "both sent")
        state = daemon.journal.lookup([odd])[str(odd)].state
    with daemon_thread(config) as again:
        entry = again.journal.lookup([odd])[str(odd)]

    assert Path(os.fsdecode(os.fsencode(str(odd)) + b".guid")).exists()
    assert ("submitted", "submitted") == (state, entry.state)
    assert 2 == len(emulator.submissions())


def loop_against(
    tmp_path: Path, url: str, clock, *, folder: Path | None = None, **api: object
):
    """A job loop (no threads) against `url`, with a journal, a clock and a real inbox."""
    from pydantic import SecretStr

    from ocrwatch.config import Credentials, parse_config
    from ocrwatch.jobloop import JobLoop
    from ocrwatch.journal import Journal
    from ocrwatch.runtime import Runtime

    settings: dict[str, object] = {
        "base_url": url,
        "retry": {"max_attempts": 2, "max_delay": 0.01},
        **api,
    }
    config = parse_config(
        {
            "api": settings,
            "state_dir": str(tmp_path / "state"),
            "folders": [{"path": str(folder or tmp_path / "in")}],
        },
        "test",
    )
    journal = Journal(config.journal_path)
    runtime = Runtime.build(config, Credentials(CLIENT_ID, SecretStr(SECRET)))
    return JobLoop(journal, runtime, clock=clock), journal


def queue_one(journal, path: Path) -> None:
    from ocrwatch.journal import Job

    st = path.stat()
    journal.note_many([Job(path, path.parent, st.st_size, st.st_mtime_ns)], 0.0)


@pytest.mark.parametrize("mode", ["drip", "big", "stall", "cut", "bad-gzip"])
def test_a_dripping_or_endless_answer_has_a_deadline(tmp_path, mode):
    """A 200 whose body comes a byte a second, runs to 10 MB, stops halfway, is cut short or
    is not the gzip it claims: the upload gives up within its read timeout, says why, and the
    file is retried later."""
    from ocrwatch.outcome import Outcome

    from .hostile_server import hostile_service, url_of

    path = write_png(tmp_path / "in" / "a.png", 1)
    with hostile_service(mode) as server:
        loop, journal = loop_against(
            tmp_path, url_of(server), lambda: 1000.0, timeout={"connect": 2, "read": 3}
        )
        queue_one(journal, path)
        started = time.monotonic()
        result = loop.step()
        took = time.monotonic() - started

    assert result is not None
    assert Outcome.RETRY is result.outcome
    assert took < 2 * 3 + 2  # two attempts, each within its read timeout
    expected = {
        "drip": "did not finish its answer in time",
        "big": "sent an answer larger than 1024 KiB",
        "stall": "the answer broke off (ReadTimeoutError)",
        "cut": "the answer broke off (ProtocolError)",
        "bad-gzip": "the answer broke off (DecodeError)",
    }[mode]
    assert expected in (result.error or "")


@pytest.mark.parametrize("mode", ["html", "not-a-guid"])
def test_a_200_without_a_task_id_pauses_every_upload_and_keeps_the_files(
    tmp_path, mode
):
    """Each POST may be billed, and the answer is about the service, not the file: one POST,
    then every upload waits 10 min, 20 min, ...; no `.error`; once an answer makes sense the
    file gets its `.guid` and the pauses start again from 10 min."""
    from structlog.testing import capture_logs

    from ocrwatch.jobloop import PROTOCOL_PAUSE_S
    from ocrwatch.outcome import Outcome

    from .hostile_server import hostile_service, url_of

    now = [1000.0]
    a = write_png(tmp_path / "in" / "a.png", 1)
    b = write_png(tmp_path / "in" / "b.png", 2)
    with capture_logs() as logs, hostile_service(mode) as server:
        loop, journal = loop_against(tmp_path, url_of(server), lambda: now[0])
        queue_one(journal, a)
        queue_one(journal, b)
        first = loop.step()
        while_paused = loop.step()  # b is due, but every upload waits
        now[0] += PROTOCOL_PAUSE_S + 1
        second = loop.step()
        now[0] += PROTOCOL_PAUSE_S + 1
        still_paused = loop.step()
        now[0] += PROTOCOL_PAUSE_S
        server.mode = "ok"
        sent = [loop.step(), loop.step()]
        server.mode = mode
        queue_one(journal, write_png(tmp_path / "in" / "c.png", 3))
        loop.step()
        now[0] += PROTOCOL_PAUSE_S + 1
        queue_one(journal, write_png(tmp_path / "in" / "d.png", 4))
        loop.swap(loop.runtime)  # a reload: a try at once, and the pauses start again
        loop.step()
        uploads = server.uploads

    pauses = [e for e in logs if e["event"] == "uploads.paused_for_bad_answers"]
    assert first is not None
    assert second is not None
    assert (Outcome.RETRY, None, Outcome.RETRY, None) == (
        first.outcome,
        while_paused,
        second.outcome,
        still_paused,
    )
    assert [600, 1200, 600, 600] == [e["retry_in_s"] for e in pauses]
    assert "the service answered 200 with no task id" in pauses[0]["error"]
    assert [Outcome.SUBMITTED] * 2 == [r.outcome for r in sent if r is not None]
    assert 6 == uploads
    assert [] == list((tmp_path / "in").glob("*.error"))
    assert (tmp_path / "in" / "a.png.guid").exists()
    assert (tmp_path / "in" / "b.png.guid").exists()


def test_an_answer_in_a_charset_no_codec_knows_is_still_read(tmp_path):
    """`charset=x-nope` on a 200 whose GUID is plain ASCII: recorded once, not a crash that
    would send the (billed) file again every round."""
    from ocrwatch.outcome import Outcome

    from .hostile_server import hostile_service, url_of

    path = write_png(tmp_path / "in" / "a.png", 1)
    with hostile_service("odd-charset") as server:
        loop, journal = loop_against(tmp_path, url_of(server), time.time)
        queue_one(journal, path)
        result = loop.step()
        uploads = server.uploads

    assert result is not None
    assert (Outcome.SUBMITTED, 1) == (result.outcome, uploads)
    assert (
        "a197aade-bba9-4c7a-92c7-46851b3dceaa"
        == path.with_name("a.png.guid").read_text().strip()
    )


def test_a_hostile_ocrwatch_yaml_holds_only_its_own_folder(tmp_path, inbox, emulator):
    """A FIFO, a link to /dev/zero, a 9 MB list and a 1 MB value as `.ocrwatch.yaml`: each holds
    the files under it with a short reason, logged once; the clean folder goes on at once."""
    from structlog.testing import capture_logs

    hostile = {name: inbox / name for name in ("fifo", "zero", "big", "value")}
    for folder in hostile.values():
        folder.mkdir()
    os.mkfifo(hostile["fifo"] / ".ocrwatch.yaml")
    (hostile["zero"] / ".ocrwatch.yaml").symlink_to("/dev/zero")
    (hostile["big"] / ".ocrwatch.yaml").write_text("- x\n" * (9 << 18))
    (hostile["value"] / ".ocrwatch.yaml").write_text(f"profile: {'p' * (1 << 20)}\n")
    for i, folder in enumerate(hostile.values()):
        write_png(folder / "held.png", i)
    write_png(inbox / "clean" / "fine.png", 99)
    config = config_for(tmp_path, emulator.url, inbox)

    with capture_logs() as logs, daemon_thread(config) as daemon:
        wait_until(lambda: (inbox / "clean" / "fine.png.guid").exists(), 10, "clean")
        wait_until(lambda: daemon.journal.held_count() == 4, 10, "4 held")
        held = daemon.journal.entries(held=True)
        daemon.items.put(
            Rescan(inbox, "test: another look")
        )  # held files are looked at again
        wait_until(lambda: daemon.health().scans_finished >= 2, 10, "rescanned")

    reasons = {Path(e.path).parent.name: e.last_error or "" for e in held}
    assert 1 == len(emulator.submissions())
    assert "it is not a regular file" in reasons["fifo"]
    assert "it is not a regular file" in reasons["zero"]
    assert "it is larger than 64 KiB" in reasons["big"]
    assert "it is larger than 64 KiB" in reasons["value"]
    assert max(len(r) for r in reasons.values()) <= 500
    assert 4 == sum(e["event"] == "job.held" for e in logs)


def test_a_link_swapped_after_it_settled_to_a_file_outside_is_not_sent(
    tmp_path, inbox, emulator
):
    """The link pointed inside the watched folder when it settled; it points outside (at a
    file of the same size and time) when the worker takes it: the worker looks at it as
    it settled (a link out as the link), finds it changed, and sends nothing; the checked
    open refuses it too, without naming the target."""
    from ocrwatch.errors import RejectedError
    from ocrwatch.journal import Job
    from ocrwatch.outcome import Outcome
    from ocrwatch.preflight import open_within

    from .images import png_bytes

    inside = write_png(inbox / "scan.png", 1)
    secret = tmp_path / "outside" / "payroll.png"
    secret.parent.mkdir()
    secret.write_bytes(png_bytes(2))
    st = inside.stat()
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (
        secret.stat().st_size == st.st_size
    )  # same size and time: the swap is invisible
    link = inbox / "link.png"
    link.symlink_to(inside)
    loop, journal = loop_against(tmp_path, emulator.url, time.time, folder=inbox)

    journal.note_many([Job(link, inbox, st.st_size, st.st_mtime_ns)], 0.0)

    link.unlink()
    link.symlink_to(secret)
    result = loop.step()

    with pytest.raises(RejectedError) as refused:
        open_within(link, [inbox.resolve()])

    assert result is not None
    assert Outcome.UNSETTLED is result.outcome
    assert "does not lead to a file in the watched folders" in str(refused.value)
    assert "payroll" not in str(refused.value)
    assert [] == emulator.submissions()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "folders: " + "[" * 5000 + "]" * 5000 + "\n",
            "nested more than 32 levels deep; fix the file",
            id="deeply-nested",
        ),
        pytest.param(
            "shutdown_timeout: .inf\n",
            "shutdown_timeout: Input should be a finite number; fix the value",
            id="infinite-timeout",
        ),
        pytest.param(
            "base: &b {path: /srv/in}\nfolders: [*b]\n",
            "aliases (*name) are not supported; fix the file",
            id="yaml-alias",
        ),
        pytest.param(
            "api: {timeout: {read: 100000}}\n",
            "api.timeout.read: Input should be less than or equal to 600; fix the value",
            id="unbounded-timeout",
        ),
    ],
)
def test_a_bad_config_is_one_sentence_at_start_and_kept_out_on_reload(
    tmp_path, inbox, emulator, text, expected
):
    """`check` exits 2 with one sentence; a daemon that gets it by SIGHUP keeps its old config
    and goes on sending."""
    import signal

    from .conftest import OCRWATCH, cli_env
    from .daemon_harness import spawn, stop

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"folders: [{{path: {inbox}}}]\nstate_dir: {tmp_path / 'state'}\n" + text
        if not text.startswith(("folders", "base"))
        else text
    )
    check = subprocess.run(
        [*OCRWATCH, "check", "-c", str(bad)],
        capture_output=True,
        text=True,
        env=cli_env(),
        check=False,
        timeout=30,
    )
    config = config_for(tmp_path, emulator.url, inbox)
    log = tmp_path / "run.log"
    proc = spawn(config, log, wait_started=True)
    good = config.read_text()
    config.write_text(bad.read_text())
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: b"config.reload_failed" in log.read_bytes(), 10, "refused")
    config.write_text(good)
    write_png(inbox / "still.png", 1)
    wait_until(lambda: (inbox / "still.png.guid").exists(), 10, "still sending")

    assert 0 == stop(proc)
    assert 2 == check.returncode
    [line] = check.stderr.splitlines()
    assert line.endswith(expected), line
    assert "Traceback" not in log.read_text()


def test_things_that_are_not_files_get_an_error_saying_what_they_are(
    tmp_path, inbox, emulator
):
    """A FIFO, a device, a dangling link, a link loop, a link out of the watched folders and a
    folder named like an image each get an `.error` with the reason, once: a rescan does not
    reject them again. The real scan is sent."""
    from structlog.testing import capture_logs

    outside = write_png(tmp_path / "elsewhere" / "private.png", 7)
    os.mkfifo(tmp_path / "elsewhere" / "pipe")
    (inbox / "out-fifo.png").symlink_to(tmp_path / "elsewhere" / "pipe")
    os.mkfifo(inbox / "fifo.png")
    (inbox / "dangling.png").symlink_to(inbox / "nowhere.png")
    (inbox / "loop.png").symlink_to(inbox / "loop.png")
    (inbox / "out.png").symlink_to(outside)
    (inbox / "folder.png").mkdir()
    if os.geteuid() == 0:  # only root may make a device node
        os.mknod(inbox / "device.png", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    write_png(inbox / "scan.png", 1)
    config = config_for(tmp_path, emulator.url, inbox)
    names = ["fifo", "dangling", "loop", "out", "out-fifo", "folder"] + (
        ["device"] if os.geteuid() == 0 else []
    )

    with capture_logs() as logs, daemon_thread(config) as daemon:
        wait_until(
            lambda: (
                all((inbox / f"{n}.png.error").exists() for n in names)
                and (inbox / "scan.png.guid").exists()
            ),
            30,
            "every .error",
        )
        scans = daemon.health().scans_finished
        daemon.items.put(Rescan(inbox, "test: another look"))
        wait_until(lambda: daemon.health().scans_finished > scans, 10, "rescanned")
        daemon.items.put(Rescan(inbox, "test: and another"))
        wait_until(lambda: daemon.health().scans_finished > scans + 1, 10, "again")
        time.sleep(
            0.5
        )  # settle_seconds 0.2: anything queued again would be done by now

    errors = {n: (inbox / f"{n}.png.error").read_text() for n in names}
    assert 1 == len(emulator.submissions())
    assert errors["fifo"].startswith("cannot read the file: it is not a regular file")
    link_out = "not sent: it is a symbolic link that does not lead to a file in the"
    assert all(
        errors[n].startswith(link_out) for n in ("dangling", "loop", "out", "out-fifo")
    )
    rejected = [e["path"] for e in logs if e["event"] == "job.rejected"]
    assert sorted(str(inbox / f"{n}.png") for n in names) == sorted(rejected)
    assert str(outside) not in errors["out"]  # names no target
    assert errors["folder"].startswith("not a file: it is a directory")
    if "device" in errors:
        assert "not a regular file" in errors["device"]


def test_an_unreadable_subfolder_is_logged_once(tmp_path, inbox, emulator):
    """A folder the scan cannot list (here: its path is longer than the system allows) is
    logged once, not at every rescan, and the rest of the tree is scanned."""
    from structlog.testing import capture_logs

    from ocrwatch.daemon import Rescan

    deep = os.open(inbox, os.O_RDONLY)
    try:  # each level is fine; the whole path is over PATH_MAX (4096 bytes)
        for _ in range(20):
            os.mkdir("d" * 250, dir_fd=deep)
            inner = os.open("d" * 250, os.O_RDONLY, dir_fd=deep)
            os.close(deep)
            deep = inner
    finally:
        os.close(deep)
    write_png(inbox / "scan.png", 1)
    config = config_for(tmp_path, emulator.url, inbox)

    with capture_logs() as logs, daemon_thread(config) as daemon:
        wait_until(lambda: (inbox / "scan.png.guid").exists(), 10, "the rest scanned")
        daemon.items.put(Rescan(inbox, "test: another look"))
        wait_until(lambda: daemon.health().scans_finished >= 2, 10, "rescanned")

    unreadable = [e for e in logs if e["event"] == "rescan.folder_unreadable"]
    assert 1 == len(unreadable)
    assert "File name too long" == unreadable[0]["error"]


@pytest.mark.parametrize("damage", ["header", "truncated"])
def test_a_damaged_journal_is_rebuilt_and_the_sidecars_say_what_is_done(
    tmp_path, inbox, emulator, damage
):
    """A journal with a garbled header, or cut short: `run` moves it aside, builds a new one,
    and sends only the files without a current sidecar; `status` says what happened."""
    for i in range(30):
        write_png(inbox / f"done-{i}.png", i)
    config = config_for(tmp_path, emulator.url, inbox)
    with daemon_thread(config):
        wait_until(lambda: len(sidecars(inbox)) == 30, 15, "30 done")
    journal = tmp_path / "state" / "journal.sqlite3"
    if damage == "header":
        with journal.open("r+b") as handle:
            handle.write(b"garbage!" * 16)
    else:
        os.truncate(journal, journal.stat().st_size // 2)
    broken = status_json(config)
    for i in range(5):
        write_png(inbox / f"new-{i}.png", 100 + i)

    with daemon_thread(config) as daemon:
        wait_until(lambda: len(sidecars(inbox)) == 35, 15, "the new ones sent")
        rebuilds = daemon.journal.rebuilds

    assert "the journal is damaged" in broken["note"]
    assert (1, 35) == (rebuilds, len(emulator.submissions()))
    [rebuilt] = status_json(config)["rebuilds"]
    assert "the damaged file is kept as journal.sqlite3.corrupt-" in rebuilt


def test_a_journal_rebuilt_while_an_upload_is_in_flight_does_not_send_it_twice(
    tmp_path, inbox
):
    """Damage found mid-upload: the fresh journal gets the claims in flight back, so the
    rescan that follows the rebuild cannot queue that file for the second worker."""
    with Emulator(client_id=CLIENT_ID, client_secret=SECRET, latency_s=1.5) as slow:
        config = config_for(
            tmp_path, slow.url, inbox, api={"base_url": slow.url, "concurrency": 2}
        )
        with daemon_thread(config) as daemon:
            write_png(inbox / "a.png", 1)
            wait_until(
                lambda: daemon.journal.counts()["submitting"] == 1, 10, "claimed"
            )
            scans = daemon.health().scans_finished
            daemon.journal.rebuild("test: damage found mid-upload")
            wait_until(lambda: daemon.health().scans_finished > scans, 10, "rescanned")
            still_in_flight = not (inbox / "a.png.guid").exists()
            wait_until(lambda: (inbox / "a.png.guid").exists(), 10, "sent")
            daemon.items.put(Rescan(inbox, "test: another look"))
            wait_until(
                lambda: daemon.health().scans_finished > scans + 1, 10, "rescanned"
            )
            counts = daemon.journal.counts()
        submissions = len(slow.submissions())

    assert (True, 1) == (still_in_flight, submissions)
    assert 1 == counts["submitted"]


def test_a_journal_deleted_under_the_running_daemon_comes_back_with_its_rows(
    tmp_path, inbox, emulator
):
    """`rm journal.sqlite3` while `run` runs: within seconds it is written again from what
    the daemon has open, `status` reads it, and new files go on being sent."""
    config = config_for(tmp_path, emulator.url, inbox)
    with daemon_thread(config) as daemon:
        write_png(inbox / "a.png", 1)
        wait_until(lambda: (inbox / "a.png.guid").exists(), 10)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{daemon.journal.path}{suffix}").unlink(missing_ok=True)
        wait_until(lambda: daemon.journal.path.exists(), 10, "written again")
        report = status_json(config)
        write_png(inbox / "b.png", 2)
        wait_until(lambda: (inbox / "b.png.guid").exists(), 10, "still sending")

    assert (True, True, 1) == (
        report["exists"],
        report["daemon_running"],
        report["counts"]["submitted"],
    )


def test_status_on_an_empty_journal_file_exits_0(tmp_path, inbox, emulator):
    """A 0-byte journal (created, never written): status says so, exit 0."""
    config = config_for(tmp_path, emulator.url, inbox)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "journal.sqlite3").touch()

    report = status_json(config)

    assert "the journal is empty" in report["note"]


@pytest.fixture
def small_state_dir(tmp_path):
    """A 1 MiB tmpfs as state_dir: it really fills. Root can mount one; others skip."""
    state = tmp_path / "state"
    state.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_a_full_state_dir_pauses_and_resumes_without_losing_a_file(
    tmp_path, inbox, emulator, small_state_dir
):
    """state_dir fills up: files wait, each of intake and uploads says so once, the daemon stays
    up; space comes back and every file is sent."""
    from structlog.testing import capture_logs

    config = config_for(tmp_path, emulator.url, inbox)
    filler = small_state_dir / "filler"
    with capture_logs() as logs, daemon_thread(config) as daemon:
        write_png(inbox / "before.png", 1)
        wait_until(lambda: (inbox / "before.png.guid").exists(), 10)
        with filler.open("wb") as handle, contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        for i in range(3):
            write_png(inbox / f"while-full-{i}.png", 10 + i)
        wait_until(
            lambda: any(e["event"] == "intake.paused" for e in logs), 10, "paused"
        )
        sent_while_full = len(emulator.submissions())
        alive = daemon.health().started
        filler.unlink()
        wait_until(lambda: len(sidecars(inbox)) == 4, 15, "all sent once space is back")

    events = [e["event"] for e in logs]
    assert (1, True) == (sent_while_full, alive)
    assert 1 == events.count("intake.paused")
    assert "intake.resumed" in events
    assert 4 == len(emulator.submissions())
