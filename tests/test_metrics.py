"""Prometheus `/metrics` and `/healthz`: counted where outcomes happen, checked against the emulator.

The daemon runs in-process with its listener on a free loopback port, or as `ocrwatch run` where
the exit code or the process's own sockets are the point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from ocrwatch.auth import TokenCache
from ocrwatch.config import parse_config
from ocrwatch.daemon import Health, health_problems
from ocrwatch.errors import AuthError, ConfigError, TransientApiError
from ocrwatch.journal import Job, Journal
from ocrwatch.metrics import Metrics

from .conftest import OCRWATCH, cli_env, wait_until, write_config
from .daemon_harness import (
    SPAWNED,
    daemon_thread,
    journal_counts,
    sidecars,
    spawn,
    stop,
)
from .images import png_bytes, write_png

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> Samples:
    response = requests.get(f"http://{address}/metrics", timeout=5)
    assert 200 == response.status_code
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def healthz(address: str) -> tuple[int, str]:
    response = requests.get(f"http://{address}/healthz", timeout=5)
    return response.status_code, response.text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def config(tmp_path, inbox, emulator):
    return write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        metrics={"listen": "127.0.0.1:0"},
    )


def test_counters_match_what_the_emulator_received(config, inbox, emulator):
    """Three scans, a copy of one and a text file named .png: seen 5, submitted 3 (as many as the
    emulator accepted and the histogram counted), deduplicated 1, rejected 1, one token."""
    with daemon_thread(config) as daemon:
        address = str(daemon.endpoint.address)
        for i in range(3):
            write_png(inbox / f"scan-{i}.png", i)
        (inbox / "notes.png").write_text("not an image\n")
        wait_until(lambda: (inbox / "scan-0.png.guid").exists(), 10, "first upload")
        (inbox / "copy-of-0.png").write_bytes(png_bytes(0))
        wait_until(
            lambda: daemon.journal.counts()["submitted"] == 4, 10, "4 files done"
        )
        wait_until(
            lambda: value(scrape(address), "ocrwatch_files_deduplicated_total") == 1,
            5,
            "dedupe counted",
        )

        samples = scrape(address)

    assert 3 == len(emulator.submissions())
    assert 4 == len(sidecars(inbox))
    assert 1 == len(sidecars(inbox, ".error"))
    assert {
        "seen": 5.0,
        "submitted": 3.0,
        "deduplicated": 1.0,
        "rejected": 1.0,
        "uploads timed": 3.0,
        "retries": 0.0,
        "tokens ok": float(emulator.token_calls),
        "queue depth": 0.0,
        "oldest queued age": 0.0,
        "observers alive": 1.0,
        "paused": 0.0,
    } == {
        "seen": value(samples, "ocrwatch_files_seen_total"),
        "submitted": value(samples, "ocrwatch_files_submitted_total"),
        "deduplicated": value(samples, "ocrwatch_files_deduplicated_total"),
        "rejected": value(samples, "ocrwatch_files_rejected_total"),
        "uploads timed": value(samples, "ocrwatch_upload_seconds_count"),
        "retries": value(samples, "ocrwatch_retries_total"),
        "tokens ok": value(samples, "ocrwatch_token_fetches_total", result="ok"),
        "queue depth": value(samples, "ocrwatch_queue_depth"),
        "oldest queued age": value(samples, "ocrwatch_oldest_queued_age_seconds"),
        "observers alive": value(samples, "ocrwatch_observers_alive"),
        "paused": value(samples, "ocrwatch_paused"),
    }
    assert 1 == emulator.token_calls


def test_retries_and_retry_later_are_counted(config, inbox, emulator):
    """Six 503s use up `max_attempts: 6`: five retries, one hand-back to the journal, and no
    accepted upload in the histogram."""
    emulator.fail_next(503, times=6)
    with daemon_thread(config) as daemon:
        address = str(daemon.endpoint.address)
        write_png(inbox / "scan.png", 1)
        wait_until(
            lambda: journal_counts(daemon.config.state_dir)["failed"] == 1,
            15,
            "handed back",
        )
        wait_until(
            lambda: value(scrape(address), "ocrwatch_retry_later_total") == 1,
            5,
            "retry later counted",
        )

        samples = scrape(address)

    posts = [
        r for r in emulator.received if r["method"] == "POST" and "ocr" in r["path"]
    ]
    assert (6, 5.0, 1.0, 0.0, 1.0) == (
        len(posts),
        value(samples, "ocrwatch_retries_total"),
        value(samples, "ocrwatch_retry_later_total"),
        value(samples, "ocrwatch_upload_seconds_count"),
        value(samples, "ocrwatch_queue_depth"),
    )


def test_healthz_turns_503_while_credentials_are_refused_and_200_after_a_fix(
    tmp_path, inbox, emulator
):
    """A wrong secret pauses uploads: 503 naming the credentials, the file still queued; the
    fixed config, reloaded, answers 200 again and the file is sent."""
    folders = [{"path": str(inbox), "settle_seconds": 0.2}]
    metrics = {"listen": "127.0.0.1:0"}
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        folders,
        api={"client_secret": "wrong"},
        metrics=metrics,
    )
    with daemon_thread(config) as daemon:
        address = str(daemon.endpoint.address)
        before = healthz(address)
        write_png(inbox / "scan.png", 1)
        wait_until(lambda: healthz(address)[0] == 503, 10, "unhealthy")
        status, reason = healthz(address)
        paused = scrape(address)

        write_config(config, emulator.url, folders, metrics=metrics)
        daemon.flags.reload = True
        wait_until(lambda: (inbox / "scan.png.guid").exists(), 10, "sent after fix")
        after = healthz(address)
        fixed = scrape(address)

    assert (200, "ok\n") == before
    assert 503 == status
    assert reason.startswith("credentials: the service refused")
    assert (1.0, 1.0, 1.0) == (
        value(paused, "ocrwatch_paused"),
        value(paused, "ocrwatch_queue_depth"),
        value(paused, "ocrwatch_token_fetches_total", result="refused"),
    )
    assert value(paused, "ocrwatch_oldest_queued_age_seconds") > 0
    assert (200, "ok\n") == after
    assert (1.0, 1.0, 0.0) == (  # the reloaded client counts into the same registry
        value(fixed, "ocrwatch_files_submitted_total"),
        value(fixed, "ocrwatch_token_fetches_total", result="ok"),
        value(fixed, "ocrwatch_paused"),
    )


def test_other_paths_are_404(config):
    """Only /metrics and /healthz are served."""
    with daemon_thread(config) as daemon:
        address = daemon.endpoint.address

        statuses = [
            requests.get(f"http://{address}{path}", timeout=5).status_code
            for path in ("/", "/metrics/x", "/healthz/", "/favicon.ico")
        ]

    assert [404, 404, 404, 404] == statuses


def test_a_reload_moves_the_listener_only_when_listen_changes(
    config, tmp_path, inbox, emulator
):
    """The same `listen` keeps the listener; a new port moves it (the old one closes); a port in
    use keeps the old one and says so."""
    taken = socket.create_server(("127.0.0.1", 0))
    new_port = free_port()

    def reload_with(listen: str) -> None:
        write_config(
            config,
            emulator.url,
            [{"path": str(inbox), "settle_seconds": 0.2}],
            metrics={"listen": listen},
        )
        before = daemon.loop.runtime
        daemon.flags.reload = True
        wait_until(lambda: daemon.loop.runtime is not before, 5, "reloaded")

    with capture_logs() as logs, daemon_thread(config) as daemon, taken:
        first = daemon.endpoint.address
        reload_with("127.0.0.1:0")
        same = daemon.endpoint.address
        reload_with(f"127.0.0.1:{new_port}")
        moved = daemon.endpoint.address
        old_closed = _refuses(str(first))
        reload_with(f"127.0.0.1:{taken.getsockname()[1]}")
        kept = daemon.endpoint.address
        kept_serves = healthz(str(kept))[0]

    assert first == same
    assert (f"127.0.0.1:{new_port}", True) == (moved, old_closed)
    assert (moved, 200) == (kept, kept_serves)
    failed = [e for e in logs if e["event"] == "metrics.move_failed"]
    assert 1 == len(failed)
    assert "metrics.listen" in failed[0]["error"]


def _refuses(address: str) -> bool:
    try:
        requests.get(f"http://{address}/healthz", timeout=2)
    except requests.ConnectionError:
        return True
    return False


def test_without_metrics_nothing_listens(tmp_path, inbox, emulator):
    """No `metrics` key: `ocrwatch run` opens no listening socket."""
    config = write_config(
        tmp_path / "config.yaml", emulator.url, [{"path": str(inbox)}]
    )
    proc = spawn(config, tmp_path / "run.log", wait_started=True)

    listening = [
        c
        for c in psutil.Process(proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert 0 == stop(proc)

    assert [] == listening


def test_with_metrics_the_daemon_listens_on_loopback(tmp_path, inbox, emulator):
    """`listen: PORT` alone means 127.0.0.1:PORT."""
    port = free_port()
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox)}],
        metrics={"listen": port},
    )
    proc = spawn(config, tmp_path / "run.log", wait_started=True)

    listening = [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    answer = healthz(f"127.0.0.1:{port}")
    assert 0 == stop(proc)

    assert ([("127.0.0.1", port)], 200) == (listening, answer[0])


def run_daemon(config: Path) -> tuple[int, list[str]]:
    result = subprocess.run(
        [*OCRWATCH, "run", "-c", str(config)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=30,
        check=False,
    )
    return result.returncode, [
        line for line in result.stderr.splitlines() if not line.startswith("{")
    ]


def test_a_port_in_use_at_start_is_exit_1_in_one_sentence(tmp_path, inbox, emulator):
    """Something else on the port: exit 1 before anything starts, with one line naming it."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "config.yaml",
            emulator.url,
            [{"path": str(inbox)}],
            metrics={"listen": f"127.0.0.1:{port}"},
        )

        code, lines = run_daemon(config)

    assert (1, 1) == (code, len(lines))
    assert lines[0].startswith(
        f"ocrwatch: {config}: metrics.listen: cannot listen on 127.0.0.1:{port} ("
    )
    assert [] == emulator.received


