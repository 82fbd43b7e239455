"""Which paths are candidates for submission, and the catch-up walk that finds them.

Patterns match case-insensitively (scanners write `.JPG` as often as `.jpg`), against the file name
and against the path relative to the watched root. Symbolic links are followed only to regular
files inside a watched root, and never into directories, so a link cannot escape or loop.
ocrwatch's own result files are never candidates, whatever the patterns say: by name, a
`<X>.<result ext>` or `<X>.ocr.<result ext>` whose `<X>` is an image or PDF name beside it.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import stat
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Final

from ocrwatch.config import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, FolderConfig
from ocrwatch.profiles import OVERRIDE_NAME
from ocrwatch.sidecar import (
    RESULT_EXTENSIONS,
    RESULT_INFIX,
    SIDECAR_SUFFIXES,
    TMP_PREFIX,
)

IGNORED_NAMES: Final = (
    ".DS_Store",
    "._*",
    "Thumbs.db",
    "desktop.ini",
    "*.part",
    "*.crdownload",
    "~$*",
    *(f"*{suffix}" for suffix in SIDECAR_SUFFIXES),
    f"{TMP_PREFIX}*",
    OVERRIDE_NAME,
)
IGNORED_DIRS: Final = ("@eaDir", "#recycle", ".stfolder", ".stversions", ".Trash*")
RESULT_EXTS: Final = frozenset(f".{ext}" for ext in RESULT_EXTENSIONS.values())


@dataclass(frozen=True, slots=True)
class Rules:
    """Include/exclude patterns compiled once into case-insensitive regexes (the scan's hot path)."""

    include: re.Pattern[str]
    exclude: re.Pattern[str]
    ignored_names: re.Pattern[str]
    ignored_dirs: re.Pattern[str]
    # The names results are written for: the include patterns and the image/PDF defaults.
    originals: re.Pattern[str]

    def is_ignored_dir(self, name: str) -> bool:
        return bool(self.ignored_dirs.match(name) or self.exclude.match(name))

    def accepts(self, name: str, rel: str) -> bool:
        """By name and root-relative path alone; the folders above are checked by the caller."""
        if (
            self.ignored_names.match(name)
            or self.exclude.match(name)
            or self.exclude.match(rel)
        ):
            return False
        return bool(self.include.match(name) or self.include.match(rel))

    def is_result(self, name: str, siblings: Container[str]) -> bool:
        """Is `name` a result ocrwatch writes for an original among `siblings` (its folder)?

        A name like `a.png.png.png` is a result only if its `<X>` is a real original, itself
        no result: `a.png.png` beside `a.png` does not make a third file a result of it.
        """
        return any(
            origin in siblings
            and not self.ignored_names.match(origin)
            and bool(self.originals.match(origin))
            and not self.is_result(origin, siblings)
            for origin in result_origins(name)
        )


def is_written_result(look: tuple[int, int], written: tuple[int, int] | None) -> bool:
    """Is a file that looks like `look` (size, mtime_ns) a result ocrwatch wrote, as the
    journal recorded it (`written`)? Its name cannot say once its original is gone (a user
    keeps `scan.png.pdf` and deletes `scan.png`); a result a user has since changed is theirs."""
    return written is not None and written == look


def result_origins(name: str) -> list[str]:
    """The originals `name` would be a result of, by name alone: `a.png.ocr.pdf` -> `a.png`
    (and `a.png.ocr`, which is no image name); `a.pdf` -> `a`."""
    stem, dot, ext = name.rpartition(".")
    if not stem or f"{dot}{ext}".lower() not in RESULT_EXTS:
        return []
    origins = [stem]
    if stem.lower().endswith(RESULT_INFIX) and len(stem) > len(RESULT_INFIX):
        origins.append(stem[: -len(RESULT_INFIX)])
    return origins


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    parts = [fnmatch.translate(p) for p in patterns]
    return re.compile("|".join(parts) if parts else "(?!)", re.IGNORECASE | re.DOTALL)


@functools.lru_cache(maxsize=64)
def rules_for(include: tuple[str, ...], exclude: tuple[str, ...]) -> Rules:
    return Rules(
        _compile(include),
        _compile(exclude),
        _compile(IGNORED_NAMES),
        _compile(IGNORED_DIRS),
        _compile((*include, *DEFAULT_INCLUDE)),
    )


def is_result_file(path: Path, include: Sequence[str]) -> bool:
    """Is the file at `path` one of ocrwatch's result files (its original is beside it)?"""
    rules = rules_for(tuple(include), ())
    origins = result_origins(path.name)
    if not origins:
        return False  # the common case, with no look at the disk
    return rules.is_result(path.name, _Beside(path.parent))


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


class _Beside:
    """The names in a folder, looked up one by one (lstat) instead of listed."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def __contains__(self, name: object) -> bool:
        """A folder of that name is no original: `2026.pdf` beside `2026/` is a scan."""
        if not isinstance(name, str):
            return False
        try:
            return not stat.S_ISDIR(os.lstat(self._folder / name).st_mode)
        except OSError:
            return False


def is_ignored_dir(name: str, exclude: Sequence[str]) -> bool:
    return rules_for((), tuple(exclude)).is_ignored_dir(name)


def is_candidate(
    relpath: PurePath, include: Sequence[str], exclude: Sequence[str]
) -> bool:
    """Should the file at `relpath` (relative to its watched root) be submitted, by name alone?"""
    if not relpath.parts or relpath.is_absolute() or ".." in relpath.parts:
        return False
    rules = rules_for(tuple(include), tuple(exclude))
    *dirs, name = relpath.parts
    if any(rules.is_ignored_dir(d) for d in dirs):
        return False
    return rules.accepts(name, relpath.as_posix())


def is_within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def deepest_root(path: Path, roots: Iterable[Path]) -> Path | None:
    """The watched root that holds `path` (itself included), the innermost if roots nest."""
    holding = [root for root in roots if path == root or root in path.parents]
    return max(holding, key=lambda root: len(root.parts), default=None)


def candidate_stat(path: Path, roots: Iterable[Path]) -> os.stat_result | None:
    """How a candidate looks, for settling; None only if nothing is there.

    A regular file, or a link to one inside a watched root, is looked at through the link.
    Anything else (a FIFO, a device, a folder named like an image, a dangling link, a link
    loop, a link out of the watched folders) is looked at as it is: it settles like a file
    and gets an `.error` that says what it is, instead of being passed over in silence.
    """
    try:
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISLNK(st.st_mode):
        return st
    try:
        target = path.resolve(strict=True)
        if is_within(target, [r.resolve() for r in roots]):
            return target.stat()
    except (OSError, RuntimeError):
        pass
    return st


@dataclass(frozen=True, slots=True)
class Found:
    """A candidate seen by the walk, with its sidecar's mtime if it has one.

    The path is kept as a string: building 100k Path objects was most of a catch-up scan's time.
    """

    path: str
    size: int
    mtime_ns: int
    sidecar_mtime_ns: int | None


def walk_given(
    directory: Path, folder: FolderConfig | None, root: Path
) -> Iterator[list[Found]]:
    """A folder given on the command line (`submit`, `fetch`): walked by the rules of the
    watched folder it lies in, or by the defaults if it lies in none."""
    return walk_candidates(
        directory,
        recursive=folder.recursive if folder else True,
        include=folder.include if folder else DEFAULT_INCLUDE,
        exclude=folder.exclude if folder else DEFAULT_EXCLUDE,
        roots=[root],
    )


def walk_candidates(
    root: Path,
    *,
    recursive: bool,
    include: Sequence[str],
    exclude: Sequence[str],
    roots: Sequence[Path],
    on_error: Callable[[str, OSError], None] = lambda folder, exc: None,
) -> Iterator[list[Found]]:
    """Yield the candidates of each folder under `root`, one list per folder, with os.scandir.

    A folder that cannot be read is passed to `on_error` and skipped: the next scan tries again.
    """
    rules = rules_for(tuple(include), tuple(exclude))
    prefix = len(str(root).rstrip("/")) + 1
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except FileNotFoundError:
            continue  # it went away meanwhile
        except OSError as exc:
            on_error(directory, exc)
            continue
        names = {e.name: e for e in entries}
        files = {
            name for name, e in names.items() if not _is_dir(e)
        }  # no folder is an original
        found: list[Found] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir and recursive and not rules.is_ignored_dir(entry.name):
                pending.append(entry.path)
            if not rules.accepts(entry.name, entry.path[prefix:]) or rules.is_result(
                entry.name, files
            ):
                continue
            st = (
                candidate_stat(Path(entry.path), roots)
                if entry.is_symlink()
                else _entry_stat(entry)
            )
            if st is None:
                continue
            found.append(
                Found(
                    entry.path,
                    st.st_size,
                    st.st_mtime_ns,
                    _sidecar_mtime(names, entry.name),
                )
            )
        if found:
            yield found


def _entry_stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=False)
    except OSError:
        return None


def _sidecar_mtime(names: dict[str, os.DirEntry[str]], name: str) -> int | None:
    for suffix in SIDECAR_SUFFIXES:
        entry = names.get(name + suffix)
        if entry is not None:
            try:
                return entry.stat(follow_symlinks=False).st_mtime_ns
            except OSError:
                continue
    return None
