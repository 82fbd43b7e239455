"""The composition root of `ocrwatch run`: it builds the parts from the config and runs the main loop.

The parts: watchers (events), the catch-up scan, the intake (settle, then queue in the journal)
and the job loop (uploads). The main thread owns the intake and reacts to signals through flags;
watchers and the scan only put items on a queue; the job loop's threads only talk to the journal.
A reload builds a new runtime and hands it over; nothing is closed under a running job.
Under systemd (`Type=notify`), the main loop also says when it is ready and pings the watchdog
while every observer and worker is alive and progressing (service.py).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from ocrwatch.catchup import CatchUp
from ocrwatch.config import Config, Credentials, load_settings
from ocrwatch.errors import ConfigError, JournalError, ListenError
from ocrwatch.intake import Intake
from ocrwatch.jobloop import JobLoop
from ocrwatch.journal import Journal
from ocrwatch.lifecycle import Flags, signal_flags, state_lock
from ocrwatch.metrics import Endpoint, Gauges, Metrics, make_app
from ocrwatch.notify import Notifier
from ocrwatch.outcome import restore_guid
from ocrwatch.progress import find_problems, stalled
from ocrwatch.runtime import Runtime
from ocrwatch.selection import Found
from ocrwatch.service import ServiceNotices, status_text
from ocrwatch.upkeep import Pruner
from ocrwatch.watcher import SUPERVISE_EVERY_S, WatcherSet

log = structlog.get_logger()

TICK_S: Final = 0.2
# How often rows left `submitting` by a process that is gone (a killed `submit`) are queued again.
RESUME_EVERY_S: Final = 60.0
# Items per tick, so that signals and settling stay responsive in a flood.
DRAIN_MAX: Final = 5000
# A catch-up scan that has not moved on for this long is reported by /healthz (not by the
# watchdog: a restart does not cure a share that hangs).
SCAN_STALL_S: Final = 300.0


@dataclass(frozen=True, slots=True)
class Event:
    root: Path
    path: Path
    is_dir: bool


@dataclass(frozen=True, slots=True)
class Rescan:
    root: Path
    reason: str


Item = Event | Found | Rescan


@dataclass(frozen=True, slots=True)
class Health:
    """What the daemon is doing, for the systemd watchdog, health checks and tests.

    `problems` is what the watchdog acts on: while it is not empty, no `WATCHDOG=1` is sent.
    Refused credentials (`paused`) and missing folders are not among them, since a restart
    would not cure them.
    """

    started: bool
    scans_finished: int  # folders scanned to the end since the start
    missing: frozenset[Path]  # watched folders that are not there (yet)
    workers: int  # upload threads the pool has
    in_flight: int
    paused: bool  # waiting out refused credentials or senseless answers
    settling: int
    folders: int = 0  # watched folders in the config
    observers: int = 0  # observers that should run: one per watched folder that exists
    observers_alive: int = 0
    workers_alive: int = 0
    workers_wanted: int = 0  # api.concurrency, once started
    workers_stalled: int = 0  # alive, but quiet for longer than their work allows
    credentials_refused: bool = False  # paused because the service refused them
    scan_stalled_s: float = 0.0  # how long the running catch-up scan has not moved on
    problems: tuple[str, ...] = ()  # what a restart would cure; empty while healthy

    @property
    def healthy(self) -> bool:
        """For the watchdog: every observer runs and every worker is alive and progressing."""
        return not self.problems


def health_problems(health: Health) -> list[str]:
    """Why the daemon is not doing its job, for `/healthz`; empty while it is.

    Wider than the watchdog's `problems`: a missing folder and refused credentials are not
    cured by a restart, but a scan there is not being sent, and a monitor should say so.
    """
    if not health.started:
        return ["starting"]
    problems = []
    if health.observers_alive < health.folders:
        missing = ", ".join(sorted(str(p) for p in health.missing))
        problems.append(
            f"watchers: {health.folders - health.observers_alive} of {health.folders} "
            f"folders not watched{f' (missing: {missing})' if missing else ''}"
        )
    if health.workers_alive < health.workers_wanted:
        problems.append(
            f"workers: {health.workers_alive} of {health.workers_wanted} upload threads alive"
        )
    if health.workers_stalled:
        problems.append(
            f"workers: {health.workers_stalled} upload threads stalled in one call"
        )
    if health.scan_stalled_s > SCAN_STALL_S:
        problems.append(
            f"scan: the catch-up scan has not moved on for {health.scan_stalled_s:.0f} s "
            "(a share that hangs?); files that arrive unseen wait until it does"
        )
    if health.credentials_refused:
        problems.append(
            "credentials: the service refused them and uploads are paused; "
            "fix api.client_id or the secret, then reload"
        )
    return problems


class Daemon:
    def __init__(
        self,
        config_path: Path,
        env: Mapping[str, str],
        config: Config,
        credentials: Credentials | None,
        journal: Journal,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config_path = config_path
        self.env = env
        self.journal = journal
        self.clock = clock
        self.flags = Flags()
        self.items: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.metrics = Metrics()
        runtime = Runtime.build(config, credentials, self.metrics)
        self.loop = JobLoop(journal, runtime, clock=clock, metrics=self.metrics)
        self.intake = Intake(
            journal,
            runtime.folders,
            on_queued=self.loop.wake,
            on_override_edit=lambda path: self.loop.runtime.book.invalidate(path),
            metrics=self.metrics,
        )
        self.watchers = WatcherSet(
            on_activity=lambda root, path, is_dir: self.items.put(
                Event(root, path, is_dir)
            ),
            on_rescan=lambda root, reason: self.items.put(Rescan(root, reason)),
        )
        self.catchup = CatchUp(
            journal,
            emit=self.items.put,
            restore=lambda found, guid: restore_guid(Path(found.path), guid),
            clock=clock,
        )
        self.metrics.watch(self._gauges)
        self.endpoint = Endpoint(
            make_app(self.metrics, lambda: health_problems(self.health()))
        )
        self.notices = ServiceNotices(Notifier.from_env(env))
        self.pruner = Pruner(
            journal,
            lambda: self.config.keep_days,
            roots=lambda: list(self.loop.runtime.folders),
        )
        # The prune's lstats run in a thread of their own: a hung share must not hold up
        # the main loop (and so the watchdog's pings).
        self._pruning = threading.Event()
        self._prune_thread = threading.Thread(
            target=self.pruner.serve,
            args=(self._pruning, self.clock),
            name="journal-prune",
            daemon=True,
        )
        self._started = False
        self._rebuilds_seen = journal.rebuilds
        self._journal_trouble: str | None = None

    @classmethod
    @contextlib.contextmanager
    def open(
        cls,
        config_path: Path,
        env: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> Iterator[Daemon]:
        """Load the config, take the state_dir's lock and open its journal, for one `run()`."""
        config, credentials = load_settings(config_path, env)
        with state_lock(config.state_dir):
            journal = Journal(config.journal_path, heal=True)
            try:
                yield cls(config_path, env, config, credentials, journal, clock=clock)
            finally:
                journal.close()

    @property
    def config(self) -> Config:
        return self.loop.runtime.config

    def health(self, now: float | None = None) -> Health:
        """Safe to call from any thread (the metrics listener calls it). `now`:
        time.monotonic(), the clock of the workers' heartbeats."""
        now = time.monotonic() if now is None else now
        workers = self.loop.worker_states()
        observers, alive = self.watchers.expected, self.watchers.alive
        return Health(
            started=self._started,
            scans_finished=self.catchup.scans_finished,
            missing=frozenset(self.watchers.missing),
            workers=len(workers),
            in_flight=self.loop.in_flight,
            paused=self.loop.paused,
            settling=len(self.intake),
            folders=len(self.loop.runtime.folders),
            observers=observers,
            observers_alive=alive,
            workers_alive=sum(w.alive for w in workers),
            workers_wanted=self.loop.concurrency,
            workers_stalled=len(
                stalled((w.heartbeat for w in workers if w.alive and w.heartbeat), now)
            ),
            credentials_refused=self.loop.credentials_refused,
            scan_stalled_s=self.catchup.stalled_for(now),
            problems=find_problems(observers, alive, workers, now),
        )

    def _gauges(self) -> Gauges:
        """The scrape-time gauges: the journal is read here, not in the upload path."""
        health = self.health()
        depth: int | None = None
        age: float | None = None
        held: int | None = None
        fetching: int | None = None
        try:
            counts = self.journal.counts()
            held = self.journal.held_count()
            since = self.journal.oldest_queued_at()
        except JournalError:
            pass  # left out of this scrape; the main loop reports the journal's trouble
        else:
            depth = counts["queued"] + counts["failed"] + counts["submitting"]
            fetching = counts["fetching"]
            age = 0.0 if since is None else max(0.0, self.clock() - since)
        return Gauges(
            queue_depth=depth,
            oldest_queued_age_s=age,
            held=held,
            observers=health.folders,
            observers_alive=health.observers_alive,
            workers_alive=health.workers_alive,
            in_flight=health.in_flight,
            paused=health.paused,
            fetching=fetching,
        )

    def _status(self) -> str:
        """The STATUS= line: queue and counts from the journal (two queries), and trouble."""
        health = self.health()
        try:
            counts: dict[str, int] | None = self.journal.counts()
            held, error = self.journal.held_count(), None
        except JournalError as exc:
            counts, held, error = None, 0, str(exc)
        return status_text(
            counts,
            held,
            health.in_flight,
            paused=health.paused,
            problems=health.problems,
            journal_error=error,
        )

    def run(self, *, install_signals: bool = True) -> int:
        """Serve until SIGTERM/SIGINT (or `flags.stop`, for an embedding thread); 0 after a clean stop."""
        signals = (
            signal_flags(self.flags) if install_signals else contextlib.nullcontext()
        )
        with signals:
            try:
                self._start()
                self._loop()
                return self._shutdown()
            finally:
                self.endpoint.stop()

    def _start(self) -> None:
        try:
            self.endpoint.start(_listen_at(self.config))
        except ListenError as exc:  # exit 1 before anything began
            raise ListenError(f"{self.config_path}: {exc}") from None
        resumed = self._try_resume()  # a full state_dir: the daemon starts and waits
        folders = self.loop.runtime.folders
        self.watchers.apply(folders)
        self.loop.start()
        self._prune_thread.start()
        for root in folders:
            self.catchup.request(root, "startup")
        self._started = True
        log.info(
            "daemon.started",
            folders=[str(r) for r in folders],
            mode="trial" if self.config.api.trial else "account",
            polling=[str(f.path) for f in self.config.folders if f.polling],
            resumed=resumed,
            concurrency=self.config.api.concurrency,
            metrics=self.endpoint.address,
        )
        # Observers run and every folder's catch-up scan is queued.
        self.notices.ready(time.monotonic(), self._status)

    def _loop(self) -> None:
        next_supervise = next_rescan = next_resume = time.monotonic()
        next_rescan += self.config.rescan_interval
        next_resume += RESUME_EVERY_S
        while not self.flags.stop:
            now = time.monotonic()
            if self.flags.reload:
                self.flags.reload = False
                self._reload()
            # Before a ping too: an observer that died a moment ago is restarted, not reported.
            if now >= next_supervise or self.notices.ping_due(now):
                self.watchers.supervise()
                self._check_journal()
                next_supervise = now + SUPERVISE_EVERY_S
            self.notices.tick(now, lambda: self.health().problems, self._status)
            if now >= next_resume:
                self._resume_orphans()
                next_resume = now + RESUME_EVERY_S
            if now >= next_rescan:
                for root in self.loop.runtime.folders:
                    self.catchup.request(root, "interval")
                next_rescan = now + self.config.rescan_interval
            folders = self.loop.runtime.folders
            self.catchup.start_if_due(folders, list(folders))
            self._drain(timeout=self._tick_timeout())
            self.intake.settle_due(self.clock())

    def _check_journal(self) -> None:
        """A journal deleted under us is written again; after any rebuild (damage found, or
        deleted) every folder is scanned, and its sidecars say what is done."""
        try:
            self.journal.check_file()
        except JournalError as exc:
            if str(exc) != self._journal_trouble:  # said once, not every second
                self._journal_trouble = str(exc)
                log.error("journal.unusable", error=str(exc))
        else:
            self._journal_trouble = None
        if self.journal.rebuilds != self._rebuilds_seen:
            self._rebuilds_seen = self.journal.rebuilds
            for root in self.loop.runtime.folders:
                self.catchup.request(root, "journal rebuilt")

    def _try_resume(self) -> int:
        try:
            return self.loop.resume_orphans()
        except JournalError as exc:
            log.error("journal.resume_failed", error=str(exc))
            return 0

    def _resume_orphans(self) -> None:
        if resumed := self._try_resume():
            log.info("journal.resumed", files=resumed)
            self.loop.wake()

    def _tick_timeout(self) -> float:
        due = self.intake.next_due_in(self.clock())
        return TICK_S if due is None else max(0.0, min(TICK_S, due))

    def _drain(self, timeout: float) -> None:
        try:
            item = (
                self.items.get(timeout=timeout)
                if timeout > 0
                else self.items.get_nowait()
            )
        except queue.Empty:
            return
        for _ in range(DRAIN_MAX):
            self._handle(item)
            try:
                item = self.items.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: Item) -> None:
        now = self.clock()
        if isinstance(item, Rescan):
            self.catchup.request(item.root, item.reason)
        elif isinstance(item, Found):
            self.intake.add_found(item, now)
        else:
            self.intake.add_event(item.root, item.path, item.is_dir, now)

    def _reload(self) -> None:
        self.notices.reloading()
        try:
            self._apply_new_config()
        finally:  # the old config kept is a reload done too
            self.notices.ready(time.monotonic(), self._status)

    def _apply_new_config(self) -> None:
        try:
            config, credentials = load_settings(self.config_path, self.env)
            if config.state_dir != self.config.state_dir:
                raise ConfigError(
                    f"{self.config_path}: state_dir: changing it needs a restart, not a reload"
                )
            runtime = Runtime.build(config, credentials, self.metrics)
        except ConfigError as exc:
            log.error(
                "config.reload_failed", error=str(exc), kept="the previous config"
            )
            return
        except (
            Exception
        ) as exc:  # any failure here must keep the daemon on its old config
            log.exception(
                "config.reload_failed",
                error=f"{type(exc).__name__}: {exc}",
                kept="the previous config",
            )
            return
        self.loop.swap(runtime)
        self._move_endpoint(config)
        self.intake.update(runtime.folders)
        self.watchers.apply(runtime.folders)
        for root in runtime.folders:
            self.catchup.request(root, "config reloaded")
        log.info(
            "config.reloaded",
            folders=[str(r) for r in runtime.folders],
            concurrency=config.api.concurrency,
        )

    def _move_endpoint(self, config: Config) -> None:
        before = self.endpoint.address
        try:
            self.endpoint.move(_listen_at(config))
        except ListenError as exc:
            log.error("metrics.move_failed", error=str(exc), kept=self.endpoint.address)
            return
        if self.endpoint.address != before:
            log.info("metrics.moved", address=self.endpoint.address)

    def _shutdown(self) -> int:
        self.notices.stopping(f"stopping; in flight {self.loop.in_flight}")
        log.info(
            "daemon.stopping",
            in_flight=self.loop.in_flight,
            pending_settle=len(self.intake),
        )
        self._pruning.set()
        self.catchup.stop()
        self.watchers.stop()
        finished = self.loop.stop(self.config.shutdown_timeout)
        if not finished:
            log.warning(
                "daemon.shutdown_timeout",
                timeout_s=self.config.shutdown_timeout,
                note="unfinished uploads are resent at the next start",
            )
        try:
            counts: dict[str, int] | str = self.journal.counts()
        except JournalError as exc:
            counts = str(exc)
        log.info("daemon.stopped", counts=counts)
        self.notices.close()
        return 0


def _listen_at(config: Config) -> tuple[str, int] | None:
    return (
        None if config.metrics is None else (config.metrics.host, config.metrics.port)
    )
