"""`on_complete`: a command from the main config run once a file's results are written.

No shell: the command's list gets the original, the GUID and the result files as arguments,
and the same in the environment. Hooks run in threads of their own, so that one that hangs
holds up no upload or poll; it is killed with its process group at its timeout. A hook that
fails is logged (`hook.failed`) and changes nothing: the results stay. Accepted risk: a hook
still waiting to start when the daemon stops is not run (the results are there all the same).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger()

HOOK_THREADS: Final = 2
OUTPUT_MAX: Final = 400  # of a failed hook's stderr, in its log line
# Never handed to a hook: the client secret, where systemd keeps it, and the daemon's line
# to systemd (a hook could otherwise say READY or WATCHDOG for the daemon).
SECRET_ENV: Final = frozenset(
    {
        "OCRWATCH_CLIENT_SECRET",
        "CREDENTIALS_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    }
)


@dataclass(frozen=True, slots=True)
class HookCall:
    command: tuple[str, ...]
    original: Path
    guid: str
    results: tuple[Path, ...]
    timeout_s: float
    profile: str

    def argv(self) -> list[str]:
        """command, then ORIGINAL GUID RESULT...: the variable part last."""
        return [
            *self.command,
            os.fspath(self.original),
            self.guid,
            *map(os.fspath, self.results),
        ]

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """The daemon's environment without its secrets, and the file's facts."""
        return {
            **{k: v for k, v in base.items() if k not in SECRET_ENV},
            "OCRWATCH_FILE": os.fspath(self.original),
            "OCRWATCH_GUID": self.guid,
            "OCRWATCH_RESULTS": "\n".join(map(os.fspath, self.results)),
            "OCRWATCH_PROFILE": self.profile,
        }


def run_hook(
    call: HookCall, running: set[subprocess.Popen[bytes]] | None = None
) -> bool:
    """Run one hook to its end or its timeout; True if it exited 0. `running` holds it
    while it runs, so that a stop can end it."""
    running = set() if running is None else running
    started = time.monotonic()
    where = {"path": str(call.original), "guid": call.guid, "command": call.command[0]}
    try:
        proc = subprocess.Popen(  # noqa: S603 -- a list from the main config, no shell
            call.argv(),
            env=call.environment(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed whole at the timeout
            cwd=call.original.parent,
        )
    except OSError as exc:
        log.error("hook.failed", **where, error=f"cannot run it: {exc.strerror}")
        return False
    running.add(proc)
    try:
        _, err = proc.communicate(timeout=call.timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.communicate()
        log.error(
            "hook.failed",
            **where,
            error=f"killed after {call.timeout_s:g} s (on_complete_timeout)",
        )
        return False
    finally:
        running.discard(proc)
    took_ms = round((time.monotonic() - started) * 1000, 1)
    if proc.returncode < 0:
        log.error("hook.failed", **where, error=f"killed by signal {-proc.returncode}")
        return False
    if proc.returncode != 0:
        text = err.decode("utf-8", "replace").strip()[-OUTPUT_MAX:]
        log.error(
            "hook.failed",
            **where,
            error=f"exit status {proc.returncode}",
            stderr=text,
            duration_ms=took_ms,
        )
        return False
    log.info("hook.completed", **where, duration_ms=took_ms)
    return True


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """The hook and whatever it started (it leads its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class HookRunner:
    """Runs hooks beside the job loop; `wait()` lets a one-shot command see them through."""

    def __init__(self, threads: int = HOOK_THREADS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="hook")
        self._lock = threading.Lock()
        self._pending: set[Future[bool]] = set()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._stopped = False

    def start(self, call: HookCall) -> None:
        with self._lock:
            if self._stopped:
                log.warning("hook.skipped", path=str(call.original), reason="stopping")
                return
            future = self._pool.submit(run_hook, call, self._running)
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[bool]) -> None:
        with self._lock:
            self._pending.discard(future)

    def wait(self, timeout_s: float | None = None) -> None:
        """Until every hook started so far has ended (`fetch`, `submit`, tests)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            with contextlib.suppress(Exception):
                pending[0].result(timeout=left)

    def stop(self, timeout_s: float) -> None:
        """Start no more; give those running `timeout_s`, then end them (logged as killed)."""
        with self._lock:
            self._stopped = True
        self.wait(timeout_s)
        for proc in list(self._running):
            kill_group(proc)
        self._pool.shutdown(wait=True, cancel_futures=True)


def hook_call(
    command: Sequence[str],
    original: Path,
    guid: str,
    results: Sequence[Path],
    timeout_s: float,
    profile: str,
) -> HookCall:
    return HookCall(tuple(command), original, guid, tuple(results), timeout_s, profile)
