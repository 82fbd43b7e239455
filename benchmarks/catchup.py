"""Catch-up scan of 100,000 files that already have sidecars: how long until the daemon is ready,
and proof that nothing is submitted. Run twice: sidecars only (a fresh journal), and with every file
also recorded as submitted in the journal. Usage: python benchmarks/catchup.py [N]
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from common import emulator, start_daemon, write_config

from ocrwatch.journal import Journal
from tests.images import png_bytes

PER_DIR = 1000


def populate(inbox: Path, n: int) -> list[Path]:
    data = png_bytes(1)
    paths = []
    for i in range(n):
        folder = inbox / f"batch-{i // PER_DIR:03d}"
        if i % PER_DIR == 0:
            folder.mkdir(parents=True)
        path = folder / f"scan-{i:06d}.png"
        path.write_bytes(data)
        (folder / f"scan-{i:06d}.png.guid").write_text(
            "a197aade-bba9-4c7a-92c7-46851b3dceaa\n"
        )
        paths.append(path)
    return paths


def seed_journal(state: Path, inbox: Path, paths: list[Path]) -> None:
    Journal(state / "journal.sqlite3").close()  # creates the schema
    db = sqlite3.connect(state / "journal.sqlite3")
    rows = []
    for p in paths:
        st = p.stat()
        rows.append(
            (
                str(p),
                str(inbox),
                st.st_size,
                st.st_mtime_ns,
                "submitted",
                "a197aade-bba9-4c7a-92c7-46851b3dceaa",
                1,
                0.0,
                0.0,
            )
        )
    db.executemany(
        "INSERT INTO files(path, root, size, mtime_ns, state, guid, attempts, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
        rows,
    )
    db.commit()
    db.close()


def time_ready(base: Path, config: Path, label: str) -> None:
    log = base / f"run-{label}.log"
    started = time.time()
    proc = start_daemon(config, log)
    ready = time.time()
    time.sleep(1.0)  # let anything wrongly queued reach the emulator before we count
    proc.terminate()
    assert proc.wait(60) == 0
    events = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{")
    ]
    scan = next(e for e in events if e["event"] == "rescan.finished")
    submitted = sum(1 for e in events if e["event"] == "job.submitted")
    print(
        f"{label}: ready {ready - started:.2f}s after start (scan itself {scan['duration_ms']} ms), "
        f"seen {scan['seen']}, found {scan['found']}, submitted {submitted}"
    )


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, emulator() as url:
        base = Path(tmp)
        inbox = base / "inbox"
        t0 = time.perf_counter()
        paths = populate(inbox, n)
        print(f"created {n} files with sidecars in {time.perf_counter() - t0:.1f}s")
        config = write_config(base / "config.yaml", url, [{"path": str(inbox)}])
        time_ready(base, config, "sidecars only")
        state = base / "state"
        for f in state.glob("journal.sqlite3*"):
            f.unlink()
        seed_journal(state, inbox, paths)
        time_ready(base, config, "journal says submitted")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
