"""sd_notify and the watchdog: the Notifier against real AF_UNIX datagram sockets, the pure
progress decision with `now` passed in, and `ocrwatch run` telling a real NOTIFY_SOCKET when it
is ready, reloading, stopping and alive -- and falling silent while a worker is wedged."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from ocrwatch.client import CHUNK_BYTES, ImageBody, OcrClient
from ocrwatch.config import Credentials, parse_config
from ocrwatch.jobloop import JobLoop
from ocrwatch.journal import Job, Journal
from ocrwatch.notify import Notifier, parse_address, parse_watchdog_s
from ocrwatch.preflight import content_key
from ocrwatch.progress import (
    Heartbeat,
    Heartbeats,
    Worker,
    call_bound_s,
    find_problems,
    stalled,
)
from ocrwatch.retry import RetryPolicy
from ocrwatch.runtime import Runtime
from ocrwatch.service import status_text
from ocrwatch.settings import Settings

from .conftest import CLIENT_ID, SECRET, wait_until, write_config
from .daemon_harness import daemon_thread, sidecars, spawn, stop
from .images import png_bytes, write_png

GUID = "a197aade-bba9-4c7a-92c7-46851b3dceaa"


class Listener:
    """A notify socket as systemd binds one: every datagram kept, with the time it came."""

    def __init__(self, address: str) -> None:
        self.address = address  # what NOTIFY_SOCKET says
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self._sock.settimeout(0.05)
        self._lock = threading.Lock()
        self._datagrams: list[tuple[float, tuple[str, ...]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._datagrams.append(
                    (time.monotonic(), tuple(data.decode().split("\n")))
                )

    def datagrams(self) -> list[tuple[float, tuple[str, ...]]]:
        with self._lock:
            return list(self._datagrams)

    def fields(self) -> list[str]:
        return [f for _, lines in self.datagrams() for f in lines]

    def pings(self) -> list[float]:
        return [t for t, lines in self.datagrams() if "WATCHDOG=1" in lines]

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    """In the abstract namespace, as systemd's own NOTIFY_SOCKET can be."""
    sock = Listener(f"@ocrwatch-test-{uuid.uuid4().hex}")
    yield sock
    sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A socket path must fit in 108 bytes; pytest's tmp_path may not."""
    with tempfile.TemporaryDirectory(prefix="ow-", dir="/tmp") as name:
        yield Path(name)


class Notifiers:
    """Notifiers made by a test, closed after it."""

    def __init__(self) -> None:
        self.made: list[Notifier] = []

    def make(self, env: dict[str, str]) -> Notifier:
        self.made.append(Notifier.from_env(env))
        return self.made[-1]


@pytest.fixture
def notifiers() -> Iterator[Notifiers]:
    made = Notifiers()
    yield made
    for notifier in made.made:
        notifier.close()


def watchdog_env(listener: Listener, interval_s: float = 1.0) -> dict[str, str]:
    return {
        "NOTIFY_SOCKET": listener.address,
        "WATCHDOG_USEC": str(int(interval_s * 1_000_000)),
    }


