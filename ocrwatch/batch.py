"""`ocrwatch submit`: expand the given paths, send them through a worker pool, summarise.

No journal here: a file counts as done when it has a sidecar no older than itself.
"""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ocrwatch.config import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, Config, FolderConfig
from ocrwatch.selection import walk_candidates
from ocrwatch.sidecar import existing_sidecar, has_current_sidecar, is_sidecar_name
from ocrwatch.submitter import Outcome, Result, Submitter


@dataclass(frozen=True, slots=True)
class Target:
    path: Path
    root: Path
    profile: str


@dataclass
class Summary:
    submitted: list[Result] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Result] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def folder_for(path: Path, config: Config) -> FolderConfig | None:
    """The configured folder that holds `path` (the deepest one), if any."""
    absolute = path.absolute()
    best: FolderConfig | None = None
    for folder in config.folders:
        root = folder.path.absolute()
        if (absolute == root or root in absolute.parents) and (
            best is None or len(root.parts) > len(best.path.absolute().parts)
        ):
            best = folder
    return best


def expand(
    paths: Sequence[Path], config: Config, profile: str | None
) -> tuple[list[Target], list[Path]]:
    """Files to send (folders expanded by their include/exclude rules) and those already done."""
    targets: list[Target] = []
    skipped: list[Path] = []
    for given in paths:
        folder = folder_for(given, config)
        root = (
            folder.path.absolute()
            if folder
            else (given.absolute() if given.is_dir() else given.absolute().parent)
        )
        chosen = profile or (folder.profile if folder else "default")
        if given.is_dir():
            include = folder.include if folder else DEFAULT_INCLUDE
            exclude = folder.exclude if folder else DEFAULT_EXCLUDE
            recursive = folder.recursive if folder else True
            for found_list in walk_candidates(
                given.absolute(),
                recursive=recursive,
                include=include,
                exclude=exclude,
                roots=[root],
            ):
                for found in found_list:
                    if has_current_sidecar(found.mtime_ns, found.sidecar_mtime_ns):
                        skipped.append(found.path)
                    else:
                        targets.append(Target(found.path, root, chosen))
        elif is_sidecar_name(given.name):
            continue
        else:
            path = given.absolute()
            sidecar = existing_sidecar(path)
            try:
                mtime_ns = path.stat().st_mtime_ns
            except OSError:
                mtime_ns = None
            if (
                sidecar is not None
                and mtime_ns is not None
                and has_current_sidecar(mtime_ns, sidecar[1])
            ):
                skipped.append(path)
            else:
                targets.append(Target(path, root, chosen))
    return targets, skipped


def run_batch(
    submitter: Submitter, targets: Sequence[Target], concurrency: int, *, progress: bool
) -> Summary:
    summary = Summary()
    stop = (
        threading.Event()
    )  # set once the credentials are refused: the rest would fail the same way

    def send(target: Target) -> Result:
        if stop.is_set():
            return Result(
                Outcome.AUTH,
                target.path,
                target.profile,
                error="not sent: the credentials were refused",
            )
        result = submitter.send(target.path, target.root, target.profile)
        if result.outcome is Outcome.AUTH:
            stop.set()
        return result

    # A serial console or a fresh pty may report a 0x0 size, and tqdm then hides the bar as
    # "off screen"; shutil falls back to 80x24 there.
    size = shutil.get_terminal_size()
    bar = tqdm(
        total=len(targets),
        unit="file",
        disable=not progress,
        file=sys.stderr,
        ncols=size.columns,
        nrows=size.lines,
    )
    with ThreadPoolExecutor(
        max_workers=concurrency, thread_name_prefix="submit"
    ) as pool:
        futures = [pool.submit(send, t) for t in targets]
        for future in as_completed(futures):
            result = future.result()
            if result.outcome is Outcome.SUBMITTED:
                summary.submitted.append(result)
            else:
                summary.failed.append(result)
            bar.update(1)
    bar.close()
    return summary
