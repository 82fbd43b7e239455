"""The soak: `ocrwatch run` against a faulty service while files arrive, are copied and renamed,
and the daemon is killed with SIGKILL and restarted. Used by tests/test_soak.py (CI size) and
benchmarks/soak.py (3,000 files, 5 kills).

Every upload is billed, so the figure that matters is how many uploads the emulator accepted,
against what may legitimately cost one more: a reply lost after the service accepted the file,
and a file in flight at a kill.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import signal
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ocrwatch.emulator import Emulator, Faults

from .conftest import CLIENT_ID, SECRET, wait_until, write_config
from .daemon_harness import journal_counts, spawn
from .images import png_bytes

FAULTS = Faults(
    rate_503=0.20,
    rate_429=0.10,
    retry_after="1",
    rate_drop=0.05,
    rate_accept_drop=0.02,
    token_rate_429=0.10,
)


@dataclass(frozen=True, slots=True)
class SoakReport:
    files: int  # image files at the end
    distinct: int  # distinct contents among every file that ever existed
    uploads: int  # tasks the emulator created (each one billed)
    accepted_dropped: int  # of those, replies dropped after the task was created
    in_flight_at_kills: int  # contents on the wire right after each SIGKILL, summed
    kills: int
    copies: int
    renames: int
    token_calls: int
    faults_injected: int
    seconds: float

    @property
    def allowed(self) -> int:
        return self.distinct + self.accepted_dropped + self.in_flight_at_kills

    def __str__(self) -> str:
        return (
            f"soak: {self.files} files ({self.copies} copies, {self.renames} renames), "
            f"{self.distinct} distinct contents, {self.kills} SIGKILLs; "
            f"{self.uploads} uploads <= {self.allowed} allowed "
            f"({self.distinct} distinct + {self.accepted_dropped} replies lost after "
            f"acceptance + {self.in_flight_at_kills} in flight at the kills); "
            f"{self.faults_injected} faults injected, {self.token_calls} token calls; "
            f"{self.seconds:.1f} s"
        )


def run_soak(
    base: Path, *, files: int, kills: int, seed: int = 7, per_second: float = 25.0
) -> SoakReport:
    """Drop `files` arrivals (80 % new scans, 10 % copies, 10 % renames) at `per_second`,
    SIGKILL the daemon `kills` times along the way, and wait until every file is done."""
    rng = random.Random(seed)
    inbox = base / "inbox"
    inbox.mkdir()
    started = time.monotonic()
    with Emulator(
        client_id=CLIENT_ID,
        client_secret=SECRET,
        token_ttl_s=1,
        faults=FAULTS,
        seed=seed,
    ) as emulator:
        config = write_config(
            base / "config.yaml",
            emulator.url,
            [{"path": str(inbox), "settle_seconds": 0.2}],
            api={"retry": {"max_attempts": 12, "max_delay": 1.0}},
            rescan_interval=10,
        )
        log = base / "run.log"
        state = base / "state"
        proc = spawn(config, log, wait_started=True)
        kill_at = sorted(rng.sample(range(files // 10, files - files // 10), kills))
        contents: set[str] = set()
        live: list[Path] = []
        copies = renames = 0
        on_the_wire: Counter[str] = Counter()  # contents being sent at each kill
        for n in range(files):
            if kill_at and n == kill_at[0]:
                kill_at.pop(0)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                on_the_wire.update(_being_sent(state))
                proc = spawn(config, log, wait_started=True)
            roll = rng.random()
            target = inbox / f"d{n % 7}" / f"scan-{n:05d}.png"
            target.parent.mkdir(exist_ok=True)
            if roll < 0.1 and live:
                shutil.copy(rng.choice(live), target)
                copies += 1
            elif roll < 0.2 and live:
                source = live.pop(rng.randrange(len(live)))
                source.rename(target)
                renames += 1
            else:
                data = png_bytes(seed * 100_000 + n)
                target.write_bytes(data)
                contents.add(hashlib.sha256(data).hexdigest())
            live.append(target)
            time.sleep(1 / per_second)  # files arrive over time, as from a scanner

        def done() -> bool:
            counts = journal_counts(state)
            pending = counts["queued"] + counts["submitting"] + counts["failed"]
            return pending == 0 and all(_guid(p).exists() for p in live)

        wait_until(done, 60 + files / 10, "every file done")
        proc.send_signal(signal.SIGTERM)
        assert 0 == proc.wait(30)
        errors = list(inbox.rglob("*.error"))
        guids = list(inbox.rglob("*.guid"))
        assert [] == errors, f"unexpected .error files: {errors[:5]}"
        orphans = sorted(set(guids) - set(map(_guid, live)))
        missing = sorted(set(map(_guid, live)) - set(guids))
        assert ([], []) == (orphans, missing)
        received = emulator.received
        sent = emulator.submissions()
        per_content = Counter(r["image_sha256"] for r in sent)
        assert set(per_content) == contents
        lost = Counter(
            r["image_sha256"] for r in received if r.get("fault") == "accept_drop"
        )
        # Each extra upload of a content is explained by a reply lost for that very content,
        # or by that content being on the wire at a kill: nothing else may cost twice.
        unexplained = {
            sha: n - 1 - lost[sha] - on_the_wire[sha]
            for sha, n in per_content.items()
            if n - 1 > lost[sha] + on_the_wire[sha]
        }
        assert {} == unexplained
        return SoakReport(
            files=len(live),
            distinct=len(contents),
            uploads=len(sent),
            accepted_dropped=sum(lost.values()),
            in_flight_at_kills=sum(on_the_wire.values()),
            kills=kills,
            copies=copies,
            renames=renames,
            token_calls=emulator.token_calls,
            faults_injected=sum(bool(r.get("fault")) for r in received),
            seconds=time.monotonic() - started,
        )


def _being_sent(state: Path) -> list[str]:
    """The contents of the rows `submitting` with their content noted: about to be sent, or
    on the wire (a row waiting for a twin's GUID has none)."""
    db = sqlite3.connect(f"file:{state / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT sha256 FROM files WHERE state='submitting' AND sha256 IS NOT NULL"
        ).fetchall()
    finally:
        db.close()
    return [sha for (sha,) in rows]


def _guid(path: Path) -> Path:
    return path.with_name(path.name + ".guid")