def max_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch without a ping between `start` and `end`."""
    marks = [start, *(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(marks))


class TestNotifier:
    def test_sends_to_a_socket_path(self, notifiers, short_dir):
        """NOTIFY_SOCKET=/path: one datagram per message, its fields on lines of their own."""
        listener = Listener(str(short_dir / "notify"))
        notifier = notifiers.make({"NOTIFY_SOCKET": listener.address})

        sent = notifier.ready("queued 0")
        wait_until(lambda: bool(listener.datagrams()), 5, "a datagram")

        listener.close()
        assert sent
        assert [("READY=1", "STATUS=queued 0")] == [d for _, d in listener.datagrams()]

    def test_sends_to_an_abstract_socket(self, notifiers, listener):
        """NOTIFY_SOCKET=@name is the abstract namespace: a leading NUL, no file."""
        notifier = notifiers.make({"NOTIFY_SOCKET": listener.address})

        notifier.watchdog()
        notifier.stopping()
        wait_until(lambda: len(listener.datagrams()) == 2, 5, "two datagrams")

        assert [("WATCHDOG=1",), ("STOPPING=1",)] == [
            d for _, d in listener.datagrams()
        ]

    def test_without_notify_socket_nothing_is_sent_and_nothing_pings(self, notifiers):
        """Outside systemd every call is a no-op, even with a WATCHDOG_USEC in the environment."""
        notifier = notifiers.make({"WATCHDOG_USEC": "1000000"})

        assert (False, False, None) == (
            notifier.enabled,
            notifier.ready("x"),
            notifier.ping_every_s,
        )

    def test_reloading_carries_the_monotonic_time_it_started(self, notifiers, listener):
        """RELOADING=1 comes with MONOTONIC_USEC, CLOCK_MONOTONIC in microseconds, as systemd 253 wants."""
        notifier = notifiers.make({"NOTIFY_SOCKET": listener.address})
        before = time.monotonic_ns() // 1000

        notifier.reloading()
        after = time.monotonic_ns() // 1000
        wait_until(lambda: bool(listener.datagrams()), 5, "a datagram")

        [(_, (first, usec))] = listener.datagrams()
        assert "RELOADING=1" == first
        assert usec.startswith("MONOTONIC_USEC=")
        assert before <= int(usec.removeprefix("MONOTONIC_USEC=")) <= after

    def test_a_status_is_one_field_whatever_it_holds(self, notifiers, listener):
        """A newline in a status would start a field of its own (a forged READY=1, say)."""
        notifier = notifiers.make({"NOTIFY_SOCKET": listener.address})

        notifier.status("bad\nREADY=1")
        wait_until(lambda: bool(listener.datagrams()), 5, "a datagram")

        assert [("STATUS=bad READY=1",)] == [d for _, d in listener.datagrams()]

    def test_a_send_nobody_receives_is_logged_once_and_never_raised(
        self, notifiers, short_dir
    ):
        """A socket that is gone costs one `notify.failed` line, however many sends follow."""
        notifier = notifiers.make({"NOTIFY_SOCKET": str(short_dir / "gone")})

        with capture_logs() as logs:
            results = [notifier.watchdog() for _ in range(3)]

        assert [False] * 3 == results
        assert ["notify.failed"] == [e["event"] for e in logs]

    def test_a_receiver_that_never_reads_does_not_block_the_sender(
        self, notifiers, short_dir
    ):
        """Once the receiver's queue is full a send fails at once instead of waiting."""
        path = short_dir / "full"
        deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        deaf.bind(str(path))
        notifier = notifiers.make({"NOTIFY_SOCKET": str(path)})
        started = time.monotonic()

        with capture_logs() as logs:
            results = [notifier.status("x" * 1000) for _ in range(5000)]

        deaf.close()
        assert time.monotonic() - started < 5
        assert True in results
        assert False in results
        assert ["notify.failed"] == [e["event"] for e in logs]

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param("/run/systemd/notify", "/run/systemd/notify", id="path"),
            pytest.param("@ocrwatch/1", "\0ocrwatch/1", id="abstract"),
            pytest.param(None, None, id="unset"),
            pytest.param("", None, id="empty"),
            pytest.param("run/notify", None, id="relative"),
            pytest.param("vsock:2:1234", None, id="vsock"),
        ],
    )
    def test_parse_address(self, value, expected):
        """A path or `@name`; anything else sends nothing rather than somewhere unexpected."""
        assert expected == parse_address(value)

    @pytest.mark.parametrize(
        ("usec", "pid", "expected"),
        [
            pytest.param("60000000", None, 60.0, id="no-pid"),
            pytest.param("1000000", "42", 1.0, id="our-pid"),
            pytest.param("1000000", "43", None, id="another-process"),
            pytest.param(None, None, None, id="unset"),
            pytest.param("soon", None, None, id="garbage"),
            pytest.param("0", None, None, id="zero"),
        ],
    )
    def test_parse_watchdog_s(self, usec, pid, expected):
        """WATCHDOG_USEC in seconds, only for the process WATCHDOG_PID names (if it names one)."""
        assert expected == parse_watchdog_s(usec, pid, 42)

    def test_pings_come_at_half_the_interval(self, notifiers):
        """sd_watchdog_enabled(3): ping at half of WATCHDOG_USEC."""
        notifier = notifiers.make({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "60000000"})

        assert 30.0 == notifier.ping_every_s


def beat(doing: str, at: float, quiet_s: float, thread: str = "job-0") -> Heartbeat:
    return Heartbeat(thread, doing, at, quiet_s)


