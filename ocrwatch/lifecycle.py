"""Process lifecycle for `ocrwatch run`: signal flags, and the lock that keeps one daemon per state_dir.

The signal handlers only set flags (huey, uvicorn): no locks, no logging, no Event.set(), since the
interrupted main thread may hold any of those. The main loop polls the flags.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Final, TextIO

from ocrwatch.errors import JournalError

LOCK_GRACE_S: Final = 0.3


class Flags:
    """Set by signal handlers; read by the main loop. Handlers do nothing else (no locks, no logging)."""

    stop = False
    reload = False


@contextlib.contextmanager
def signal_flags(flags: Flags) -> Iterator[None]:
    def on_stop(signum: int, frame: FrameType | None) -> None:
        flags.stop = True

    def on_hup(signum: int, frame: FrameType | None) -> None:
        flags.reload = True

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_stop),
        signal.SIGINT: signal.signal(signal.SIGINT, on_stop),
        signal.SIGHUP: signal.signal(signal.SIGHUP, on_hup),
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """One daemon per state_dir: two would claim the same journal rows.

    Once the lock is taken, the file holds the daemon's pid, for `status`; a file left by a
    daemon that is gone may still hold its pid, which is why the lock, not the pid, says
    whether one runs.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        handle: TextIO = (state_dir / "ocrwatch.lock").open("a")
    except (FileExistsError, NotADirectoryError):
        raise JournalError(
            f"{state_dir}: state_dir is a file, not a folder (or lies under one); "
            "remove the file or set state_dir to a folder"
        ) from None
    except OSError as exc:
        raise JournalError(
            f"{state_dir}: cannot use state_dir ({exc.strerror}); create it and let the service user write to it"
        ) from None
    try:
        if not _lock(handle):
            raise JournalError(
                f"{state_dir}: another `ocrwatch run` is using this state_dir; stop it or set another state_dir"
            )
        # The pid is for people (`status`); the lock is what counts.
        with contextlib.suppress(OSError):
            os.ftruncate(handle.fileno(), 0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        yield
    finally:
        handle.close()


def _lock(handle: TextIO) -> bool:
    """Take the lock, allowing a moment for a `status` that looks at it right then (it
    holds it shared for microseconds); False if a daemon holds it."""
    deadline = time.monotonic() + LOCK_GRACE_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def is_running(state_dir: Path) -> int | None:
    """The pid of the `ocrwatch run` that holds this state_dir's lock right now, else None.

    0 if one holds it but its pid cannot be read (a daemon of an older version).
    """
    try:
        handle = (state_dir / "ocrwatch.lock").open("r")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            try:
                return int(handle.read(32).strip() or 0)
            except (OSError, ValueError):
                return 0
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
