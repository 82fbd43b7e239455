"""Result files next to the original: which `results[]` entry goes to which name, then the write.

`Text` -> `<name>.txt`, `Pdf` -> `<name>.pdf`, `Hocr` -> `<name>.hocr`, `JSON` -> `<name>.json`,
`ImagePNG` -> `<name>.png`; `<name>.ocr.<ext>` where a user's file has the first name. A user's
file is never replaced. Whether an existing file is ours is the caller's word (the journal records
what was written), passed in, so the decision stays a pure function of names and states.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ocrwatch.errors import SidecarError
from ocrwatch.sidecar import RESULT_EXTENSIONS, RESULT_INFIX, write_atomic


class Existing(Enum):
    """What is at a result's name now."""

    ABSENT = "absent"
    OURS = "ours"  # a result ocrwatch wrote: replaced by a newer one
    FOREIGN = "foreign"  # a user's file (or a link, or a folder): never touched


@dataclass(frozen=True, slots=True)
class Planned:
    """A result file to write; `replace`: the name holds an older result of ours."""

    kind: str
    path: Path
    data: bytes
    replace: bool


@dataclass(frozen=True, slots=True)
class Skipped:
    """A result not written, and why (for the log; the other results are still written)."""

    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class Written:
    files: tuple[Path, ...]
    skipped: tuple[Skipped, ...]


def result_names(original: Path, kind: str) -> tuple[Path, Path] | None:
    """The first and the second name for a result of `kind`, or None for a type with no file."""
    ext = RESULT_EXTENSIONS.get(kind)
    if ext is None:
        return None
    name = original.name
    return (
        original.with_name(f"{name}.{ext}"),
        original.with_name(f"{name}{RESULT_INFIX}.{ext}"),
    )


def has_results(original: Path, mtime_ns: int) -> bool:
    """Is a result of any type beside the file, no older than it (written for this content)?"""
    for ext in RESULT_EXTENSIONS.values():
        for name in (f"{original.name}.{ext}", f"{original.name}{RESULT_INFIX}.{ext}"):
            try:
                if original.with_name(name).lstat().st_mtime_ns >= mtime_ns:
                    return True
            except OSError:
                continue
    return False


def file_bytes(kind: str, data: bytes) -> bytes:
    """What goes in the file: text as UTF-8 with a trailing newline, anything else as sent."""
    if kind != "Text":
        return data
    text = data.decode("utf-8", errors="replace")
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


def choose(
    names: tuple[Path, Path], state: Callable[[Path], Existing]
) -> tuple[Path, bool] | None:
    """The name to write and whether it replaces a result of ours; None if users hold both.

    A name that already holds our result wins, so that a result stays where it was written
    first (a user file that was in the way and has gone does not leave two results).
    """
    states = [(path, state(path)) for path in names]
    for wanted in (Existing.OURS, Existing.ABSENT):
        for path, found in states:
            if found is wanted:
                return path, found is Existing.OURS
    return None


def plan(
    original: Path,
    entries: Iterable[tuple[str, bytes]],
    state: Callable[[Path], Existing],
) -> list[Planned | Skipped]:
    """One decision per `results[]` entry, in the service's order."""
    decided: list[Planned | Skipped] = []
    seen: set[str] = set()
    for kind, data in entries:
        names = result_names(original, kind)
        if names is None:
            decided.append(
                Skipped(kind, f"no file is written for results of type {kind!r}")
            )
        elif kind in seen:
            decided.append(Skipped(kind, f"a second {kind} result; the first was kept"))
        elif (chosen := choose(names, state)) is None:
            decided.append(
                Skipped(
                    kind,
                    f"{names[0].name} and {names[1].name} both exist and are not "
                    "ocrwatch's; move one away to get this result",
                )
            )
        else:
            decided.append(Planned(kind, chosen[0], file_bytes(kind, data), chosen[1]))
        seen.add(kind)
    return decided


def existing(path: Path, is_ours: Callable[[Path], bool]) -> Existing:
    """Look at one name: only a regular file can be ours, and `is_ours` says whether it is."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return Existing.ABSENT
    except OSError:
        return Existing.FOREIGN  # what cannot be looked at is not ours to replace
    if stat.S_ISREG(st.st_mode) and is_ours(path):
        return Existing.OURS
    return Existing.FOREIGN


def write_results(
    original: Path,
    entries: Iterable[tuple[str, bytes]],
    is_ours: Callable[[Path], bool],
    *,
    staging: Path | None = None,
) -> Written:
    """Write every result atomically next to `original`.

    A user's file that takes a name between the decision and the write is left alone: that
    result is decided once more with the name taken. Raises SidecarError if the folder refuses.
    """
    taken: set[Path] = set()

    def state(path: Path) -> Existing:
        return Existing.FOREIGN if path in taken else existing(path, is_ours)

    files: list[Path] = []
    skipped: list[Skipped] = []
    for decision in plan(original, entries, state):
        while isinstance(decision, Planned):
            if write_atomic(
                decision.path,
                decision.data,
                replace=decision.replace,
                staging=staging,
                like=original,
            ):
                files.append(decision.path)
                break
            taken.add(decision.path)
            decision = plan(original, [(decision.kind, decision.data)], state)[0]
        if isinstance(decision, Skipped):
            skipped.append(decision)
    return Written(tuple(files), tuple(skipped))


def written_signature(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime_ns) of a file just written: what a journal keeps to know it later
    as ours (a user's file put in its place has another inode or mtime)."""
    try:
        st = path.lstat()
    except OSError as exc:
        raise SidecarError(f"cannot look at {path}: {exc.strerror}") from None
    return st.st_ino, st.st_size, st.st_mtime_ns
