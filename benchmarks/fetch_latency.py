"""Drop-to-text latency of `ocrwatch run` with fetch_results, against an emulator whose tasks
take 1 s to process, beside the ideal: settle + upload + 1 s + one poll interval (2 s).

Each file is renamed into the inbox (complete on arrival) at RATE per second. The `.guid`'s mtime
marks the end of the upload and the `.txt`'s the written result, so this script's own polling
does not count. The real poll schedule is used (first poll 2 s after the upload). The emulator's
CPU is reported, to show it is not the bottleneck. Usage: python benchmarks/fetch_latency.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import (
    EMULATOR_PIDS,
    emulator,
    percentile,
    start_daemon,
    summary,
    wait_for,
    write_config,
    write_images,
)

SETTLE_S = 1.0
PROCESSING_S = 1.0
FIRST_POLL_S = 2.0
RATE = 4.0
TARGET_S = 1.5  # p95 within this of the ideal


def main(n: int) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        emulator("--processing", str(PROCESSING_S)) as url,
    ):
        server = psutil.Process(EMULATOR_PIDS[url])
        base = Path(tmp)
        staged = write_images(base / "staged", n)
        inbox = base / "inbox"
        inbox.mkdir()
        config = write_config(
            base / "config.yaml",
            url,
            [{"path": str(inbox), "settle_seconds": SETTLE_S}],
            profiles={"default": {"fetch_results": True}},
        )
        proc = start_daemon(config, base / "run.log")
        cpu_before = server.cpu_times()
        arrived: dict[str, float] = {}
        start = time.monotonic()
        for i, path in enumerate(staged):
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            path.rename(inbox / path.name)
            arrived[path.name] = time.time()
        wait_for(
            lambda: sum(1 for _ in inbox.glob("*.png.txt")) == n, 120, "all results"
        )
        took = time.monotonic() - start
        cpu_after = server.cpu_times()
        proc.terminate()
        assert proc.wait(60) == 0
        text_s, ideal_s, upload_ms = [], [], []
        for name, t in arrived.items():
            guid_at = (inbox / (name + ".guid")).stat().st_mtime_ns / 1e9
            text_at = (inbox / (name + ".txt")).stat().st_mtime_ns / 1e9
            upload = max(0.0, guid_at - t - SETTLE_S)
            upload_ms.append(upload * 1000)
            text_s.append(text_at - t)
            ideal_s.append(SETTLE_S + upload + PROCESSING_S + FIRST_POLL_S)
        server_cpu = (cpu_after.user + cpu_after.system) - (
            cpu_before.user + cpu_before.system
        )
        p50, p95 = percentile(text_s, 50), percentile(text_s, 95)
        ideal50, ideal95 = percentile(ideal_s, 50), percentile(ideal_s, 95)
        print(
            f"{n} files at {RATE:g}/s, settle_seconds {SETTLE_S:g}, processing {PROCESSING_S:g} s"
        )
        print(f"drop-to-text s: {summary(text_s)}")
        print(f"upload ms: {summary(upload_ms)}")
        print(
            f"ideal (settle + upload + {PROCESSING_S:g} s + one {FIRST_POLL_S:g} s poll interval):"
            f" p50 {ideal50:.2f} s, p95 {ideal95:.2f} s"
        )
        print(
            f"p50 {p50:.2f} s, p95 {p95:.2f} s; p95 - ideal p95 = {p95 - ideal95:+.2f} s"
            f" (target <= {TARGET_S:g} s: {p95 - ideal95 <= TARGET_S})"
        )
        print(
            f"emulator CPU {server_cpu:.2f} s over {took:.1f} s"
            f" ({100 * server_cpu / took:.1f} % of one core)"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 120)
