"""`ocrwatch run` as a subprocess: crashes, signals, reloads and refused credentials."""

from __future__ import annotations

import signal
import time
from collections import Counter

import psutil
import yaml

from .conftest import wait_until, write_config
from .daemon_harness import (
    in_flight,
    journal_counts,
    sidecars,
    spawn,
    status_json,
    stop,
)
from .images import write_png


def test_kill_9_mid_burst_loses_nothing_and_duplicates_only_in_flight(tmp_path, inbox):
    """After SIGKILL during a 300-file burst, a restart completes all 300; only files that were
    `submitting` at the kill may be sent twice."""
    from ocrwatch.emulator import Emulator

    with Emulator(
        client_id="test-client", client_secret="s3cr3t-Sentinel-7f1c2a", latency_s=0.01
    ) as emulator:
        config = write_config(
            tmp_path / "config.yaml",
            emulator.url,
            [{"path": str(inbox), "settle_seconds": 0.2}],
        )
        log = tmp_path / "run.log"
        proc = spawn(config, log, wait_started=True)
        for i in range(300):
            write_png(inbox / f"b{i % 5}" / f"scan-{i:04d}.png", i)
        wait_until(lambda: len(emulator.submissions()) >= 60, 60, "burst under way")

        assert [] == psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait(10)
        state = tmp_path / "state"
        interrupted = in_flight(state)
        sent_before = len(emulator.submissions())

        proc = spawn(config, log)
        wait_until(
            lambda: len(sidecars(inbox)) == 300, 120, "300 sidecars after restart"
        )
        assert 0 == stop(proc)

        counts = Counter(r["image_sha256"] for r in emulator.submissions())
        duplicates = sum(n - 1 for n in counts.values())
        assert 300 == len(counts)
        assert sent_before < 300
        assert duplicates <= interrupted
        assert 300 == journal_counts(state)["submitted"]


def test_sigterm_mid_burst_exits_0_and_restart_finishes(tmp_path, inbox):
    """SIGTERM stops within shutdown_timeout with exit 0; what was left queued is done after a restart."""
    from ocrwatch.emulator import Emulator

    with Emulator(
        client_id="test-client", client_secret="s3cr3t-Sentinel-7f1c2a", latency_s=0.05
    ) as emulator:
        config = write_config(
            tmp_path / "config.yaml",
            emulator.url,
            [{"path": str(inbox), "settle_seconds": 0.2}],
            shutdown_timeout=5,
        )
        log = tmp_path / "run.log"
        proc = spawn(config, log, wait_started=True)
        for i in range(150):
            write_png(inbox / f"scan-{i:04d}.png", i)
        wait_until(lambda: len(emulator.submissions()) >= 20, 30, "burst under way")

        started = time.monotonic()
        code = stop(proc, signal.SIGTERM)
        took = time.monotonic() - started
        state = tmp_path / "state"
        after_stop = journal_counts(state)

        assert 0 == code
        assert took < 5 + 3
        assert 0 == after_stop["submitting"]
        assert after_stop["submitted"] < 150

        proc = spawn(config, log)
        wait_until(lambda: len(sidecars(inbox)) == 150, 60, "150 sidecars")
        assert 0 == stop(proc)
        assert 150 == len(emulator.submissions())


def test_sighup_adds_a_new_folder(tmp_path, inbox, emulator):
    """SIGHUP reloads the config: a folder added to it is watched without a restart."""
    second = tmp_path / "second"
    second.mkdir()
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
    )
    log = tmp_path / "run.log"
    proc = spawn(config, log, wait_started=True)
    write_png(second / "before-reload.png", 1)

    data = yaml.safe_load(config.read_text())
    data["folders"].append(
        {"path": str(second), "settle_seconds": 0.2, "profile": "de"}
    )
    data["profiles"] = {"de": {"language": "German"}}
    config.write_text(yaml.safe_dump(data))
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: b"config.reloaded" in log.read_bytes(), 10, "reloaded")
    write_png(second / "after-reload.png", 2)

    wait_until(lambda: len(sidecars(second)) == 2, 15, "both files in the new folder")
    assert 0 == stop(proc)
    assert [{"language": "German"}] * 2 == [
        r["settings"] for r in emulator.submissions()
    ]


def test_invalid_config_on_sighup_keeps_the_old_one(tmp_path, inbox, emulator):
    """A broken config on reload is logged; the daemon keeps running on the old one."""
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
    )
    log = tmp_path / "run.log"
    proc = spawn(config, log, wait_started=True)
    good = config.read_text()

    config.write_text(good.replace("settle_seconds", "setle_seconds"))
    proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: b"config.reload_failed" in log.read_bytes(), 10, "reload refused"
    )
    write_png(inbox / "still-working.png", 1)

    wait_until(
        lambda: (inbox / "still-working.png.guid").exists(),
        10,
        "old config still serving",
    )
    assert 0 == stop(proc)
    assert b"did you mean `settle_seconds`?" in log.read_bytes()