class TestProgress:
    def test_a_worker_is_stalled_only_past_what_its_last_beat_allowed(self):
        """Quiet for exactly its allowance is fine; a moment longer is a stall with a reason."""
        sending = beat("sending /in/a.png", at=100.0, quiet_s=150.0)

        within = stalled([sending], now=250.0)
        past = stalled([sending], now=250.5)

        assert [] == within
        assert [
            "job-0 made no progress for 150s while sending /in/a.png (allowed 150s)"
        ] == past

    def test_one_call_may_take_three_connects_and_two_reads(self):
        """Two addresses to connect to and the sends (connect timeout), the status line and the
        body (read timeout): 150 s with the defaults."""
        assert (150.0, 3.5) == (call_bound_s(10, 60), call_bound_s(0.5, 1))

    @pytest.mark.parametrize(
        ("observers", "alive", "workers", "expected"),
        [
            pytest.param(2, 2, [Worker("job-0", True, None)], (), id="healthy"),
            pytest.param(
                2,
                1,
                [],
                ("1 of 2 observers stopped",),
                id="an-observer-stopped",
            ),
            pytest.param(
                1,
                1,
                [Worker("job-1", False, beat("idle", 0.0, 1.0, "job-1"))],
                ("job-1 is not running",),
                id="a-dead-worker-is-not-also-stalled",
            ),
            pytest.param(
                1,
                1,
                [Worker("job-0", True, beat("calling host", 0.0, 3.5))],
                ("job-0 made no progress for 10s while calling host (allowed 4s)",),
                id="a-stalled-worker",
            ),
        ],
    )
    def test_problems(self, observers, alive, workers, expected):
        """Every observer of an existing folder runs and every worker lives and progresses."""
        assert expected == find_problems(observers, alive, workers, now=10.0)

    def test_beats_from_threads_that_never_registered_are_ignored(self):
        """`submit`'s threads and tests calling step() are nobody's workers."""
        beats = Heartbeats(clock=lambda: 5.0)
        other = threading.Thread(target=lambda: beats.beat("sending", 1.0))

        other.start()
        other.join()

        assert None is beats.of(other)

    def test_a_backoff_announced_before_its_sleep_is_progress(self, emulator):
        """A 100 s Retry-After wait between two attempts keeps the worker within its allowance."""
        now = [1000.0]
        beats = Heartbeats(clock=lambda: now[0])
        seen: list[list[str]] = []

        def sleep(seconds: float) -> None:
            now[0] += seconds
            last = beats.of(threading.current_thread())
            assert last is not None
            seen.append(stalled([last], now[0]))

        api = parse_config(
            {
                "api": {
                    "base_url": emulator.url,
                    "timeout": {"connect": 0.5, "read": 1},
                },
                "state_dir": "/nonexistent",
                "folders": [{"path": "/in"}],
            },
            "test",
        ).api
        client = OcrClient(
            api,
            Credentials(CLIENT_ID, SecretStr(SECRET)),
            policy=RetryPolicy(max_attempts=2, max_delay_s=120, sleep=sleep),
        )
        bound = call_bound_s(0.5, 1)
        emulator.fail_next(503, retry_after="100")
        beats.register("starting", bound)
        image = Path(tempfile.mkstemp(suffix=".png")[1])
        image.write_bytes(png_bytes(1))

        try:
            sub = client.submit(
                image,
                Settings(),
                progress=lambda doing, wait_s: beats.beat(doing, bound + wait_s),
            )
        finally:
            image.unlink()

        assert 2 == sub.attempts
        assert [[]] == seen

    def test_a_body_sent_chunk_by_chunk_beats_before_each_chunk(self, tmp_path):
        """A big upload on a slow line is progress as long as its chunks keep going out."""
        path = tmp_path / "big.tif"
        path.write_bytes(os.urandom(2 * CHUNK_BYTES + 1000))
        beats: list[int] = []
        fd = os.open(path, os.O_RDONLY)

        try:
            body = ImageBody(
                fd,
                path.stat().st_size,
                b"{",
                b"}",
                progress=lambda: beats.append(len(beats)),
            )
            sent = b"".join(body)
        finally:
            os.close(fd)

        assert len(body) == len(sent)
        assert 3 == len(beats)

    def test_waiting_for_a_twin_on_the_wire_is_progress(self, tmp_path, emulator):
        """b.png waits for the GUID of a.png (same content, being sent) far longer than one
        call's bound: its worker is never stalled meanwhile."""
        (tmp_path / "in").mkdir()
        journal = Journal(tmp_path / "state" / "journal.sqlite3")
        config = {
            "api": {
                "base_url": emulator.url,
                "concurrency": 1,
                "timeout": {"connect": 0.1, "read": 0.3},
            },
            "state_dir": str(tmp_path / "state"),
            "folders": [{"path": str(tmp_path / "in")}],
        }
        runtime = Runtime.build(
            parse_config(config, "test"), Credentials(CLIENT_ID, SecretStr(SECRET))
        )
        loop = JobLoop(journal, runtime)
        data = png_bytes(5)
        twin, path = tmp_path / "in" / "a.png", tmp_path / "in" / "b.png"
        twin.write_bytes(data)
        path.write_bytes(data)
        twin_job = Job(twin, twin.parent, len(data), twin.stat().st_mtime_ns)
        journal.note_many([twin_job], 0.0)
        assert journal.claim_file(twin_job, 0) is not None
        key = content_key(Settings(), trial=False)
        sha = hashlib.sha256(data).hexdigest()
        assert journal.mark_content(twin, sha, key, since=0.0)  # a.png "on the wire"
        journal.note_many(
            [Job(path, path.parent, len(data), path.stat().st_mtime_ns)], 0.0
        )
        loop.start()
        problems: list[tuple[str, ...]] = []

        try:
            wait_until(lambda: loop.in_flight == 1, 5, "b.png claimed")
            end = time.monotonic() + 3 * call_bound_s(0.1, 0.3)
            while time.monotonic() < end:
                problems.append(
                    find_problems(0, 0, loop.worker_states(), time.monotonic())
                )
                time.sleep(0.05)
            journal.mark_submitted(
                twin,
                guid=GUID,
                sha256=sha,
                size=len(data),
                mtime_ns=twin.stat().st_mtime_ns,
                now=time.time(),
                settings_key=key,
                accepted_at=time.time(),
            )
            wait_until(lambda: (path.parent / "b.png.guid").exists(), 5, "b.png.guid")
        finally:
            loop.stop(5)
            journal.close()

        assert {()} == set(problems)
        assert [] == emulator.submissions()

    def test_the_status_line_has_queue_counts_and_trouble(self):
        """What `systemctl status` shows: the queue, the counts, a pause and why pings stopped."""
        counts = {
            "queued": 3,
            "submitted": 120,
            "fetching": 5,
            "completed": 80,
            "failed": 1,
            "rejected": 2,
        }

        text = status_text(
            counts, 4, 1, paused=True, problems=("job-0 is not running",)
        )

        assert (
            "queued 3, in flight 1, submitted 120, fetching 5, completed 80, failed 1, "
            "rejected 2, held 4; "
            "uploads paused; watchdog withheld: job-0 is not running"
        ) == text


