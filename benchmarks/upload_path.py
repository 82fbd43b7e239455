"""The upload path alone (journal claim -> submit -> sidecar -> journal), no watchdog, in 1 or more
processes, against the bare-requests ceiling in the same run. It shows what a multi-process daemon
could reach. Usage: python benchmarks/upload_path.py PROCESSES THREADS_EACH
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ceiling import bare_requests_rate
from common import CLIENT_ID, SECRET, emulator, write_images

N = 2000


def worker(url: str, tmp: str, threads: int, start: Any, done: Any) -> None:
    from pydantic import SecretStr

    from ocrwatch.client import OcrClient
    from ocrwatch.config import Credentials, parse_config
    from ocrwatch.journal import Journal
    from ocrwatch.log import configure_logging
    from ocrwatch.profiles import ProfileBook
    from ocrwatch.submitter import Submitter

    configure_logging(json=True, stream=open(os.devnull, "w"))  # noqa: SIM115 -- lives as long as the process
    base = Path(tmp)
    config = parse_config(
        {
            "api": {"base_url": url},
            "state_dir": str(base / "state"),
            "folders": [{"path": str(base / "inbox")}],
        },
        "bench",
    )
    journal = Journal(base / "state" / "journal.sqlite3")
    submitter = Submitter(
        OcrClient(config.api, Credentials(CLIENT_ID, SecretStr(SECRET))),
        ProfileBook(config),
        journal,
    )
    start.wait()

    def loop() -> None:
        while (job := journal.claim(time.time())) is not None:
            submitter.process_one(job, "default")

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    done.put(1)


def main(processes: int, threads: int) -> None:
    from ocrwatch.journal import Journal

    with tempfile.TemporaryDirectory() as tmp, emulator() as url:
        base = Path(tmp)
        files = write_images(base / "inbox", N)
        ceiling = bare_requests_rate(url, files, threads=4)
        journal = Journal(base / "state" / "journal.sqlite3")
        for f in files:
            st = f.stat()
            journal.note(f, base / "inbox", st.st_size, st.st_mtime_ns, 0.0)
        ctx = mp.get_context("spawn")
        start, done = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=worker, args=(url, tmp, threads, start, done))
            for _ in range(processes)
        ]
        for p in procs:
            p.start()
        time.sleep(3)  # imports and set-up are not part of the rate
        began = time.perf_counter()
        start.set()
        for _ in procs:
            done.get()
        rate = N / (time.perf_counter() - began)
        for p in procs:
            p.join()
        print(
            f"upload path, {processes} process(es) x {threads} threads: {rate:.0f} files/s vs bare requests {ceiling:.0f} = {rate / ceiling:.2f}x"
        )


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 1,
        int(sys.argv[2]) if len(sys.argv) > 2 else 4,
    )