def test_bad_credentials_pause_without_failing_then_sighup_fixes(
    tmp_path, inbox, emulator
):
    """While the token endpoint refuses the secret, files stay queued (none failed, no .error);
    after the secret is fixed and SIGHUP sent, everything goes through."""
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        api={"client_secret": "wrong-secret"},
    )
    log = tmp_path / "run.log"
    proc = spawn(config, log, wait_started=True)
    for i in range(5):
        write_png(inbox / f"s{i}.png", i)
    state = tmp_path / "state"
    wait_until(
        lambda: (
            b"auth.refused" in log.read_bytes() and journal_counts(state)["queued"] == 5
        ),
        15,
        "paused",
    )

    counts = journal_counts(state)
    assert (0, 0, 0) == (counts["failed"], counts["rejected"], counts["submitted"])
    assert [] == sidecars(inbox, ".error")
    assert 1 == emulator.token_calls
    assert 1 == log.read_bytes().count(b"auth.refused")

    config.write_text(
        config.read_text().replace("wrong-secret", "s3cr3t-Sentinel-7f1c2a")
    )
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(sidecars(inbox)) == 5, 15, "all through after the fix")
    assert 0 == stop(proc)
    assert b"wrong-secret" not in log.read_bytes()
    assert emulator.issued_tokens()
    assert not [t for t in emulator.issued_tokens() if t.encode() in log.read_bytes()]
    assert b"s3cr3t-Sentinel-7f1c2a" not in log.read_bytes()


def test_status_reports_counts_and_failures(tmp_path, inbox, emulator):
    """status --json after a run shows counts per state and the rejected file with its reason."""
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
    )
    write_png(inbox / "ok.png", 1)
    (inbox / "bad.png").write_text("nope")
    log = tmp_path / "run.log"
    proc = spawn(config, log)
    wait_until(
        lambda: (inbox / "ok.png.guid").exists() and (inbox / "bad.png.error").exists(),
        15,
    )
    assert 0 == stop(proc)

    report = status_json(config)

    assert (1, 1, 0) == (
        report["counts"]["submitted"],
        report["counts"]["rejected"],
        report["queue_depth"],
    )
    assert [("rejected", str(inbox / "bad.png"))] == [
        (f["state"], f["path"]) for f in report["recent_failures"]
    ]
    assert report["recent_failures"][0]["error"].startswith("not a supported image")


def test_sighup_changes_profiles_and_removes_a_folder(tmp_path, inbox, emulator):
    """After SIGHUP, the next file uses the changed profile, and a folder dropped from the config is
    no longer watched."""
    other = tmp_path / "other"
    other.mkdir()
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [
            {"path": str(inbox), "settle_seconds": 0.2},
            {"path": str(other), "settle_seconds": 0.2},
        ],
        profiles={"default": {"language": "English"}},
    )
    log = tmp_path / "run.log"
    proc = spawn(config, log, wait_started=True)
    write_png(inbox / "before.png", 1)
    wait_until(lambda: (inbox / "before.png.guid").exists(), 10)

    data = yaml.safe_load(config.read_text())
    data["folders"] = data["folders"][:1]
    data["profiles"] = {"default": {"language": "French"}}
    config.write_text(yaml.safe_dump(data))
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: b"config.reloaded" in log.read_bytes(), 10, "reloaded")
    write_png(other / "ignored.png", 2)
    write_png(inbox / "after.png", 3)
    wait_until(lambda: (inbox / "after.png.guid").exists(), 10)

    assert 0 == stop(proc)
    assert [{"language": "English"}, {"language": "French"}] == [
        r["settings"] for r in emulator.submissions()
    ]
    assert not (other / "ignored.png.guid").exists()


def test_kill_9_while_100_files_are_fetching_then_all_complete_without_uploads(
    tmp_path, inbox, emulator
):
    """SIGKILL while 100 files wait for their results (held in Processing), then a restart:
    all 100 are completed from the journal's polls, and not one is uploaded again."""
    emulator.set_delays(
        processing_s=3600
    )  # OCRWATCH_POLL_SCALE: polls every 0.1-0.75 s
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        profiles={"default": {"fetch_results": True}},
    )
    log = tmp_path / "run.log"
    state = tmp_path / "state"
    proc = spawn(config, log, wait_started=True, OCRWATCH_POLL_SCALE="0.05")
    for i in range(100):
        write_png(inbox / f"scan-{i:03d}.png", i)
    wait_until(
        lambda: journal_counts(state)["fetching"] == 100, 60, "100 files fetching"
    )
    proc.kill()
    proc.wait(10)
    emulator.finish_tasks()

    proc = spawn(config, log, OCRWATCH_POLL_SCALE="0.05")
    wait_until(lambda: journal_counts(state)["completed"] == 100, 60, "100 completed")
    assert 0 == stop(proc)

    assert 100 == len(emulator.submissions())
    assert 100 == len(list(inbox.glob("*.png.txt")))
