"""Results next to the scan: the daemon polls each task and writes its result files; Error,
NotExist and a deadline end as they should; `retry` fetches again; `ocrwatch fetch` does the
same for files that only have a `.guid`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ocrwatch.cli import main
from ocrwatch.emulator.outputs import recognized_text
from ocrwatch.emulator.state import TaskScript
from ocrwatch.taskpoll import SCALE_ENV

from .conftest import wait_until, write_config
from .daemon_harness import daemon_thread, journal_counts, journal_entry
from .images import pdf_bytes, png_bytes


@pytest.fixture(autouse=True)
def _short_polls(monkeypatch):
    """Polls every 0.1 s to 0.75 s instead of 2 s to 15 s."""
    monkeypatch.setenv(SCALE_ENV, "0.05")


def fetch_config(tmp_path: Path, url: str, inbox: Path, **profile: Any) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        profiles={"default": {"fetch_results": True, **profile}},
    )


def expected_text(path: Path) -> str:
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return recognized_text(len(data), sha, "English", False) + "\n"


def txt(path: Path) -> Path:
    return path.with_name(path.name + ".txt")


def test_fifty_files_each_get_their_own_text(emulator, tmp_path, inbox):
    """50 scans with fetch_results: each gets its .guid and a .txt holding exactly the
    emulator's text for that image, and the profile keys never reach the service."""
    config = fetch_config(tmp_path, emulator.url, inbox)
    scans = [inbox / f"scan-{i:02}.png" for i in range(50)]

    with daemon_thread(config):
        for i, scan in enumerate(scans):
            scan.write_bytes(png_bytes(i))
        wait_until(lambda: all(txt(s).exists() for s in scans), 60, "50 .txt files")

    assert all(s.with_name(s.name + ".guid").exists() for s in scans)
    assert [expected_text(s) for s in scans] == [txt(s).read_text() for s in scans]
    assert 50 == len(emulator.submissions())
    sent = {k for r in emulator.submissions() for k in r["settings"]}
    assert not sent & {"fetch_results", "fetch_timeout", "fetchResults"}
    assert 50 == journal_counts(tmp_path / "state")["completed"]


def test_text_and_pdf_give_both_files(emulator, tmp_path, inbox):
    """resultType TextAndPdf writes `<name>.txt` and a `<name>.pdf` that starts with %PDF."""
    config = fetch_config(tmp_path, emulator.url, inbox, resultType="TextAndPdf")
    scan = inbox / "scan.png"

    with daemon_thread(config):
        scan.write_bytes(png_bytes(1))
        wait_until(lambda: (inbox / "scan.png.pdf").exists(), 20, "the PDF")

    assert expected_text(scan) == txt(scan).read_text()
    assert (inbox / "scan.png.pdf").read_bytes().startswith(b"%PDF")


def test_a_users_txt_is_never_overwritten(emulator, tmp_path, inbox):
    """A `<name>.txt` that is the user's stays as it is; the text goes to `<name>.ocr.txt`."""
    config = fetch_config(tmp_path, emulator.url, inbox)
    scan = inbox / "scan.png"
    (inbox / "scan.png.txt").write_text("my own notes\n")

    with daemon_thread(config):
        scan.write_bytes(png_bytes(2))
        wait_until(lambda: (inbox / "scan.png.ocr.txt").exists(), 20, ".ocr.txt")

    assert "my own notes\n" == (inbox / "scan.png.txt").read_text()
    assert expected_text(scan) == (inbox / "scan.png.ocr.txt").read_text()


def test_a_pdf_goes_to_recognize_pdf_and_result_files_are_never_sent(
    emulator, tmp_path, inbox
):
    """A dropped PDF is sent to RecognizePdf and gets its .guid and text; the result PDFs
    ocrwatch writes (`doc.pdf.pdf`, `scan.png.pdf`) are never sent."""
    config = fetch_config(tmp_path, emulator.url, inbox, resultType="TextAndPdf")
    doc, scan, last = inbox / "doc.pdf", inbox / "scan.png", inbox / "last.png"

    with daemon_thread(config):
        doc.write_bytes(pdf_bytes(seed=3))
        scan.write_bytes(png_bytes(3))
        wait_until(
            lambda: (
                (inbox / "doc.pdf.pdf").exists() and (inbox / "scan.png.pdf").exists()
            ),
            20,
            "both result PDFs",
        )
        # Whatever the result files set off has settled by the time a later file is done.
        last.write_bytes(png_bytes(4))
        wait_until(lambda: txt(last).exists(), 20, "the last file's text")

    paths = sorted(r["path"] for r in emulator.submissions())
    gets = {r["path"] for r in emulator.received if r["method"] == "GET"}
    assert [
        "/v5.0/ocr/RecognizeImage",
        "/v5.0/ocr/RecognizeImage",
        "/v5.0/ocr/RecognizePdf",
    ] == paths
    assert "/v5.0/ocr/RecognizePdf" in gets
    assert (inbox / "doc.pdf.guid").exists()
    assert expected_text(doc) == txt(doc).read_text()