@contextlib.contextmanager
def running(
    config: Path, log: Path, listener: Listener
) -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn(config, log, NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="1000000")
    try:
        wait_until(lambda: "READY=1" in listener.fields(), 20, "READY=1")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


class TestDaemon:
    def test_run_says_ready_status_pings_reloading_and_stopping(
        self, tmp_path, inbox, emulator, listener
    ):
        """`ocrwatch run` under a NOTIFY_SOCKET: READY=1 with a STATUS, WATCHDOG=1 every half
        interval, RELOADING=1 with MONOTONIC_USEC then READY=1 on SIGHUP, STOPPING=1 on SIGTERM."""
        config = write_config(
            tmp_path / "config.yaml", emulator.url, [{"path": str(inbox)}]
        )
        proc = spawn(
            config,
            tmp_path / "run.log",
            NOTIFY_SOCKET=listener.address,
            WATCHDOG_USEC="1000000",
        )
        wait_until(lambda: "READY=1" in listener.fields(), 20, "READY=1")
        wait_until(lambda: len(listener.pings()) >= 3, 10, "three pings")
        before_hup = time.monotonic_ns() // 1000
        seen = len(listener.datagrams())

        proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "READY=1" in [f for _, d in listener.datagrams()[seen:] for f in d],
            10,
            "READY=1 after the reload",
        )
        after_hup = time.monotonic_ns() // 1000
        code = stop(proc)

        firsts = [d[0] for _, d in listener.datagrams()]
        ready = next(d for _, d in listener.datagrams() if d[0] == "READY=1")
        reloading = next(d for _, d in listener.datagrams() if d[0] == "RELOADING=1")
        usec = int(reloading[1].removeprefix("MONOTONIC_USEC="))
        assert 0 == code
        assert ready[1].startswith("STATUS=queued 0, in flight 0, submitted 0")
        assert ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"] == [
            f for f in firsts if f != "WATCHDOG=1" and not f.startswith("STATUS=")
        ]
        assert before_hup <= usec <= after_hup
        assert "STATUS=reloading the config" == reloading[2]

    def test_a_reload_that_fails_still_ends_with_ready(
        self, tmp_path, inbox, emulator, listener
    ):
        """The old config is kept, and systemd hears that the reload is over all the same."""
        config = write_config(
            tmp_path / "config.yaml", emulator.url, [{"path": str(inbox)}]
        )
        with daemon_thread(config, env={"NOTIFY_SOCKET": listener.address}) as daemon:
            seen = len(listener.datagrams())
            config.write_text("folders: [")

            daemon.flags.reload = True
            wait_until(
                lambda: len(listener.datagrams()) >= seen + 2, 10, "reload answered"
            )

        reloading, ready = [d[0] for _, d in listener.datagrams()[seen : seen + 2]]
        assert ("RELOADING=1", "READY=1") == (reloading, ready)

    def test_a_backoff_longer_than_one_call_keeps_the_pings_going(
        self, tmp_path, inbox, emulator, listener
    ):
        """A 6 s Retry-After wait, twice a call's bound here (2.8 s), is work: no ping is missed."""
        config = write_config(
            tmp_path / "config.yaml",
            emulator.url,
            [{"path": str(inbox), "settle_seconds": 0.1}],
            api={
                "timeout": {"connect": 0.4, "read": 0.8},
                "retry": {"max_attempts": 3, "max_delay": 10},
            },
        )
        emulator.fail_next(503, retry_after="6")
        with (
            capture_logs() as logs,
            daemon_thread(config, env=watchdog_env(listener)),
        ):
            started = time.monotonic()
            write_png(inbox / "a.png", 1)
            wait_until(lambda: bool(sidecars(inbox)), 15, "a.png.guid")
            ended = time.monotonic()

        events = [e["event"] for e in logs]
        assert ended - started > 6
        assert "submission.retry_scheduled" in events
        assert "watchdog.withheld" not in events
        assert max_gap(listener.pings(), started, ended) < 1.5

    def test_a_worker_wedged_in_one_call_stops_the_pings_until_it_moves_on(
        self, tmp_path, inbox, listener
    ):
        """An answer whose header lines drip in, each within the read timeout, holds a worker in
        one call: past the stall bound the pings stop (READY=1 was sent), and they resume once
        the answer is in."""
        from .hostile_server import hostile_service, url_of

        timeout = {"connect": 0.25, "read": 2.0}  # read > the 1 s watchdog interval
        bound = call_bound_s(timeout["connect"], timeout["read"])  # 4.75 s
        with hostile_service("drip-headers", drip_s=0.8, drip_lines=11) as server:
            config = write_config(
                tmp_path / "config.yaml",
                url_of(server),
                [{"path": str(inbox), "settle_seconds": 0.1}],
                api={"concurrency": 1, "timeout": timeout},
                shutdown_timeout=1,
            )
            log = tmp_path / "run.log"
            with running(config, log, listener) as proc:
                wait_until(lambda: len(listener.pings()) >= 2, 10, "pings")
                write_png(inbox / "a.png", 1)
                wait_until(lambda: server.uploads == 1, 10, "the upload")
                sent = time.monotonic()

                wait_until(
                    lambda: time.monotonic() - max(listener.pings()) > 2.5,
                    sent + bound + 10 - time.monotonic(),
                    "five intervals without a ping",
                )
                silent_from = max(listener.pings())
                wait_until(lambda: bool(sidecars(inbox)), 20, "a.png.guid")
                wait_until(
                    lambda: max(listener.pings()) > silent_from, 5, "pings again"
                )
                code = stop(proc)

        text = log.read_text()
        assert 0 == code
        assert "READY=1" in listener.fields()
        assert (
            silent_from - sent > bound - 1.5
        )  # the first seconds of the call were fine
        assert 1 == text.count("watchdog.withheld")
        assert "job-0 made no progress" in text
        assert 1 == text.count("watchdog.resumed")

    def test_health_counts_an_observer_per_folder_that_exists(
        self, tmp_path, inbox, emulator
    ):
        """A folder that is not there yet expects no observer; once it appears, one runs."""
        late = tmp_path / "late"
        config = write_config(
            tmp_path / "config.yaml",
            emulator.url,
            [{"path": str(inbox)}, {"path": str(late)}],
        )
        with daemon_thread(config) as daemon:
            before = daemon.health()
            late.mkdir()
            wait_until(
                lambda: daemon.health().observers_alive == 2, 10, "two observers"
            )
            after = daemon.health()

        assert (1, 1, ()) == (before.observers, before.observers_alive, before.problems)
        assert (2, 2, ()) == (after.observers, after.observers_alive, after.problems)
        assert (4, 4, 0) == (after.workers, after.workers_alive, after.workers_stalled)
