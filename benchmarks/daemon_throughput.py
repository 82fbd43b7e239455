"""`ocrwatch run` on a burst of 2,000 small files, against the bare-requests ceiling (same run).

The rate is taken from the sidecars' own mtimes (first to last), so the settle delay before the
first file and the polling of this script do not count. Usage: python benchmarks/daemon_throughput.py [N]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from ceiling import bare_requests_rate
from common import (
    EMULATOR_PIDS,
    emulator,
    start_daemon,
    wait_for,
    write_config,
    write_images,
)


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, emulator() as url:
        base = Path(tmp)
        staged = write_images(base / "staged", n)
        # The ceiling varies by ±15 % from run to run on this VM: take the median of three.
        ceilings = [bare_requests_rate(url, staged, threads=4) for _ in range(3)]
        ceiling = statistics.median(ceilings)
        server = psutil.Process(EMULATOR_PIDS[url])
        server_before = sum(server.cpu_times()[:2])
        inbox = base / "inbox"
        inbox.mkdir()
        config = write_config(
            base / "config.yaml", url, [{"path": str(inbox), "settle_seconds": 0.5}]
        )
        proc = start_daemon(config, base / "run.log")
        dropped = time.time()
        # A burst: files appear complete, as a scanner's rename would make them.
        for path in staged:
            shutil.move(path, inbox / path.name)
        wait_for(lambda: sum(1 for _ in inbox.glob("*.guid")) == n, 600, "all sidecars")
        server_cpu = sum(server.cpu_times()[:2]) - server_before
        daemon = psutil.Process(proc.pid)
        cpu = daemon.cpu_times()
        proc.terminate()
        assert proc.wait(60) == 0
        mtimes = sorted(p.stat().st_mtime_ns / 1e9 for p in inbox.glob("*.guid"))
        rate = (n - 1) / (mtimes[-1] - mtimes[0])
        print(
            f"bare requests, 4 threads: median {ceiling:.0f} files/s of "
            + ", ".join(f"{c:.0f}" for c in ceilings)
        )
        print(
            f"ocrwatch run, concurrency 4: {rate:.0f} files/s = {rate / ceiling:.2f}x ceiling "
            f"(drop to last sidecar {mtimes[-1] - dropped:.2f}s incl. 0.5s settle, {n} files)"
        )
        print(
            f"daemon CPU: user {cpu.user:.2f}s system {cpu.system:.2f}s = {(cpu.user + cpu.system) / n * 1000:.2f} ms/file"
            f"; the emulator {server_cpu / n * 1000:.2f} ms/file"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