def test_a_kept_result_is_never_input_after_its_original_is_gone(
    emulator, tmp_path, inbox
):
    """A user keeps `scan.png.pdf` and deletes `scan.png` (and its .guid): the journal
    remembers the PDF as ocrwatch's result, so neither the catch-up scan of the next start
    nor `submit` on the folder sends it to RecognizePdf (billed)."""
    config = fetch_config(tmp_path, emulator.url, inbox, resultType="TextAndPdf")
    scan, later = inbox / "scan.png", inbox / "later.png"
    with daemon_thread(config):
        scan.write_bytes(png_bytes(5))
        wait_until((inbox / "scan.png.pdf").exists, 20, "the result PDF")
    scan.unlink()
    (inbox / "scan.png.guid").unlink()
    (inbox / "scan.png.txt").unlink()

    with capture_logs() as logs, daemon_thread(config):
        wait_until(
            lambda: any(e["event"] == "rescan.finished" for e in logs), 20, "catch-up"
        )
        # Whatever the catch-up found has settled by the time a later file is done.
        later.write_bytes(png_bytes(6))
        wait_until(lambda: txt(later).exists(), 20, "the later file's text")
    code = main(["submit", "-c", str(config), str(inbox)])

    assert 0 == code
    assert ["/v5.0/ocr/RecognizeImage"] * 2 == [
        r["path"] for r in emulator.submissions()
    ]
    assert not (inbox / "scan.png.pdf.guid").exists()


def test_a_task_in_error_gets_an_error_with_the_message(emulator, tmp_path, inbox):
    """taskStatus Error: `.error` with the service's error.messages, no result file."""
    config = fetch_config(tmp_path, emulator.url, inbox)
    emulator.fail_next_task(messages=("the image is too dark to read",))
    scan = inbox / "scan.png"

    with daemon_thread(config):
        scan.write_bytes(png_bytes(5))
        wait_until(lambda: (inbox / "scan.png.error").exists(), 20, ".error")

    assert "the image is too dark to read" in (inbox / "scan.png.error").read_text()
    assert not txt(scan).exists()
    assert 1 == len(emulator.submissions())


def test_not_exist_is_sent_exactly_once_more(emulator, tmp_path, inbox):
    """A task the service lost (NotExist) is uploaded once more, logged, and its result
    written; lost again, the file fails with a reason, after exactly two uploads."""
    config = fetch_config(tmp_path, emulator.url, inbox)
    emulator.lose_next_task()
    once, twice = inbox / "once.png", inbox / "twice.png"

    with capture_logs() as logs, daemon_thread(config):
        once.write_bytes(png_bytes(6))
        wait_until(lambda: txt(once).exists(), 20, "text after one resubmission")
        emulator.lose_next_task(times=2)
        twice.write_bytes(png_bytes(7))
        wait_until(lambda: (inbox / "twice.png.error").exists(), 20, ".error")

    per_file = [r["image_sha256"] for r in emulator.submissions()]
    assert [2, 2] == [
        per_file.count(hashlib.sha256(f.read_bytes()).hexdigest())
        for f in (once, twice)
    ]
    assert "lost the task twice" in (inbox / "twice.png.error").read_text()
    assert 2 == sum(1 for e in logs if e["event"] == "job.resubmitted")


def test_past_the_deadline_fails_and_retry_fetches_again(emulator, tmp_path, inbox):
    """A task still processing at fetch_timeout gets `.error` ("no result after ..."), and
    `ocrwatch retry` fetches it again without a second upload."""
    config = fetch_config(tmp_path, emulator.url, inbox, fetch_timeout="1s")
    emulator.script_next_tasks(TaskScript(processing_s=60))
    scan = inbox / "scan.png"
    error = inbox / "scan.png.error"

    with daemon_thread(config):
        scan.write_bytes(png_bytes(8))
        wait_until(error.exists, 20, ".error")
        reason = error.read_text()
        emulator.finish_tasks()  # the service is done by the time someone retries
        assert 0 == main(["retry", "-c", str(config), str(scan)])
        wait_until(lambda: txt(scan).exists(), 20, "text after retry")

    assert "no result after 1 s" in reason
    assert expected_text(scan) == txt(scan).read_text()
    assert 1 == len(emulator.submissions())
    assert (inbox / "scan.png.guid").exists()
    assert not error.exists()


