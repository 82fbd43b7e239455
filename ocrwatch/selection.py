"""Which paths are candidates for submission, and the catch-up walk that finds them.

Patterns match case-insensitively (scanners write `.JPG` as often as `.jpg`), against the file name
and against the path relative to the watched root. Symbolic links are followed only to regular
files inside a watched root, and never into directories, so a link cannot escape or loop.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Final

from ocrwatch.profiles import OVERRIDE_NAME

IGNORED_NAMES: Final = (
    ".DS_Store",
    "._*",
    "Thumbs.db",
    "desktop.ini",
    "*.part",
    "*.crdownload",
    "~$*",
    "*.guid",
    "*.error",
    ".ocrwatch-tmp-*",
    OVERRIDE_NAME,
)
IGNORED_DIRS: Final = ("@eaDir", "#recycle", ".stfolder", ".stversions", ".Trash*")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in patterns)


def is_ignored_dir(name: str, exclude: Sequence[str]) -> bool:
    return _matches(name, IGNORED_DIRS) or _matches(name, exclude)


def is_candidate(
    relpath: PurePath, include: Sequence[str], exclude: Sequence[str]
) -> bool:
    """Should the file at `relpath` (relative to its watched root) be submitted, by name alone?"""
    if not relpath.parts or relpath.is_absolute() or ".." in relpath.parts:
        return False
    *dirs, name = relpath.parts
    if any(is_ignored_dir(d, exclude) for d in dirs):
        return False
    rel = relpath.as_posix()
    if (
        _matches(name, IGNORED_NAMES)
        or _matches(name, exclude)
        or _matches(rel, exclude)
    ):
        return False
    return _matches(name, include) or _matches(rel, include)


def is_within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def regular_file_stat(path: Path, roots: Iterable[Path]) -> os.stat_result | None:
    """The file's stat if it is a regular file, or a link to one inside a watched root; else None."""
    try:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            target = path.resolve(strict=True)
            if not is_within(target, [r.resolve() for r in roots]):
                return None
            st = target.stat()
    except (OSError, RuntimeError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None


@dataclass(frozen=True, slots=True)
class Found:
    """A candidate seen by the walk, with its sidecar's mtime if it has one."""

    path: Path
    size: int
    mtime_ns: int
    sidecar_mtime_ns: int | None


def walk_candidates(
    root: Path,
    *,
    recursive: bool,
    include: Sequence[str],
    exclude: Sequence[str],
    roots: Sequence[Path],
) -> Iterator[list[Found]]:
    """Yield the candidates of each folder under `root`, one list per folder, with os.scandir."""
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError:
            continue  # vanished or unreadable folder: the next rescan tries again
        names = {e.name: e for e in entries}
        found: list[Found] = []
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive and not is_ignored_dir(entry.name, exclude):
                        pending.append(path)
                    continue
            except OSError:
                continue
            if not is_candidate(path.relative_to(root), include, exclude):
                continue
            st = (
                regular_file_stat(path, roots)
                if entry.is_symlink()
                else _entry_stat(entry)
            )
            if st is None:
                continue
            found.append(
                Found(
                    path, st.st_size, st.st_mtime_ns, _sidecar_mtime(names, entry.name)
                )
            )
        if found:
            yield found


def _entry_stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _sidecar_mtime(names: dict[str, os.DirEntry[str]], name: str) -> int | None:
    for suffix in (".guid", ".error"):
        entry = names.get(name + suffix)
        if entry is not None:
            try:
                return entry.stat(follow_symlinks=False).st_mtime_ns
            except OSError:
                continue
    return None
