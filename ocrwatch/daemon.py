"""The composition root of `ocrwatch run`: watchers, settle tracking, the journal, workers, signals.

The main thread owns the settle tracker and reacts to signals through flags; watchers and the
scan thread only put items on a queue; workers only talk to the journal and the submitter.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from ocrwatch.catchup import scan_folder
from ocrwatch.client import OcrClient
from ocrwatch.config import (
    Config,
    Credentials,
    FolderConfig,
    load_config,
    resolve_credentials,
)
from ocrwatch.errors import ConfigError, JournalError, SidecarError
from ocrwatch.journal import Job, Journal, Settled
from ocrwatch.lifecycle import Flags, signal_flags, state_lock
from ocrwatch.log import register_secret
from ocrwatch.profiles import OVERRIDE_NAME, ProfileBook
from ocrwatch.selection import (
    Found,
    is_candidate,
    is_ignored_dir,
    regular_file_stat,
    walk_candidates,
)
from ocrwatch.settle import Look, SettleTracker, Verdict
from ocrwatch.sidecar import Kind, is_sidecar_name, write_sidecar
from ocrwatch.submitter import Outcome, Result, Submitter
from ocrwatch.uploader import LocalUploader, ProcessUploader, Uploader
from ocrwatch.watcher import FolderWatcher
from ocrwatch.workers import AUTH_RETRY_S, WorkerPool

log = structlog.get_logger()

TICK_S: Final = 0.2
SUPERVISE_EVERY_S: Final = 1.0


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


def is_readable(path: Path) -> bool:
    """The readiness check: can we open it read-only right now? Never opened for writing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    os.close(fd)
    return True


def _restore_sidecar(found: Found, guid: str) -> None:
    try:
        write_sidecar(found.path, Kind.GUID, guid)
    except SidecarError as exc:
        log.error("sidecar.restore_failed", path=found.key, guid=guid, error=str(exc))
        return
    log.info("sidecar.restored", path=found.key, guid=guid)


def _make_uploader(config: Config, client: OcrClient, staging: Path) -> Uploader:
    threads = LocalUploader(client, config.api.concurrency, staging=staging)
    if not config.api.upload_processes:
        return threads
    return ProcessUploader(
        config.api,
        client.tokens,
        config.api.concurrency,
        fallback=threads,
        staging=staging,
    )


