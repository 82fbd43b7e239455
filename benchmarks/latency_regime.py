"""`run` and `submit` where users live: a service that takes 300 ms per call.

For concurrency 4, 8 and 16, each mode's rate -- from the first upload's arrival at the emulator
to the last `.guid` -- against the ideal, concurrency / latency. The emulator only sleeps, so it is
not the bottleneck. At concurrency 4 it also samples the RSS of the whole daemon (the process and
any children) while idle and during the burst.

Usage: python benchmarks/latency_regime.py [LATENCY_S] [ROUNDS]   (defaults: 0.3 and 25 rounds,
i.e. 25 x concurrency files per measurement)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from common import (
    OCRWATCH,
    emulator,
    env,
    start_daemon,
    wait_for,
    write_config,
    write_images,
)

CONCURRENCIES = (4, 8, 16)


def arrivals_since(log: Path, offset: int, latency_s: float) -> list[float]:
    """When each accepted upload reached the emulator (it logs after its latency)."""
    with log.open() as handle:
        handle.seek(offset)
        entries = [json.loads(line) for line in handle if line.strip()]
    return [
        e["ts"] - latency_s
        for e in entries
        if e.get("guid") and e["path"].startswith("/v5.0/ocr/RecognizeImage")
    ]


def rate(log: Path, offset: int, inbox: Path, n: int, latency_s: float) -> float:
    sidecars = list(inbox.glob("*.guid"))
    assert len(sidecars) == n, f"{len(sidecars)} of {n} sidecars"
    arrivals = arrivals_since(log, offset, latency_s)
    assert len(arrivals) == n, f"{len(arrivals)} uploads for {n} files"
    last = max(p.stat().st_mtime for p in sidecars)
    return n / (last - min(arrivals))


def rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        total += child.memory_info().rss
    return total / 2**20


def bench_submit(url: str, log: Path, base: Path, c: int, n: int, lat: float) -> float:
    inbox = base / f"submit-{c}"
    write_images(inbox, n, start=c * 100_000)
    config = write_config(
        base / f"submit-{c}.yaml",
        url,
        [{"path": str(inbox)}],
        concurrency=c,
        state_dir=str(base / f"state-submit-{c}"),
    )
    offset = log.stat().st_size
    result = subprocess.run(
        [*OCRWATCH, "submit", "-c", str(config), "--log-level", "warning", str(inbox)],
        capture_output=True,
        text=True,
        env=env(),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return rate(log, offset, inbox, n, lat)


def bench_run(
    url: str, log: Path, base: Path, c: int, n: int, lat: float, rss: dict[str, float]
) -> float:
    inbox, staged = base / f"run-{c}", base / f"staged-{c}"
    inbox.mkdir()
    files = write_images(staged, n, start=c * 100_000 + 50_000)
    config = write_config(
        base / f"run-{c}.yaml",
        url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        concurrency=c,
        state_dir=str(base / f"state-run-{c}"),
    )
    proc = start_daemon(config, base / f"run-{c}.log")
    time.sleep(1.0)
    idle = rss_mb(proc.pid)
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_mb(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    offset = log.stat().st_size
    for path in files:  # a burst: files appear complete, as a scanner's rename would
        shutil.move(path, inbox / path.name)
    wait_for(lambda: sum(1 for _ in inbox.glob("*.guid")) == n, 300, "all sidecars")
    done.set()
    sampler.join()
    time.sleep(1.0)
    rss.update(idle=idle, burst=max(samples), after=rss_mb(proc.pid))
    proc.terminate()
    assert proc.wait(60) == 0
    return rate(log, offset, inbox, n, lat)


def main(latency_s: float, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        log = base / "emulator.jsonl"
        log.touch()
        with emulator("--latency", str(latency_s), "--log", str(log)) as url:
            print(f"emulator latency {latency_s}s, {rounds} rounds per measurement")
            for c in CONCURRENCIES:
                ideal = c / latency_s
                n = rounds * c
                rss: dict[str, float] = {}
                submitted = bench_submit(url, log, base, c, n, latency_s)
                ran = bench_run(url, log, base, c, n, latency_s, rss)
                print(
                    f"concurrency {c:2d}: ideal {ideal:5.1f} files/s; "
                    f"submit {submitted:5.1f} = {submitted / ideal:.3f}x; "
                    f"run {ran:5.1f} = {ran / ideal:.3f}x  ({n} files each)"
                )
                if c == 4:
                    print(
                        f"  daemon RSS at concurrency 4: idle {rss['idle']:.1f} MB, "
                        f"burst peak {rss['burst']:.1f} MB, idle after {rss['after']:.1f} MB"
                    )
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main(
        float(sys.argv[1]) if len(sys.argv) > 1 else 0.3,
        int(sys.argv[2]) if len(sys.argv) > 2 else 25,
    )
