"""Idle CPU of `ocrwatch run` watching 1,000 subfolders with inotify, over 60 s with nothing arriving.

Usage: python benchmarks/idle_cpu.py [SECONDS]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import emulator, start_daemon, write_config


def main(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, emulator() as url:
        base = Path(tmp)
        inbox = base / "inbox"
        for i in range(1000):
            (inbox / f"dept-{i // 100:02d}" / f"desk-{i:04d}").mkdir(parents=True)
        config = write_config(base / "config.yaml", url, [{"path": str(inbox)}])
        log = base / "run.log"
        proc = start_daemon(config, log)
        time.sleep(2)  # let start-up settle before measuring
        # The daemon and any children it may have (it starts none of its own).
        family = [psutil.Process(proc.pid)]
        family += family[0].children(recursive=True)
        before = sum(sum(p.cpu_times()[:2]) for p in family)
        time.sleep(seconds)
        after = sum(sum(p.cpu_times()[:2]) for p in family)
        proc.terminate()
        assert proc.wait(60) == 0
        used = after - before
        print(
            f"1010 folders watched (inotify), {seconds:.0f}s idle, {len(family)} processes: {used:.3f}s CPU = {used / seconds * 100:.2f}% of one core (target <= 1%)"
        )


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0)
