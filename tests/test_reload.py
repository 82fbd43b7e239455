"""SIGHUP while uploads are in flight: `ocrwatch run` as a subprocess against a slow emulator.

A reload must never wedge the daemon, lose a file, leave a row `submitting`, send a file twice or
leak a thread; a new `concurrency` applies at once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import psutil
import pytest
import yaml

from ocrwatch.emulator import Emulator

from .conftest import CLIENT_ID, OCRWATCH, SECRET, cli_env, wait_until, write_config
from .daemon_harness import journal_counts, sidecars, spawn, stop
from .images import write_png


@pytest.fixture
def slow_emulator(request) -> Iterator[Emulator]:
    with Emulator(
        client_id=CLIENT_ID, client_secret=SECRET, latency_s=request.param
    ) as emu:
        yield emu


def start(tmp_path, inbox, emulator, **api):
    """`ocrwatch run` on `inbox`, once its first scan is done; its config is tmp_path/config.yaml."""
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        api=api,
    )
    log = tmp_path / "run.log"
    proc = spawn(config, log, wait_started=True)
    wait_until(lambda: b"rescan.finished" in log.read_bytes(), 10, "first scan")
    return log, proc


def threads_of(proc: subprocess.Popen[bytes]) -> int:
    return psutil.Process(proc.pid).num_threads()


def assert_all_sent_once(emulator: Emulator, inbox, n: int, state) -> None:
    shas = Counter(r["image_sha256"] for r in emulator.submissions())
    counts = journal_counts(state)
    assert (n, n) == (len(sidecars(inbox)), len(shas))
    assert {1} == set(shas.values())
    assert (n, 0) == (counts["submitted"], counts["submitting"])


@pytest.mark.parametrize("slow_emulator", [0.02], indirect=True)
def test_five_reloads_during_a_500_file_burst(tmp_path, inbox, slow_emulator):
    """Every file gets its .guid exactly once, no row stays `submitting`, and the daemon ends
    with as many threads as it started with."""
    log, proc = start(tmp_path, inbox, slow_emulator)
    threads_before = threads_of(proc)
    for i in range(500):
        write_png(inbox / f"b{i % 4}" / f"scan-{i:04d}.png", i)
    wait_until(lambda: len(slow_emulator.submissions()) >= 20, 30, "burst under way")

    for _ in range(5):
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)  # spread the reloads over the burst
    wait_until(lambda: len(sidecars(inbox)) == 500, 90, "500 sidecars")
    wait_until(lambda: threads_of(proc) == threads_before, 15, "threads back")

    assert 0 == stop(proc)
    assert 5 == log.read_bytes().count(b"config.reloaded")
    assert_all_sent_once(slow_emulator, inbox, 500, tmp_path / "state")


@pytest.mark.parametrize("slow_emulator", [0.05], indirect=True)
def test_twenty_reloads_within_two_seconds_during_a_burst(
    tmp_path, inbox, slow_emulator
):
    """A storm of SIGHUPs (a script gone wrong) neither wedges the daemon nor leaks threads."""
    log, proc = start(tmp_path, inbox, slow_emulator)
    threads_before = threads_of(proc)
    for i in range(200):
        write_png(inbox / f"scan-{i:04d}.png", i)
    wait_until(lambda: len(slow_emulator.submissions()) >= 8, 30, "burst under way")

    for _ in range(20):
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.1)
    wait_until(lambda: len(sidecars(inbox)) == 200, 90, "200 sidecars")
    wait_until(lambda: threads_of(proc) == threads_before, 15, "threads back")

    assert 0 == stop(proc)
    assert log.read_bytes().count(b"config.reloaded") >= 1
    assert_all_sent_once(slow_emulator, inbox, 200, tmp_path / "state")


@pytest.mark.parametrize("slow_emulator", [1.5], indirect=True)
def test_a_reload_at_concurrency_1_mid_upload_loses_no_worker(
    tmp_path, inbox, slow_emulator
):
    """The case that wedged the upload processes: one slot, a 1.5 s service, SIGHUP while a
    file is on the wire. All six files still go through."""
    log, proc = start(tmp_path, inbox, slow_emulator, concurrency=1)
    for i in range(6):
        write_png(inbox / f"scan-{i}.png", i)
    wait_until(
        lambda: b'"job.queued"' in log.read_bytes() and slow_emulator.bodies_read >= 2,
        10,
        "the first upload on the wire",
    )

    proc.send_signal(signal.SIGHUP)

    wait_until(lambda: len(sidecars(inbox)) == 6, 30, "6 sidecars")
    assert 0 == stop(proc)
    assert_all_sent_once(slow_emulator, inbox, 6, tmp_path / "state")


@pytest.mark.parametrize("slow_emulator", [0.3], indirect=True)
def test_a_new_concurrency_applies_on_reload(tmp_path, inbox, slow_emulator):
    """concurrency 2 -> 6 on SIGHUP: four more upload threads, and six uploads at once."""
    log, proc = start(tmp_path, inbox, slow_emulator, concurrency=2)
    threads_at_2 = threads_of(proc)
    for i in range(60):
        write_png(inbox / f"scan-{i:03d}.png", i)
    wait_until(lambda: len(slow_emulator.submissions()) >= 4, 30, "burst under way")
    peak_at_2 = slow_emulator.peak_in_flight

    config = tmp_path / "config.yaml"
    data = yaml.safe_load(config.read_text())
    data["api"]["concurrency"] = 6
    config.write_text(yaml.safe_dump(data))
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: b"config.reloaded" in log.read_bytes(), 10, "reloaded")
    slow_emulator.reset_peak()
    wait_until(lambda: len(sidecars(inbox)) == 60, 60, "60 sidecars")
    threads_at_6 = threads_of(proc)

    assert 0 == stop(proc)
    assert (2, 6) == (peak_at_2, slow_emulator.peak_in_flight)
    assert 4 == threads_at_6 - threads_at_2


def test_a_secret_echoed_by_the_service_is_masked_everywhere(tmp_path, inbox, emulator):
    """A service that quotes the client secret in a rejection: the `.error`, the journal,
    `status` and the log all show it masked."""
    log, proc = start(tmp_path, inbox, emulator)
    emulator.fail_next(400, detail=f"invalid request from client_secret={SECRET}")
    write_png(inbox / "a.png", 1)
    wait_until(lambda: (inbox / "a.png.error").exists(), 10, ".error written")
    assert 0 == stop(proc)

    status = [
        subprocess.run(
            [*OCRWATCH, "status", "-c", str(tmp_path / "config.yaml"), *extra],
            capture_output=True,
            text=True,
            env=cli_env(),
            check=True,
            timeout=30,
        ).stdout
        for extra in ([], ["--json"])
    ]
    error = (inbox / "a.png.error").read_text()
    [failure] = json.loads(status[1])["recent_failures"]
    everything = error + "".join(status) + log.read_text()
    assert "client_secret=**********" in error
    assert "client_secret=**********" in failure["error"]
    assert SECRET not in everything