class Daemon:
    def __init__(
        self,
        config_path: Path,
        env: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config_path = config_path
        self.env = env
        self.clock = clock
        self.flags = Flags()
        self.items: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.tracker = SettleTracker()
        self.watchers: dict[Path, FolderWatcher] = {}
        self.missing: set[Path] = set()
        self._rescans: set[Path] = set()
        self._override_edits: dict[
            Path, float
        ] = {}  # .ocrwatch.yaml -> release held at
        self._scan_thread: threading.Thread | None = None
        self._stop_scan = threading.Event()
        self.scans_done = 0  # folders scanned so far; tests wait on it
        self.ready = threading.Event()  # set once watchers and workers are up

    def load(self) -> tuple[Config, Credentials | None]:
        config = load_config(self.config_path)
        credentials = resolve_credentials(config, self.env, str(self.config_path))
        if credentials is not None:
            register_secret(credentials.client_secret.get_secret_value())
        return config, credentials

    def run(self, *, install_signals: bool = True) -> int:
        """Serve until SIGTERM/SIGINT (or `flags.stop`, for an embedding thread); 0 after a clean stop."""
        config, credentials = self.load()
        signals = (
            signal_flags(self.flags) if install_signals else contextlib.nullcontext()
        )
        with state_lock(config.state_dir), signals:
            self.journal = Journal(config.journal_path)
            try:
                return self._serve(config, credentials)
            finally:
                self.journal.close()

    def _apply(self, config: Config, credentials: Credentials | None) -> None:
        self.config = config
        self.folders = {f.path.absolute(): f for f in config.folders}
        self.roots = list(self.folders)
        client = OcrClient(config.api, credentials, auth_retry_s=AUTH_RETRY_S)
        staging = config.state_dir / "staging"
        staging.mkdir(exist_ok=True)
        uploader = _make_uploader(config, client, staging)
        previous = getattr(self, "submitter", None)
        self.book = ProfileBook(config)
        self.submitter = Submitter(
            client,
            self.book,
            self.journal,
            clock=self.clock,
            uploader=uploader,
        )
        if previous is not None:
            previous.uploader.close()

    def _serve(self, config: Config, credentials: Credentials | None) -> int:
        self._apply(config, credentials)
        resumed = self.journal.resume(self.clock())
        # Two threads more than upload slots: they claim and record while the slots upload.
        self.pool = WorkerPool(
            self.journal,
            config.api.concurrency + 2,
            lambda: self.submitter,
            self._profile_for,
            self._on_result,
            clock=self.clock,
        )
        for folder in config.folders:
            self._watch(folder)
        log.info(
            "daemon.started",
            folders=[str(r) for r in self.roots],
            mode="trial" if config.api.trial else "account",
            polling=[str(f.path) for f in config.folders if f.polling],
            resumed=resumed,
            concurrency=config.api.concurrency,
        )
        self.pool.start()
        self._request_rescan(self.roots, "startup")
        self.ready.set()
        self._loop()
        return self._shutdown()

    def _loop(self) -> None:
        next_supervise = next_rescan = 0.0
        while not self.flags.stop:
            now = time.monotonic()
            if self.flags.reload:
                self.flags.reload = False
                self._reload()
            if now >= next_supervise:
                self._supervise()
                next_supervise = now + SUPERVISE_EVERY_S
            if next_rescan == 0.0:
                next_rescan = now + self.config.rescan_interval
            elif now >= next_rescan:
                self._request_rescan(self.roots, "interval")
                next_rescan = now + self.config.rescan_interval
            self._start_scan_if_due()
            self._drain(timeout=self._tick_timeout())
            self._settle_due()

    def _tick_timeout(self) -> float:
        due = self.tracker.next_due_in(self.clock())
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
        handled = 0
        while True:
            self._handle(item)
            handled += 1
            if handled >= 5000:  # keep signals and settling responsive during a flood
                return
            try:
                item = self.items.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: Item) -> None:
        now = self.clock()
        if isinstance(item, Rescan):
            self._rescans.add(item.root)
            log.info("rescan.requested", path=str(item.root), reason=item.reason)
        elif isinstance(item, Found):
            root = self._root_of(item.path)
            if root is not None and item.path not in self.tracker:
                # A file found by a scan has been quiet since its mtime: one more look decides.
                quiet_since = min(now, item.mtime_ns / 1e9)
                self.tracker.touch(
                    item.path,
                    root,
                    self.folders[root].settle_seconds,
                    quiet_since,
                    Look(item.size, item.mtime_ns),
                )
        else:
            self._on_event(item, now)

    def _on_event(self, event: Event, now: float) -> None:
        folder = self.folders.get(event.root)
        if folder is None or is_sidecar_name(event.path.name):
            return  # most events under load are our own sidecars appearing
        if event.path.name == OVERRIDE_NAME:
            self.book.invalidate(event.path)
            # Release what it held once it has been quiet for a moment: the first event of an
            # edit in place is the truncation, and an empty file would release them unconfigured.
            self._override_edits[event.path] = now + folder.settle_seconds
            return
        try:
            rel = event.path.relative_to(event.root)
        except ValueError:
            return
        if event.is_dir:
            if (
                folder.recursive
                and rel.parts
                and not any(is_ignored_dir(p, folder.exclude) for p in rel.parts)
            ):
                self._scan_moved_in_dir(event.path, folder)
            return
        if not is_candidate(rel, folder.include, folder.exclude):
            return
        st = regular_file_stat(event.path, self.roots)
        look = None if st is None else Look(st.st_size, st.st_mtime_ns)
        self.tracker.touch(event.path, event.root, folder.settle_seconds, now, look)

    def _scan_moved_in_dir(self, directory: Path, folder: FolderConfig) -> None:
        """Files inside a folder moved in get no events of their own: look at them now."""
        root = folder.path.absolute()
        now = self.clock()
        for batch in walk_candidates(
            directory,
            recursive=True,
            include=folder.include,
            exclude=folder.exclude,
            roots=self.roots,
        ):
            for found in batch:
                if is_candidate(
                    found.path.relative_to(root), folder.include, folder.exclude
                ):
                    self.tracker.touch(
                        found.path,
                        root,
                        folder.settle_seconds,
                        now,
                        Look(found.size, found.mtime_ns),
                    )

    def _release_edited_overrides(self, now: float) -> None:
        due = [path for path, at in self._override_edits.items() if at <= now]
        for path in due:
            del self._override_edits[path]
            released = self.journal.release_held(path.parent, now)
            if released:
                log.info("profile.override_changed", path=str(path), released=released)
                self.pool.wake()

    def _settle_due(self) -> None:
        now = self.clock()
        if self._override_edits:
            self._release_edited_overrides(now)
        settled = []
        for path, root in self.tracker.due(now):
            st = regular_file_stat(path, self.roots)
            look = None if st is None else Look(st.st_size, st.st_mtime_ns)
            readable = look is not None and is_readable(path)
            verdict = self.tracker.confirm(path, look, now, readable=readable)
            if verdict is Verdict.SETTLED and look is not None:
                settled.append(Settled(path, root, look.size, look.mtime_ns))
        if not settled:
            return
        queued = self.journal.note_many(settled, now)
        if queued:
            self.pool.wake()
        for file in queued:
            log.info("job.queued", path=str(file.path), bytes=file.size)

    def _root_of(self, path: Path) -> Path | None:
        best = None
        for root in self.roots:
            if root in path.parents and (
                best is None or len(root.parts) > len(best.parts)
            ):
                best = root
        return best

    def _profile_for(self, job: Job) -> str | None:
        folder = self.folders.get(job.root)
        return None if folder is None else folder.profile

    def _on_result(self, result: Result) -> None:
        if result.outcome is Outcome.CHANGED:
            root = self._root_of(result.path)
            if root is not None:
                self.items.put(Event(root, result.path, False))

    def _watch(self, folder: FolderConfig) -> None:
        root = folder.path.absolute()
        watcher = FolderWatcher(
            root,
            lambda path, is_dir: self.items.put(Event(root, path, is_dir)),
            recursive=folder.recursive,
            polling=folder.polling,
            poll_interval_s=folder.poll_interval,
            on_overflow=lambda: self.items.put(Rescan(root, "inotify queue overflow")),
        )
        self.watchers[root] = watcher
        self._start_watcher(watcher, first=True)

    def _start_watcher(self, watcher: FolderWatcher, *, first: bool) -> bool:
        try:
            watcher.start()
        except OSError as exc:
            if watcher.root not in self.missing:
                self.missing.add(watcher.root)
                log.warning(
                    "watcher.folder_missing"
                    if not watcher.root.is_dir()
                    else "watcher.start_failed",
                    path=str(watcher.root),
                    error=str(exc),
                    retry_every_s=SUPERVISE_EVERY_S,
                )
            return False
        if watcher.root in self.missing or not first:
            self.missing.discard(watcher.root)
            log.info("watcher.restarted", path=str(watcher.root))
            self.items.put(Rescan(watcher.root, "watcher restarted"))
        return True

    def _supervise(self) -> None:
        for watcher in list(self.watchers.values()):
            if watcher.is_alive():
                continue
            if watcher.observer is not None:
                log.error("watcher.died", path=str(watcher.root))
                watcher.stop()
            self._start_watcher(watcher, first=False)

    def _request_rescan(self, roots: list[Path], reason: str) -> None:
        for root in roots:
            self.items.put(Rescan(root, reason))

    def _start_scan_if_due(self) -> None:
        if not self._rescans or (
            self._scan_thread is not None and self._scan_thread.is_alive()
        ):
            return
        roots, self._rescans = [r for r in self._rescans if r in self.folders], set()
        folders = [self.folders[r] for r in roots]
        self._scan_thread = threading.Thread(
            target=self._scan, args=(folders,), name="scan", daemon=True
        )
        self._scan_thread.start()

    def _scan(self, folders: list[FolderConfig]) -> None:
        for folder in folders:
            started = time.monotonic()
            try:
                self.journal.release_held(folder.path.absolute(), self.clock())
                report = scan_folder(
                    folder,
                    self.journal,
                    self.roots,
                    self.items.put,
                    self._stop_scan.is_set,
                    restore=_restore_sidecar,
                )
            except (OSError, JournalError) as exc:
                log.error("rescan.failed", path=str(folder.path), error=str(exc))
                continue
            except Exception:  # the next rescan tries again; the daemon keeps serving
                log.exception("rescan.crashed", path=str(folder.path))
                continue
            self.scans_done += 1
            log.info(
                "rescan.finished",
                path=str(report.root),
                seen=report.seen,
                found=report.found,
                duration_ms=round((time.monotonic() - started) * 1000),
            )

    def _reload(self) -> None:
        try:
            config, credentials = self.load()
            if config.state_dir != self.config.state_dir:
                raise ConfigError(
                    f"{self.config_path}: state_dir: changing it needs a restart, not a reload"
                )
        except ConfigError as exc:
            log.error(
                "config.reload_failed", error=str(exc), kept="the previous config"
            )
            return
        old = self.folders
        self._apply(config, credentials)
        for root, watcher in list(self.watchers.items()):
            if old.get(root) != self.folders.get(root):
                watcher.stop()
                del self.watchers[root]
                self.missing.discard(root)
        for folder in config.folders:
            if folder.path.absolute() not in self.watchers:
                self._watch(folder)
        self.pool.resume_auth()
        self._request_rescan(self.roots, "config reloaded")
        log.info("config.reloaded", folders=[str(r) for r in self.roots])

    def _shutdown(self) -> int:
        log.info(
            "daemon.stopping",
            in_flight=self.pool.busy,
            pending_settle=len(self.tracker),
        )
        self._stop_scan.set()
        for watcher in self.watchers.values():
            watcher.stop()
        finished = self.pool.stop(self.config.shutdown_timeout)
        self.submitter.uploader.close()
        if not finished:
            log.warning(
                "daemon.shutdown_timeout",
                timeout_s=self.config.shutdown_timeout,
                note="unfinished uploads are resent at the next start",
            )
        log.info("daemon.stopped", counts=self.journal.counts())
        return 0