def test_retry_after_a_task_in_error_uploads_anew(emulator, tmp_path, inbox):
    """A task that ended in Error will never have a result: `retry` sends the file again
    (a new task), instead of reusing the dead task's GUID as the same content."""
    config = fetch_config(tmp_path, emulator.url, inbox)
    emulator.fail_next_task()
    scan = inbox / "scan.png"

    with daemon_thread(config):
        scan.write_bytes(png_bytes(9))
        wait_until(lambda: (inbox / "scan.png.error").exists(), 20, ".error")
        dead = journal_entry(tmp_path / "state", scan)
        assert 0 == main(["retry", "-c", str(config), str(scan)])
        wait_until(lambda: txt(scan).exists(), 20, "text after retry")

    assert expected_text(scan) == txt(scan).read_text()
    assert 2 == len(emulator.submissions())
    assert dead is not None
    assert dead.guid != (inbox / "scan.png.guid").read_text().strip()


def test_an_outage_past_the_deadline_keeps_the_guid_and_polls_on(tmp_path, inbox):
    """fetch_timeout is for a service that answers "not yet": while it cannot be reached
    (here its token endpoint fails, with one-second tokens), a billed task keeps its `.guid`
    and is asked again; once the service answers, the text is written."""
    from ocrwatch.emulator import Emulator

    from .conftest import CLIENT_ID, SECRET

    with Emulator(client_id=CLIENT_ID, client_secret=SECRET, token_ttl_s=1) as emu:
        config = fetch_config(tmp_path, emu.url, inbox, fetch_timeout="1s")
        emu.script_next_tasks(TaskScript(processing_s=600))
        scan = inbox / "scan.png"
        with daemon_thread(config):
            scan.write_bytes(png_bytes(10))
            wait_until((inbox / "scan.png.guid").exists, 20, ".guid")
            calls = emu.token_calls
            emu.fail_token_next(503, times=60)
            wait_until(lambda: emu.token_calls >= calls + 30, 30, "polls in the outage")
            during = journal_entry(tmp_path / "state", scan)
            assert not (inbox / "scan.png.error").exists()
            emu.finish_tasks()  # done by the time the service can be reached again
            wait_until(lambda: txt(scan).exists(), 30, "text after the outage")

    assert during is not None
    assert ("fetching", True) == (during.state, (inbox / "scan.png.guid").exists())
    assert expected_text(scan) == txt(scan).read_text()
    assert 1 == len(emu.submissions())


def test_fetch_writes_the_text_of_files_that_only_have_a_guid(
    emulator, tmp_path, inbox, capsys
):
    """Files sent without fetch_results have only a `.guid`; `ocrwatch fetch` (no PATH:
    the configured folders) writes their text and exits 0; a second run skips them."""
    config = write_config(
        tmp_path / "config.yaml", emulator.url, [{"path": str(inbox)}]
    )
    sub = inbox / "sub"
    sub.mkdir()
    scans = [inbox / "a.png", sub / "b.png", inbox / "c.pdf"]
    for i, scan in enumerate(scans[:2]):
        scan.write_bytes(png_bytes(10 + i))
    scans[2].write_bytes(pdf_bytes(seed=12))
    assert 0 == main(["submit", "-c", str(config), str(inbox)])
    assert not any(txt(s).exists() for s in scans)

    first = main(["fetch", "-c", str(config)])
    again = main(["fetch", "-c", str(config), str(inbox)])

    out = capsys.readouterr().out
    assert (0, 0) == (first, again)
    assert [expected_text(s) for s in scans] == [txt(s).read_text() for s in scans]
    assert "fetched 3, skipped 0" in out
    assert "fetched 0, skipped 3" in out
    assert 3 == len(emulator.submissions())
    entry = journal_entry(tmp_path / "state", scans[1])
    assert entry is not None
    assert "completed" == entry.state