def test_a_bad_listen_is_exit_2_in_one_sentence(tmp_path, inbox, emulator):
    """A host name that is not an address: exit 2, naming the file and `metrics.listen`."""
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox)}],
        metrics={"listen": "nas:9464"},
    )

    code, lines = run_daemon(config)

    assert (
        2,
        [
            f"ocrwatch: {config}: metrics.listen: `nas:9464` is not host:port with an IP "
            "address (or localhost) and a port 0-65535; use e.g. 127.0.0.1:9464"
        ],
    ) == (code, lines)


class TestListen:
    @pytest.mark.parametrize(
        ("listen", "expected"),
        [
            pytest.param("127.0.0.1:9464", ("127.0.0.1", 9464), id="v4"),
            pytest.param(9464, ("127.0.0.1", 9464), id="port-only-is-loopback"),
            pytest.param(":9100", ("127.0.0.1", 9100), id="no-host-is-loopback"),
            pytest.param(
                "0.0.0.0:9464",
                ("0.0.0.0", 9464),  # noqa: S104 -- only parsed, never bound
                id="explicit-any",
            ),
            pytest.param("[::1]:9464", ("::1", 9464), id="v6"),
            pytest.param("localhost:9464", ("localhost", 9464), id="localhost"),
        ],
    )
    def test_valid(self, listen, expected):
        """A port alone listens on loopback; any other host must be written out."""
        config = parse_config(
            {"folders": [{"path": "/x"}], "metrics": {"listen": listen}}, "c.yaml"
        )

        assert config.metrics is not None
        assert expected == (config.metrics.host, config.metrics.port)

    @pytest.mark.parametrize(
        "listen",
        [
            pytest.param("nas:9464", id="hostname"),
            pytest.param("127.0.0.1:65536", id="port-too-big"),
            pytest.param("127.0.0.1:+80", id="signed-port"),
            pytest.param("::1:9464", id="v6-without-brackets"),
            pytest.param("[127.0.0.1]:80", id="v4-in-brackets"),
            pytest.param("", id="empty"),
        ],
    )
    def test_invalid(self, listen):
        """A bad value is one sentence naming `metrics.listen` and an example."""
        with pytest.raises(ConfigError) as caught:
            parse_config(
                {"folders": [{"path": "/x"}], "metrics": {"listen": listen}}, "c.yaml"
            )

        assert str(caught.value).startswith("c.yaml: metrics.listen: `")
        assert str(caught.value).endswith("; use e.g. 127.0.0.1:9464")

    def test_absent_means_off_and_empty_means_the_default(self):
        """No `metrics` key: nothing listens; `metrics: {}`: the default loopback port."""
        off = parse_config({"folders": [{"path": "/x"}]}, "c.yaml")
        on = parse_config({"folders": [{"path": "/x"}], "metrics": {}}, "c.yaml")

        assert (None, "127.0.0.1:9464") == (
            off.metrics,
            on.metrics.listen if on.metrics else None,
        )


