"""Drop-to-sidecar overhead of `ocrwatch run` beyond settle_seconds, at 20 files/s arrival.

Each file is written to a staging folder and renamed in (complete on arrival, as most scanners
deliver). The sidecar's own mtime marks when it was written, so this script's polling does not
count. Overhead = sidecar mtime - arrival - settle_seconds. Usage: python benchmarks/daemon_latency.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import (
    emulator,
    percentile,
    start_daemon,
    summary,
    wait_for,
    write_config,
    write_images,
)

SETTLE_S = 1.0
RATE = 20.0


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, emulator() as url:
        base = Path(tmp)
        staged = write_images(base / "staged", n)
        inbox = base / "inbox"
        inbox.mkdir()
        config = write_config(
            base / "config.yaml",
            url,
            [{"path": str(inbox), "settle_seconds": SETTLE_S}],
        )
        proc = start_daemon(config, base / "run.log")
        arrived: dict[str, float] = {}
        start = time.monotonic()
        for i, path in enumerate(staged):
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            path.rename(inbox / path.name)
            arrived[path.name] = time.time()
        wait_for(lambda: sum(1 for _ in inbox.glob("*.guid")) == n, 60, "all sidecars")
        proc.terminate()
        assert proc.wait(60) == 0
        overhead_ms = [
            ((inbox / (name + ".guid")).stat().st_mtime_ns / 1e9 - t - SETTLE_S) * 1000
            for name, t in arrived.items()
        ]
        print(
            f"{n} files at {RATE:.0f}/s, settle_seconds {SETTLE_S}: overhead ms {summary(overhead_ms)}"
        )
        print(
            f"targets p50 <= 100 ms: {percentile(overhead_ms, 50) <= 100}, p99 <= 500 ms: {percentile(overhead_ms, 99) <= 500}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