def test_fetch_exits_1_when_a_task_failed(emulator, tmp_path, inbox, capsys):
    """`ocrwatch fetch` of a task that ended in Error: the `.error`, and exit 1."""
    config = write_config(
        tmp_path / "config.yaml", emulator.url, [{"path": str(inbox)}]
    )
    good, bad = inbox / "good.png", inbox / "bad.png"
    good.write_bytes(png_bytes(20))
    bad.write_bytes(png_bytes(21))
    assert 0 == main(["submit", "-c", str(config), str(good), str(bad)])
    emulator.fail_task(
        (inbox / "bad.png.guid").read_text().strip(), messages=("no text",)
    )

    code = main(["fetch", "-c", str(config), str(good), str(bad)])

    assert 1 == code
    assert txt(good).exists()
    assert not txt(bad).exists()
    assert "no text" in (inbox / "bad.png.error").read_text()
    assert "failed: " + str(bad) in capsys.readouterr().out


def test_status_and_metrics_count_fetching_and_completed(emulator, tmp_path, inbox):
    """`status --json` counts `fetching` and `completed`; /metrics counts polls, results
    written and fetch failures, and gauges the files still fetching."""
    from .daemon_harness import status_json
    from .test_metrics import scrape, value

    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        profiles={"default": {"fetch_results": True}},
        metrics={"listen": "127.0.0.1:0"},
    )
    done, bad, waiting = inbox / "done.png", inbox / "bad.png", inbox / "waiting.png"

    with daemon_thread(config) as daemon:
        address = str(daemon.endpoint.address)
        done.write_bytes(png_bytes(40))
        wait_until(lambda: txt(done).exists(), 20, "the first text")
        emulator.fail_next_task(messages=("unreadable",))
        bad.write_bytes(png_bytes(41))
        wait_until((inbox / "bad.png.error").exists, 20, ".error")
        emulator.script_next_tasks(TaskScript(processing_s=3600))
        waiting.write_bytes(png_bytes(42))
        wait_until(
            lambda: journal_counts(tmp_path / "state")["fetching"] == 1, 20, "fetching"
        )
        report = status_json(config)
        samples = scrape(address)

    assert (1, 1, 1) == (
        report["counts"]["completed"],
        report["counts"]["fetching"],
        report["counts"]["rejected"],
    )
    assert (1.0, 1.0, 1.0) == (
        value(samples, "ocrwatch_results_fetched_total"),
        value(samples, "ocrwatch_fetch_failed_total"),
        value(samples, "ocrwatch_files_fetching"),
    )
    assert value(samples, "ocrwatch_result_polls_total") >= 3


def test_a_copy_reuses_the_task_and_gets_its_own_results(emulator, tmp_path, inbox):
    """The same content under another name (dedupe) is not uploaded again: it gets the GUID
    and the results of the task the first one made."""
    config = fetch_config(tmp_path, emulator.url, inbox)
    first, copy = inbox / "first.png", inbox / "copy.png"

    with daemon_thread(config):
        first.write_bytes(png_bytes(50))
        wait_until(lambda: txt(first).exists(), 20, "the first text")
        copy.write_bytes(png_bytes(50))
        wait_until(lambda: txt(copy).exists(), 20, "the copy's text")

    assert 1 == len(emulator.submissions())
    assert txt(first).read_text() == txt(copy).read_text()
    assert (inbox / "first.png.guid").read_text() == (
        inbox / "copy.png.guid"
    ).read_text()


def test_fetch_on_a_terminal_shows_a_progress_bar(emulator, tmp_path, inbox):
    """On a TTY, `ocrwatch fetch` draws a progress bar, keeps info logs quiet, then sums up."""
    from .conftest import cli_env, run_on_a_terminal

    config = write_config(
        tmp_path / "config.yaml", emulator.url, [{"path": str(inbox)}]
    )
    for i in range(3):
        (inbox / f"s{i}.png").write_bytes(png_bytes(60 + i))
    assert 0 == main(["submit", "-c", str(config), str(inbox)])
    code, text = run_on_a_terminal(
        ["fetch", "-c", str(config)], cli_env(OCRWATCH_POLL_SCALE="0.05")
    )

    assert 0 == code
    assert "3/3" in text
    assert "fetched 3, skipped 0 (results written already), failed 0" in text
    assert "job.completed" not in text


def test_the_services_warnings_are_logged_and_the_result_kept(
    emulator, tmp_path, inbox
):
    """error.warnings beside a Completed task are logged (`task.warned`); the text is written."""
    config = fetch_config(tmp_path, emulator.url, inbox)
    emulator.warn_next_task("The image is skewed.")
    scan = inbox / "scan.png"

    with capture_logs() as logs, daemon_thread(config):
        scan.write_bytes(png_bytes(70))
        wait_until(lambda: txt(scan).exists(), 20, "the text")

    assert [["The image is skewed."]] == [
        e["warnings"] for e in logs if e["event"] == "task.warned"
    ]
    assert expected_text(scan) == txt(scan).read_text()