HEALTHY = Health(
    started=True,
    scans_finished=1,
    missing=frozenset(),
    workers=4,
    in_flight=0,
    paused=False,
    settling=0,
    folders=2,
    observers=2,
    observers_alive=2,
    workers_alive=4,
    workers_wanted=4,
    credentials_refused=False,
)


class TestHealthProblems:
    @pytest.mark.parametrize(
        ("changes", "problem"),
        [
            pytest.param({}, None, id="healthy"),
            pytest.param({"paused": True}, None, id="bad-answers-pause-is-not-auth"),
            pytest.param({"started": False}, "starting", id="not-started"),
            pytest.param(
                {"observers_alive": 1, "missing": frozenset({Path("/srv/b")})},
                "watchers: 1 of 2 folders not watched (missing: /srv/b)",
                id="observer-down",
            ),
            pytest.param(
                {"workers_alive": 3},
                "workers: 3 of 4 upload threads alive",
                id="worker-dead",
            ),
            pytest.param(
                {"scan_stalled_s": 301.0},
                "scan: the catch-up scan has not moved on for 301 s (a share that hangs?); "
                "files that arrive unseen wait until it does",
                id="scan-stalled",
            ),
            pytest.param({"scan_stalled_s": 299.0}, None, id="scan-slow-but-moving"),
            pytest.param(
                {"paused": True, "credentials_refused": True},
                "credentials: the service refused them and uploads are paused; "
                "fix api.client_id or the secret, then reload",
                id="refused",
            ),
        ],
    )
    def test_rule(self, changes, problem):
        """Healthy only while every observer and worker is alive and credentials are not refused."""
        problems = health_problems(dataclasses.replace(HEALTHY, **changes))

        assert ([] if problem is None else [problem]) == problems


