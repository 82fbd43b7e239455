"""Shared pieces for the benchmarks: the emulator in its own process, images, configs, timing."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.images import png_bytes

OCRWATCH = [sys.executable, "-m", "ocrwatch"]
CLIENT_ID = "bench"
SECRET = "bench-secret-0123456789"
# url -> pid, so that a benchmark can read the server's CPU
EMULATOR_PIDS: dict[str, int] = {}


@contextmanager
def emulator(*extra: str) -> Iterator[str]:
    """The emulator in a separate process, so its work does not share our GIL."""
    proc = subprocess.Popen(
        [
            *OCRWATCH,
            "emulator",
            "--port",
            "0",
            "--client-id",
            CLIENT_ID,
            "--client-secret",
            SECRET,
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    EMULATOR_PIDS[url] = proc.pid
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def start_daemon(
    config: Path, log: Path, timeout_s: float = 120
) -> subprocess.Popen[bytes]:
    """`ocrwatch run` in its own process, returned once its first catch-up scan is done."""
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [*OCRWATCH, "run", "-c", str(config)],
            stdout=handle,
            stderr=handle,
            env=env(),
        )
    wait_for(lambda: b"rescan.finished" in log.read_bytes(), timeout_s, "daemon ready")
    return proc


def write_images(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"scan-{i:06d}.png"
        path.write_bytes(png_bytes(i))
        paths.append(path)
    return paths


def write_config(
    path: Path,
    url: str,
    folders: list[dict[str, object]],
    *,
    concurrency: int = 4,
    **extra: object,
) -> Path:
    data = {
        "api": {
            "base_url": url,
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "concurrency": concurrency,
        },
        "state_dir": str(path.parent / "state"),
        "folders": folders,
        **extra,
    }
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def token(url: str) -> str:
    response = requests.post(
        f"{url}/connect/token",
        timeout=10,
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
        },
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return f"p50 {percentile(values, 50):.1f} p90 {percentile(values, 90):.1f} p99 {percentile(values, 99):.1f} max {max(values):.1f} mean {statistics.mean(values):.1f}"


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OCRWATCH_")}
