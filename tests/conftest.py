"""Shared fixtures: the emulator over loopback, config files on tmp_path, and wait_until."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from ocrwatch.emulator import Emulator

SECRET = "s3cr3t-Sentinel-7f1c2a"
CLIENT_ID = "test-client"
OCRWATCH = [sys.executable, "-m", "ocrwatch"]


def wait_until(
    condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll condition until it holds; fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s}s")
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _no_leftover_daemons() -> Iterator[None]:
    """A failed assertion must not leave an `ocrwatch run` behind."""
    from .daemon_harness import SPAWNED

    yield
    while SPAWNED:
        proc = SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(client_id=CLIENT_ID, client_secret=SECRET, seed=1) as emu:
        yield emu


def fetch_token(url: str, secret: str = SECRET) -> str:
    """A bearer token from the emulator, the way the docs' curl example asks for one."""
    import requests

    response = requests.post(
        f"{url}/connect/token",
        timeout=5,
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": secret,
        },
    )
    assert 200 == response.status_code
    return str(response.json()["access_token"])


def write_config(
    path: Path, base_url: str, folders: list[dict[str, Any]], **extra: Any
) -> Path:
    data: dict[str, Any] = {
        "api": {
            "base_url": base_url,
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "retry": {"max_attempts": 6, "max_delay": 0.2},
        },
        "state_dir": str(path.parent / "state"),
        "folders": folders,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def config_file(tmp_path: Path, inbox: Path, emulator: Emulator) -> Path:
    return write_config(tmp_path / "config.yaml", emulator.url, [{"path": str(inbox)}])


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCRWATCH_")}
    env.update(extra)
    return env


def run_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """`ocrwatch ARGS` with stdout and stderr on a pseudo-terminal, as a user at a shell
    sees it (progress bars are drawn only there): (exit code, everything it wrote)."""
    import pty
    import subprocess

    master, slave = pty.openpty()
    proc = subprocess.Popen([*OCRWATCH, *args], stdout=slave, stderr=slave, env=env)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    return proc.wait(30), output.decode(errors="replace")
