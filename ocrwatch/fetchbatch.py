"""`ocrwatch fetch`: results for files that have a `.guid` and none yet (sent before
`fetch_results` was on, or by `submit`), through the journal `run` uses.

Each file becomes a `fetching` row and is polled by the same step as the daemon's (a running
daemon may take some of the polls: the row is claimed either way). Only a `.guid` that is
current for the file is trusted. A task the service no longer has (its 24 hours are over) is
uploaded again only with `--resubmit`, which bills it, and the summary counts those.
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

from ocrwatch.config import Config
from ocrwatch.errors import ConfigError, JournalError
from ocrwatch.jobloop import PDF_MAGIC, JobLoop
from ocrwatch.journal import Entry, Fetch, Job, Journal
from ocrwatch.profiles import FetchPolicy
from ocrwatch.selection import deepest_root, walk_given
from ocrwatch.sidecar import Kind, has_current_sidecar, read_guid, sidecar_path

WAIT_MAX_S: Final = 0.5  # between looks at a row another thread or process polls


@dataclass(frozen=True, slots=True)
class Target:
    job: Job
    guid: str


@dataclass
class FetchSummary:
    fetched: list[Path] = field(default_factory=list)
    # Of `fetched`: uploaded again first (`--resubmit`, the service had lost the task).
    resubmitted: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def find_targets(
    paths: Sequence[Path], config: Config, journal: Journal, summary: FetchSummary
) -> list[Target]:
    """The files with a `.guid` and no result yet: those given (folders expanded by their
    folder's rules), or everything under the configured folders."""
    folders = {f.path.absolute(): f for f in config.folders}
    given = [p.absolute() for p in paths] or list(folders)
    candidates: list[tuple[Path, Path]] = []  # (file, root)
    for path in given:
        root = deepest_root(path, folders) or (path if path.is_dir() else path.parent)
        folder = folders.get(root)
        if not path.is_dir():
            candidates.append((path, root))
            continue
        for batch in walk_given(path, folder, root):
            candidates += [(Path(found.path), root) for found in batch]
    known = journal.lookup(path for path, _ in candidates)
    targets = []
    for path, root in dict.fromkeys(candidates):
        target = _target(
            path, root, known.get(str(path)), summary, explicit=bool(paths)
        )
        if target is not None:
            targets.append(target)
    return targets


def _target(
    path: Path,
    root: Path,
    entry: Entry | None,
    summary: FetchSummary,
    *,
    explicit: bool,
) -> Target | None:
    try:
        st = path.stat()
    except OSError as exc:
        summary.failed.append((path, f"cannot read it: {exc.strerror}"))
        return None
    guid = read_guid(path)
    if guid is None:
        if explicit:
            summary.failed.append(
                (path, "it has no .guid; send it first (`ocrwatch submit`)")
            )
        return None
    same = entry is not None and (entry.size, entry.mtime_ns) == (
        st.st_size,
        st.st_mtime_ns,
    )
    known = same and entry is not None and entry.guid == guid
    if known and entry is not None and entry.state == "completed":
        summary.skipped.append((path, "its results are written already"))
        return None
    if not known and not has_current_sidecar(st.st_mtime_ns, _guid_mtime_ns(path)):
        # A new scan under the old name: the task is of the content that was there.
        summary.failed.append(
            (
                path,
                "stale .guid: the file changed after it was sent; the daemon or "
                "`ocrwatch submit` sends it anew",
            )
        )
        return None
    return Target(Job(path, root, st.st_size, st.st_mtime_ns), guid)


def _guid_mtime_ns(path: Path) -> int | None:
    try:
        return sidecar_path(path, Kind.GUID).stat().st_mtime_ns
    except OSError:
        return None


def fetch_all(
    loop: JobLoop,
    journal: Journal,
    targets: Sequence[Target],
    summary: FetchSummary,
    *,
    progress: bool,
    clock: Callable[[], float] = time.time,
    resubmit: bool = False,
) -> FetchSummary:
    """Poll every target to its end, `concurrency` at a time; then wait for their hooks.

    `resubmit`: a task the service lost (or let expire) is uploaded again, billed; without
    it, such a file fails with the reason."""
    stopping = threading.Event()
    loop.resume_orphans()

    def one(target: Target) -> None:
        try:
            _fetch_one(loop, journal, target, summary, stopping, clock, resubmit)
        except JournalError as exc:
            summary.failed.append((target.job.path, str(exc)))

    size = shutil.get_terminal_size()
    bar = tqdm(
        total=len(targets),
        unit="file",
        disable=not progress,
        file=sys.stderr,
        ncols=size.columns,
        nrows=size.lines,
    )
    pool = ThreadPoolExecutor(
        loop.runtime.config.api.concurrency, thread_name_prefix="fetch"
    )
    try:
        for future in as_completed([pool.submit(one, t) for t in targets]):
            future.result()
            bar.update(1)
    finally:
        stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    loop.hooks.wait()
    return summary


def _fetch_one(
    loop: JobLoop,
    journal: Journal,
    target: Target,
    summary: FetchSummary,
    stopping: threading.Event,
    clock: Callable[[], float],
    resubmit: bool,
) -> None:
    job = target.job
    policy = _policy(loop, job)
    pdf = _is_pdf(job.path)
    fetch = Fetch(policy.timeout_s, 0.0, pdf)
    started = journal.start_fetch(job, target.guid, fetch, clock(), resubmit=resubmit)
    resent = False
    # The daemon polls through an outage for as long as it lasts; a command gives up at the
    # deadline with the last trouble, and leaves the file waiting for its result.
    deadline = clock() + policy.timeout_s
    while not stopping.is_set():
        state = journal.fetch_state(job.path)
        if state is None:
            summary.failed.append((job.path, "it went away"))
            return
        name, error, due = state
        if name == "fetching" and error and clock() >= deadline:
            summary.failed.append(
                (
                    job.path,
                    f"no result in {policy.timeout_s:g} s ({error}); try again later",
                )
            )
            return
        if name == "completed":
            summary.fetched.append(job.path)
            if resent:
                summary.resubmitted.append(job.path)
            return
        if name == "queued":
            if not (started and resubmit):
                # Not ours to send: it waits for the daemon (or `submit`) to send it.
                summary.failed.append(
                    (job.path, "it is waiting to be sent; no result to fetch yet")
                )
                return
            if resent or _changed(job):
                # Changed since the fetch began (its poll queued it anew): the daemon, or a
                # `submit`, sends the new content once it settles; not this command.
                summary.failed.append(
                    (
                        job.path,
                        "it changed while its result was fetched; it is sent anew",
                    )
                )
                return
            # The service lost the task (`--resubmit`): sent once more, then polled.
            claimed = journal.claim_file(job, clock())
            if claimed is not None:
                resent = True
                loop.process(claimed)
                continue
        elif name == "submitted" and resent:
            # Sent again under a profile that does not fetch: its new task is asked about.
            entry = journal.lookup([job.path]).get(str(job.path))
            guid = None if entry is None else entry.guid
            if guid and journal.start_fetch(job, guid, fetch, clock()):
                continue
            summary.failed.append((job.path, error or name))
            return
        elif name != "fetching":
            summary.failed.append((job.path, error or name))
            return
        poll = journal.claim_poll_of(job.path, clock())
        if poll is not None:
            loop.process_poll(poll)
            continue
        stopping.wait(max(0.01, min(WAIT_MAX_S, due - clock())))
    summary.failed.append((job.path, "interrupted"))


def _changed(job: Job) -> bool:
    """Does the file look otherwise than when the fetch began?"""
    try:
        st = job.path.stat()
    except OSError:
        return True
    return (st.st_size, st.st_mtime_ns) != (job.size, job.mtime_ns)


def _policy(loop: JobLoop, job: Job) -> FetchPolicy:
    runtime = loop.runtime
    profile = runtime.profile_for(job) or "default"
    try:
        return runtime.book.resolve_for(job.path, job.root, profile).fetch
    except ConfigError:
        return FetchPolicy()


def _is_pdf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(PDF_MAGIC)) == PDF_MAGIC
    except OSError:
        return False
