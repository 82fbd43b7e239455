"""`ocrwatch submit`: expand the given paths into jobs, take each through the job loop, summarise.

It uses `run`'s journal: every file is claimed there before it is sent, so `submit` and a running
daemon never send one file at once, and `status` shows what `submit` did. A file that another
process is sending is waited for, and reported as that process's outcome.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tqdm import tqdm

from ocrwatch.config import DEFAULT_INCLUDE, Config, FolderConfig
from ocrwatch.errors import JournalError
from ocrwatch.jobloop import JobLoop
from ocrwatch.journal import ACCEPTED_STATES, DONE_STATES, Entry, Job, Journal
from ocrwatch.outcome import Outcome, restore_guid
from ocrwatch.selection import (
    deepest_root,
    is_result_file,
    is_written_result,
    walk_given,
)
from ocrwatch.sidecar import (
    Kind,
    existing_sidecar,
    has_current_sidecar,
    is_sidecar_name,
    sidecar_path,
)

OTHER_PROCESS_WAIT_S: Final = 120.0
POLL_S: Final = 0.2


@dataclass
class Summary:
    submitted: list[tuple[Path, str]] = field(default_factory=list)  # (path, guid)
    # A GUID from the journal: the same content sent before, or a current .guid already there
    reused: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def expand(
    paths: Sequence[Path], config: Config, profile: str | None, summary: Summary
) -> list[Job]:
    """The files to send (folders expanded by their rules); files already done go to `summary`."""
    folders = {f.path.absolute(): f for f in config.folders}
    jobs: list[Job] = []
    for given in paths:
        path = given.absolute()
        root = deepest_root(path, folders)
        folder = None if root is None else folders[root]
        # Stored only when the folder does not say: a file left queued follows its folder's
        # profile as the config has it when the daemon sends it.
        chosen = profile or (None if folder else "default")
        if path.is_dir():
            jobs += _walk(path, root or path, folder, chosen, summary)
        elif is_sidecar_name(path.name) or is_result_file(
            path, folder.include if folder else DEFAULT_INCLUDE
        ):
            continue
        else:
            job = _given_file(path, root or path.parent, chosen, summary)
            if job is not None:
                jobs.append(job)
    return jobs


def _walk(
    directory: Path,
    root: Path,
    folder: FolderConfig | None,
    profile: str | None,
    summary: Summary,
) -> list[Job]:
    jobs = []
    for batch in walk_given(directory, folder, root):
        for found in batch:
            path = Path(found.path)
            if has_current_sidecar(found.mtime_ns, found.sidecar_mtime_ns):
                summary.skipped.append(path)
            else:
                jobs.append(Job(path, root, found.size, found.mtime_ns, 0, profile))
    return jobs


def _given_file(
    path: Path, root: Path, profile: str | None, summary: Summary
) -> Job | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        summary.failed.append((path, "no such file or folder; check the path"))
        return None
    except OSError as exc:
        summary.failed.append((path, f"cannot read it: {exc.strerror}"))
        return None
    sidecar = existing_sidecar(path)
    if sidecar is not None and has_current_sidecar(st.st_mtime_ns, sidecar[1]):
        summary.skipped.append(path)
        return None
    return Job(path, root, st.st_size, st.st_mtime_ns, 0, profile)


def submit_all(
    loop: JobLoop,
    journal: Journal,
    jobs: Sequence[Job],
    summary: Summary,
    *,
    progress: bool,
    clock: Callable[[], float] = time.time,
) -> Summary:
    """Claim and process every job, `concurrency` at a time; stop sending once refused."""
    refused = threading.Event()  # the rest would be refused the same way
    stopping = threading.Event()  # Ctrl-C: no more claims, no more waiting
    loop.resume_orphans()  # what a killed `submit` left claimed
    jobs = _without_written_results(journal, jobs, summary)

    def send(job: Job) -> None:
        if refused.is_set() or stopping.is_set():
            why = "the credentials were refused" if refused.is_set() else "interrupted"
            summary.failed.append((job.path, f"not sent: {why}"))
            return
        try:
            claimed = journal.claim_file(job, clock())
            if claimed is None:
                _not_claimed(job, journal, summary, stopping)
                return
            result = loop.process(claimed)
        except JournalError as exc:
            summary.failed.append((job.path, str(exc)))
            return
        if result.outcome is Outcome.SUBMITTED and result.guid:
            summary.submitted.append((job.path, result.guid))
            return
        if result.outcome in (Outcome.DEDUPLICATED, Outcome.ADOPTED) and result.guid:
            summary.reused.append((job.path, result.guid))
            return
        if result.outcome is Outcome.AUTH:
            refused.set()
        summary.failed.append((job.path, result.error or str(result.outcome)))

    # A serial console or a fresh pty may report a 0x0 size, and tqdm then hides the bar as
    # "off screen"; shutil falls back to 80x24 there.
    size = shutil.get_terminal_size()
    bar = tqdm(
        total=len(jobs),
        unit="file",
        disable=not progress,
        file=sys.stderr,
        ncols=size.columns,
        nrows=size.lines,
    )
    concurrency = loop.runtime.config.api.concurrency
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="submit")
    try:
        for future in as_completed([pool.submit(send, job) for job in jobs]):
            future.result()
            bar.update(1)
    finally:
        # On Ctrl-C: uploads in flight finish and are recorded; nothing new starts.
        stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return summary


def _without_written_results(
    journal: Journal, jobs: Sequence[Job], summary: Summary
) -> list[Job]:
    """Result files ocrwatch wrote are no input, even with their original gone: skipped."""
    try:
        written = journal.written_results(job.path for job in jobs)
    except JournalError as exc:
        summary.failed.extend((job.path, str(exc)) for job in jobs)
        return []
    kept = []
    for job in jobs:
        if is_written_result((job.size, job.mtime_ns), written.get(str(job.path))):
            summary.skipped.append(job.path)
        else:
            kept.append(job)
    return kept


def _not_claimed(
    job: Job, journal: Journal, summary: Summary, stopping: threading.Event
) -> None:
    """Another process has it in flight, or it was submitted with this content already."""
    entry = _wait_while_submitting(job, journal, stopping)
    if entry is not None and entry.state in ACCEPTED_STATES and entry.guid:
        if not sidecar_path(job.path, Kind.GUID).exists():
            # Its .guid was lost: the journal still knows it.
            restore_guid(job.path, entry.guid)
        summary.skipped.append(job.path)
    elif entry is not None and entry.state == "submitting":
        why = "another ocrwatch process is still submitting it; see `ocrwatch status`"
        summary.failed.append((job.path, why))
    else:
        why = entry.last_error if entry is not None and entry.last_error else "unknown"
        done = entry is not None and entry.state in DONE_STATES
        what = entry.state if entry is not None and done else "not sent"
        summary.failed.append((job.path, f"{what} by another ocrwatch process: {why}"))


def _wait_while_submitting(
    job: Job, journal: Journal, stopping: threading.Event
) -> Entry | None:
    deadline = time.monotonic() + OTHER_PROCESS_WAIT_S
    while True:
        entry = journal.lookup([job.path]).get(str(job.path))
        if entry is None or entry.state != "submitting":
            return entry
        if time.monotonic() > deadline or stopping.wait(POLL_S):
            return entry
