"""`on_complete`: a command from the main config run once a file's results are written.

No shell: the command's list gets the original, the GUID and the result files as arguments,
and the same in the environment. Hooks run in threads of their own, so that one that hangs
holds up no upload or poll; it is killed with its process group at its timeout. A hook that
fails is logged (`hook.failed`) and changes nothing: the results stay. A hook ends when its
process exits, not when its stderr closes (a daemon it leaves behind may hold that open), and
only the tail of its stderr is kept. Accepted risks: a hook still waiting to start when the
daemon stops is not run (the results are there all the same); a stripped environment is no
isolation, since a hook runs as the daemon's user and can read what the daemon can.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import structlog

log = structlog.get_logger()

HOOK_THREADS: Final = 2
KILL_GRACE_S: Final = 5.0  # after SIGKILL, for the kernel to end it
OUTPUT_MAX: Final = 400  # of a failed hook's stderr, in its log line
TAIL_MAX: Final = (
    64 * 1024
)  # of a hook's stderr kept while it runs; the rest is read and dropped
DRAIN_S: Final = (
    0.5  # after a hook exits, for what it wrote last; then its pipe is closed
)
STOP_GRACE_S: Final = 2.0  # after a stop kills the hooks, for their threads to end
# A hook sees only these of the daemon's environment (and its own OCRWATCH_* facts): not the
# client secret, a proxy's credentials, the daemon's line to systemd or whatever a unit adds.
PASSED_ENV: Final = frozenset({"PATH", "LANG", "TZ", "HOME", "USER", "LOGNAME"})
PASSED_ENV_PREFIXES: Final = ("LC_",)
HOOK_CWD: Final = "/"  # never the share: nothing there is the admin's


def passed_env(base: Mapping[str, str]) -> dict[str, str]:
    """The part of the daemon's environment a hook may see (an allowlist)."""
    return {
        k: v
        for k, v in base.items()
        if k in PASSED_ENV or k.startswith(PASSED_ENV_PREFIXES)
    }


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
        """The allowed part of the daemon's environment, and the file's facts."""
        return {
            **passed_env(base),
            "OCRWATCH_FILE": os.fspath(self.original),
            "OCRWATCH_GUID": self.guid,
            "OCRWATCH_RESULTS": "\n".join(map(os.fspath, self.results)),
            "OCRWATCH_PROFILE": self.profile,
        }


class Running:
    """The hooks' processes, and whether a stop has begun: checked under one lock with the
    start, so that no hook starts after a stop has looked for the ones to kill."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._stopping = False

    def spawn(self, call: HookCall) -> subprocess.Popen[bytes] | None:
        """Start the hook's process; None once a stop has begun. Raises OSError."""
        with self._lock:
            if self._stopping:
                return None
            proc = subprocess.Popen(  # noqa: S603 -- a list from the main config, no shell
                call.argv(),
                env=call.environment(os.environ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, killed whole at the timeout
                cwd=HOOK_CWD,
            )
            self._procs.add(proc)
            return proc

    def ended(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop(self) -> list[subprocess.Popen[bytes]]:
        """Start no more; the ones running now."""
        with self._lock:
            self._stopping = True
            return list(self._procs)


class StderrTail:
    """Reads a hook's stderr in a thread of its own and keeps only its last TAIL_MAX bytes,
    so that a hook writing without end costs no memory; it stops at EOF or when told."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe
        self._tail = bytearray()
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._read, name="hook-stderr", daemon=True
        )
        self._thread.start()

    def _read(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._pipe, selectors.EVENT_READ)
            while not self._done.is_set():
                if not sel.select(timeout=0.05):
                    continue
                chunk = os.read(self._pipe.fileno(), 65536)
                if not chunk:
                    return
                self._tail += chunk
                del self._tail[:-TAIL_MAX]

    def close(self, drain_s: float = DRAIN_S) -> str:
        """Give the reader `drain_s` for the rest (a grandchild may hold the pipe open for
        ever), close the pipe, and return the tail as text."""
        self._thread.join(drain_s)
        self._done.set()
        self._thread.join()
        self._pipe.close()
        return self._tail.decode("utf-8", "replace")


def run_hook(call: HookCall, running: Running | None = None) -> bool:
    """Run one hook to its exit or its timeout; True if it exited 0. `running` holds it
    while it runs, so that a stop can end it."""
    running = Running() if running is None else running
    started = time.monotonic()
    where = {"path": str(call.original), "guid": call.guid, "command": call.command[0]}
    try:
        proc = running.spawn(call)
    except OSError as exc:
        log.error("hook.failed", **where, error=f"cannot run it: {exc.strerror}")
        return False
    if proc is None:
        log.warning("hook.skipped", path=str(call.original), reason="stopping")
        return False
    assert proc.stderr is not None  # stderr=PIPE above
    tail = StderrTail(proc.stderr)
    try:
        proc.wait(timeout=call.timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        killed = kill_group(proc)
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            # Not ours to kill (a hook run through sudo) or stuck in the kernel (a hung
            # share): given up, so that it holds neither this thread nor the daemon's exit.
            log.error(
                "hook.unkillable",
                **where,
                pid=proc.pid,
                kill="refused" if not killed else "sent",
                fix="bound the hook itself, e.g. with timeout(1) inside a sudo'd command",
            )
    finally:
        running.ended(proc)
        err = tail.close()
    took_ms = round((time.monotonic() - started) * 1000, 1)
    if timed_out:
        log.error(
            "hook.failed",
            **where,
            error=f"killed after {call.timeout_s:g} s (on_complete_timeout)",
        )
        return False
    if proc.returncode < 0:
        log.error("hook.failed", **where, error=f"killed by signal {-proc.returncode}")
        return False
    if proc.returncode != 0:
        log.error(
            "hook.failed",
            **where,
            error=f"exit status {proc.returncode}",
            stderr=err.strip()[-OUTPUT_MAX:],
            duration_ms=took_ms,
        )
        return False
    log.info("hook.completed", **where, duration_ms=took_ms)
    return True


def kill_group(proc: subprocess.Popen[bytes]) -> bool:
    """The hook and whatever it started (it leads its own process group); False if the
    kernel refused (another user's process: a hook run through sudo)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return True


class HookRunner:
    """Runs hooks beside the job loop; `wait()` lets a one-shot command see them through."""

    def __init__(self, threads: int = HOOK_THREADS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="hook")
        self._lock = threading.Lock()
        self._pending: set[Future[bool]] = set()
        self._running = Running()
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
        """Start no more (those queued are dropped); give those running `timeout_s`, then
        kill them (logged as killed) and give their threads a bounded moment to end."""
        with self._lock:
            self._stopped = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.wait(timeout_s)
        for proc in self._running.stop():
            kill_group(proc)
        self.wait(STOP_GRACE_S)


def hook_call(
    command: Sequence[str],
    original: Path,
    guid: str,
    results: Sequence[Path],
    timeout_s: float,
    profile: str,
) -> HookCall:
    return HookCall(tuple(command), original, guid, tuple(results), timeout_s, profile)
