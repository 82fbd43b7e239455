"""What ocrwatch survives: hostile files, disks and services, each with the daemon still up and no
file lost. Read the test names as the list.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ocrwatch.daemon import Rescan

from .conftest import CLIENT_ID, SECRET, wait_until, write_config
from .daemon_harness import daemon_thread, sidecars
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


@pytest.mark.parametrize("mode", ["drip", "big"])
def test_a_dripping_or_endless_answer_has_a_deadline(tmp_path, mode):
    """A 200 whose body comes a byte a second, or runs to 10 MB: the upload gives up within
    its read timeout, says why, and the file is retried later."""
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
    }[mode]
    assert expected in (result.error or "")


@pytest.mark.parametrize("mode", ["html", "not-a-guid"])
def test_a_200_without_a_task_id_is_sent_three_times_not_a_dozen(tmp_path, mode):
    """Each POST may be billed: no retry within a round; after three rounds an `.error`."""
    from ocrwatch.outcome import Outcome

    from .hostile_server import hostile_service, url_of

    now = [1000.0]
    path = write_png(tmp_path / "in" / "a.png", 1)
    with hostile_service(mode) as server:
        loop, journal = loop_against(tmp_path, url_of(server), lambda: now[0])
        queue_one(journal, path)
        outcomes = []
        for _ in range(3):
            result = loop.step()
            assert result is not None
            outcomes.append(result.outcome)
            now[0] += 7200  # past any backoff
        uploads = server.uploads

    assert [Outcome.RETRY, Outcome.RETRY, Outcome.REJECTED] == outcomes
    assert 3 == uploads
    error = (tmp_path / "in" / "a.png.error").read_text()
    assert error.startswith("the service answered 200 with no task id:")


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
    file of the same size and time) when the worker opens it: what was opened is checked,
    and nothing is sent."""
    from ocrwatch.journal import Job
    from ocrwatch.outcome import Outcome

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

    assert result is not None
    assert Outcome.REJECTED is result.outcome
    assert "outside the watched folders" in (result.error or "")
    assert [] == emulator.submissions()