class TestTokenFetchCount:
    @pytest.mark.parametrize(
        ("error", "result"),
        [
            pytest.param(None, "ok", id="ok"),
            pytest.param(AuthError("refused"), "refused", id="refused"),
            pytest.param(TransientApiError("503"), "failed", id="failed"),
        ],
    )
    def test_each_fetch_is_counted_by_result(self, error, result):
        """Every call to the token endpoint counts once, under what came of it."""
        metrics = Metrics()

        def fetch() -> tuple[str, float]:
            if error is not None:
                raise error
            return "t", 3600.0

        tokens = TokenCache(fetch, clock=lambda: 0.0, metrics=metrics)
        with contextlib.suppress(AuthError, TransientApiError):
            tokens.get()
            tokens.get()  # the token is cached: no second call

        counted = {
            r: metrics.registry.get_sample_value(
                "ocrwatch_token_fetches_total", {"result": r}
            )
            for r in ("ok", "refused", "failed")
        }
        expected = dict.fromkeys(("ok", "refused", "failed"), 0.0) | {result: 1.0}
        assert expected == counted


def test_healthz_names_a_folder_that_is_not_watched(tmp_path, inbox, emulator):
    """A watched folder that is missing has no observer: 503 naming it, until it appears."""
    late = tmp_path / "late"
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox)}, {"path": str(late)}],
        metrics={"listen": "127.0.0.1:0"},
    )
    with daemon_thread(config, folders=2) as daemon:
        address = str(daemon.endpoint.address)
        missing = healthz(address)
        alive = value(scrape(address), "ocrwatch_observers_alive")
        late.mkdir()
        wait_until(lambda: healthz(address)[0] == 200, 10, "watched once it appeared")

    assert (503, f"watchers: 1 of 2 folders not watched (missing: {late})\n") == missing
    assert 1.0 == alive


