"""Run the daemon in a thread (no signal handlers) or as a subprocess, and watch what it does."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ocrwatch.daemon import Daemon
from ocrwatch.journal import Entry, Journal

from .conftest import OCRWATCH, cli_env, wait_until


@contextlib.contextmanager
def daemon_thread(
    config: Path, folders: int = 1, env: dict[str, str] | None = None
) -> Iterator[Daemon]:
    """A running daemon whose first catch-up scan is done; stopped (and checked for exit 0) after."""
    with Daemon.open(config, env or {}) as daemon:
        result: list[int | BaseException] = []

        def target() -> None:
            try:
                result.append(daemon.run(install_signals=False))
            except BaseException as exc:  # noqa: BLE001 -- surfaced to the test below
                result.append(exc)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        wait_until(
            lambda: (
                (daemon.health().started and daemon.health().scans_finished >= folders)
                or bool(result)
            ),
            10,
            "daemon started",
        )
        if result:
            raise AssertionError(f"daemon ended at start: {result[0]!r}")
        try:
            yield daemon
        finally:
            daemon.flags.stop = True
            thread.join(30)
            assert [0] == result, f"daemon did not stop cleanly: {result}"


# Killed by conftest after each test, pass or fail.
SPAWNED: list[subprocess.Popen[bytes]] = []


def spawn(
    config: Path, log: Path, *, wait_started: bool = False, **env: str
) -> subprocess.Popen[bytes]:
    """`ocrwatch run` as a subprocess logging to `log`; optionally wait for daemon.started."""
    before = log.read_bytes().count(b"daemon.started") if log.exists() else 0
    with log.open("ab") as handle:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [*OCRWATCH, "run", "-c", str(config)],
            stdout=handle,
            stderr=handle,
            env=cli_env(**env),
        )
    SPAWNED.append(proc)
    if wait_started:
        wait_until(
            lambda: log.read_bytes().count(b"daemon.started") > before,
            15,
            "daemon started",
        )
    return proc


def stop(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30
) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout)


def sidecars(folder: Path, kind: str = ".guid") -> list[Path]:
    return [p for p in folder.rglob(f"*{kind}") if not p.name.startswith(".")]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def journal_counts(state_dir: Path) -> dict[str, int]:
    journal = Journal(state_dir / "journal.sqlite3")
    try:
        return journal.counts()
    finally:
        journal.close()


def in_flight(state_dir: Path) -> int:
    return journal_counts(state_dir)["submitting"]


def journal_entry(state_dir: Path, path: Path) -> Entry | None:
    journal = Journal(state_dir / "journal.sqlite3", readonly=True)
    try:
        return journal.lookup([path]).get(str(path))
    finally:
        journal.close()


def status_json(config: Path) -> dict[str, Any]:
    """`ocrwatch status --json`, which must exit 0 whatever the journal's state."""
    result = subprocess.run(
        [*OCRWATCH, "status", "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        env=cli_env(),
        check=False,
        timeout=30,
    )
    assert 0 == result.returncode, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report
