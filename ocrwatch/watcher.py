"""Turn watchdog events (inotify, or polling for network shares) into "activity on this path".

The handler only hands paths to a callback and never raises: an exception there would kill
watchdog's dispatch thread. `WatcherSet` keeps one observer per watched folder running: it starts
them, notices one that died (or a folder that is not there yet) and starts it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
    FileSystemMovedEvent,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ocrwatch.config import FolderConfig

log = structlog.get_logger()

ACTIVITY_EVENTS: Final = frozenset({"created", "modified", "closed", "moved", "attrib"})
# Asking inotify for only these keeps our own reads (open, close-without-write) off the wire:
# every image we upload would otherwise come back as two events.
EVENT_FILTER: Final = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirMovedEvent,
]
Activity = Callable[[Path, bool], None]  # (path, is a folder that appeared)
SUPERVISE_EVERY_S: Final = 1.0


class _Handler(FileSystemEventHandler):
    def __init__(self, on_activity: Activity) -> None:
        self._on_activity = on_activity

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ACTIVITY_EVENTS:
            return
        if event.is_directory and event.event_type not in ("created", "moved"):
            return  # a folder "modified" is just its listing changing (our own sidecars, for one)
        raw = (
            event.dest_path
            if isinstance(event, FileSystemMovedEvent) and event.dest_path
            else event.src_path
        )
        try:
            path = Path(raw.decode() if isinstance(raw, bytes) else raw)
            self._on_activity(path, event.is_directory)
        except Exception:
            log.exception("watcher.handler_failed", path=str(raw))


class _OverflowSignal(logging.Handler):
    """watchdog reports a kernel inotify queue overflow only as a log record; turn it into a call."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._callbacks: list[Callable[[], None]] = []
        self._callbacks_lock = threading.Lock()

    def add(self, callback: Callable[[], None]) -> None:
        with self._callbacks_lock:
            self._callbacks.append(callback)

    def remove(self, callback: Callable[[], None]) -> None:
        with self._callbacks_lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def emit(self, record: logging.LogRecord) -> None:
        if "queue overflowed" in record.getMessage():
            with self._callbacks_lock:
                callbacks = list(self._callbacks)
            for callback in callbacks:
                callback()


_overflow = _OverflowSignal()
logging.getLogger("watchdog.observers.inotify_c").addHandler(_overflow)
logging.getLogger("watchdog.observers.inotify").addHandler(_overflow)