class TestOldestQueued:
    def test_a_file_queued_anew_waits_from_then_and_held_ones_do_not_count(
        self, tmp_path
    ):
        """A done file whose content changed waits from its new queueing, not its first sight;
        a held file waits on the user and is left out."""
        journal = Journal(tmp_path / "journal.sqlite3")
        root = tmp_path / "inbox"
        done, held = Job(root / "a.png", root, 1, 1), Job(root / "b.png", root, 1, 1)
        journal.note_many([done, held], now=100.0)
        journal.hold(held.path, reason="held: bad .ocrwatch.yaml", now=100.0)
        journal.mark_submitted(
            done.path, guid="g", sha256=None, size=1, mtime_ns=1, now=110.0
        )
        nothing_waits = journal.oldest_queued_at()

        journal.note_many([Job(done.path, root, 2, 2)], now=200.0)

        assert (None, 200.0) == (nothing_waits, journal.oldest_queued_at())
        journal.close()


def test_a_quiet_log_level_loses_no_counts(tmp_path, inbox, emulator):
    """`--log-level warning` drops the info lines, not what the metrics count."""
    port = free_port()
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    proc = subprocess.Popen(
        [*OCRWATCH, "run", "-c", str(config), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    SPAWNED.append(proc)
    wait_until(lambda: not _refuses(f"127.0.0.1:{port}"), 15, "listening")
    write_png(inbox / "scan.png", 1)
    wait_until(lambda: (inbox / "scan.png.guid").exists(), 10, "sent")

    samples = scrape(f"127.0.0.1:{port}")
    assert 0 == stop(proc)

    assert (1.0, 1.0, 1.0) == (
        value(samples, "ocrwatch_files_seen_total"),
        value(samples, "ocrwatch_files_submitted_total"),
        value(samples, "ocrwatch_upload_seconds_count"),
    )


def test_a_catch_up_scan_that_stops_moving_on_is_seen_as_stalled(tmp_path):
    """The scan thread hung (here: on its own callback, as on a share that hangs a
    scandir): `stalled_for` grows; once it is done, it is 0 again."""
    import threading
    import time

    from ocrwatch.catchup import CatchUp
    from ocrwatch.config import FolderConfig
    from ocrwatch.journal import Journal

    folder = tmp_path / "in"
    folder.mkdir()
    write_png(folder / "a.png", 1)
    journal = Journal(tmp_path / "journal.sqlite3")
    hung, release = threading.Event(), threading.Event()

    def emit(found):
        hung.set()
        release.wait(10)

    catchup = CatchUp(journal, emit, restore=lambda found, guid: None)
    catchup.request(folder, "test")
    catchup.start_if_due({folder: FolderConfig(path=folder)}, [folder])
    try:
        assert hung.wait(10)
        stalled = catchup.stalled_for(time.monotonic() + 400)
    finally:
        release.set()
    # Done: no round runs, so nothing is stalled, however late it is asked.
    wait_until(
        lambda: catchup.stalled_for(time.monotonic() + 400) == 0.0, 10, "scan ended"
    )
    journal.close()

    assert stalled > 399
    assert 1 == catchup.scans_finished
