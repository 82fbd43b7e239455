"""The upload path alone (journal claim -> submit -> sidecar -> journal) in the job loop's threads,
with no watchdog, against the bare-requests ceiling in the same run.

Usage: python benchmarks/upload_path.py [THREADS] [LATENCY_S]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from ceiling import bare_requests_rate
from common import CLIENT_ID, SECRET, emulator, wait_for, write_images
from pydantic import SecretStr

from ocrwatch.config import Credentials, parse_config
from ocrwatch.jobloop import JobLoop
from ocrwatch.journal import Job, Journal
from ocrwatch.log import configure_logging
from ocrwatch.runtime import Runtime

N = 2000


def main(threads: int, latency_s: float) -> None:
    configure_logging(json=True, stream=open(os.devnull, "w"))  # noqa: SIM115 -- lives as long as the process
    with (
        tempfile.TemporaryDirectory() as tmp,
        emulator("--latency", str(latency_s)) as url,
    ):
        base = Path(tmp)
        n = N if latency_s == 0 else max(threads * 20, 100)
        files = write_images(base / "inbox", n)
        ceiling = bare_requests_rate(url, files, threads=threads)
        config = parse_config(
            {
                "api": {"base_url": url, "concurrency": threads},
                "state_dir": str(base / "state"),
                "folders": [{"path": str(base / "inbox")}],
            },
            "bench",
        )
        journal = Journal(config.journal_path)
        jobs = [Job(f, f.parent, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        journal.note_many(jobs, 0.0)
        loop = JobLoop(
            journal, Runtime.build(config, Credentials(CLIENT_ID, SecretStr(SECRET)))
        )
        began = time.perf_counter()
        loop.start()
        wait_for(lambda: journal.counts()["submitted"] == n, 600, "all submitted")
        rate = n / (time.perf_counter() - began)
        loop.stop(10)
        print(
            f"upload path, {threads} threads, latency {latency_s}s: {rate:.0f} files/s vs bare requests {ceiling:.0f} = {rate / ceiling:.2f}x ({n} files)"
        )


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 4,
        float(sys.argv[2]) if len(sys.argv) > 2 else 0.0,
    )