class FolderWatcher:
    """One observer for one watched folder."""

    def __init__(
        self,
        root: Path,
        on_activity: Activity,
        *,
        recursive: bool = True,
        polling: bool = False,
        poll_interval_s: float = 10.0,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self.root = root
        self.recursive = recursive
        self.polling = polling
        self.poll_interval_s = poll_interval_s
        self._on_activity = on_activity
        self._on_overflow = on_overflow
        self.observer: BaseObserver | None = None

    def start(self) -> None:
        """Start watching; raises OSError if the folder is missing or cannot be watched."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a folder")
        observer: BaseObserver = (
            PollingObserver(timeout=self.poll_interval_s)
            if self.polling
            else Observer()
        )
        observer.schedule(
            _Handler(self._on_activity),
            str(self.root),
            recursive=self.recursive,
            event_filter=EVENT_FILTER,
        )
        observer.daemon = True
        observer.start()
        self.observer = observer
        if self._on_overflow is not None and not self.polling:
            _overflow.add(self._on_overflow)

    def stop(self) -> None:
        observer, self.observer = self.observer, None
        if self._on_overflow is not None:
            _overflow.remove(self._on_overflow)
        if observer is None:
            return
        try:
            observer.stop()
            observer.join(timeout=5)
        except Exception:
            log.exception("watcher.stop_failed", path=str(self.root))

    def is_alive(self) -> bool:
        """False once the observer or any of its emitters has died or stopped (e.g. after an SMB outage)."""
        observer = self.observer
        if observer is None or not observer.is_alive():
            return False
        emitters = observer.emitters
        # InotifyObserver reads the kernel queue in a thread of its own; if that thread dies no
        # event arrives again while everything else looks alive. (Private, hence the getattr.)
        reader = getattr(observer, "_inotify_fd", None)
        reader_alive = (
            reader is None or not hasattr(reader, "is_alive") or reader.is_alive()
        )
        return bool(emitters) and all(e.is_alive() for e in emitters) and reader_alive


class WatcherSet:
    """One FolderWatcher per watched folder, kept running for months.

    `supervise()` (the daemon calls it once a second) restarts an observer that died and starts
    one for a folder that was missing (a late network mount); either way the folder is rescanned,
    since events were missed meanwhile.
    """

    def __init__(
        self,
        on_activity: Callable[[Path, Path, bool], None],
        on_rescan: Callable[[Path, str], None],
    ) -> None:
        self._on_activity = on_activity  # (root, path, is a folder that appeared)
        self._on_rescan = on_rescan  # (root, reason)
        self._watchers: dict[Path, tuple[FolderConfig, FolderWatcher]] = {}
        self.missing: set[Path] = set()

    @property
    def expected(self) -> int:
        """Observers that should be running: one per watched folder whose observer started
        and has not failed to start again since. A folder that is missing, or that exists
        but cannot be watched (the inotify watch limit, no permission), is not counted: a
        restart would not cure it, so it must not stop the watchdog's pings (it shows in
        `missing`, `/healthz` and the log instead). Copies: read from other threads."""
        return len(dict(self._watchers).keys() - set(self.missing))

    @property
    def alive(self) -> int:
        return sum(1 for _, w in list(dict(self._watchers).values()) if w.is_alive())

    def get(self, root: Path) -> FolderWatcher | None:
        entry = self._watchers.get(root)
        return None if entry is None else entry[1]

    def apply(self, folders: Mapping[Path, FolderConfig]) -> None:
        """Watch exactly `folders` (by absolute root): keep unchanged watchers, replace the rest."""
        for root, (folder, watcher) in list(self._watchers.items()):
            if folders.get(root) != folder:
                watcher.stop()
                del self._watchers[root]
                self.missing.discard(root)
        for root, folder in folders.items():
            if root not in self._watchers:
                watcher = self._make(root, folder)
                self._watchers[root] = (folder, watcher)
                self._start(watcher, first=True)

    def supervise(self) -> None:
        for _, watcher in list(self._watchers.values()):
            if watcher.is_alive():
                continue
            if watcher.observer is not None:
                log.error("watcher.died", path=str(watcher.root))
                watcher.stop()
            self._start(watcher, first=False)

    def stop(self) -> None:
        for _, watcher in self._watchers.values():
            watcher.stop()

    def _make(self, root: Path, folder: FolderConfig) -> FolderWatcher:
        return FolderWatcher(
            root,
            lambda path, is_dir: self._on_activity(root, path, is_dir),
            recursive=folder.recursive,
            polling=folder.polling,
            poll_interval_s=folder.poll_interval,
            on_overflow=lambda: self._on_rescan(root, "inotify queue overflow"),
        )

    def _start(self, watcher: FolderWatcher, *, first: bool) -> None:
        try:
            watcher.start()
        except OSError as exc:
            exists = watcher.root.is_dir()
            if watcher.root not in self.missing:
                self.missing.add(watcher.root)
                log.warning(
                    "watcher.start_failed" if exists else "watcher.folder_missing",
                    path=str(watcher.root),
                    error=str(exc),
                    retry_every_s=SUPERVISE_EVERY_S,
                )
            return
        if watcher.root in self.missing or not first:
            self.missing.discard(watcher.root)
            log.info("watcher.restarted", path=str(watcher.root))
            self._on_rescan(watcher.root, "watcher restarted")
