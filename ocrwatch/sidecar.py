"""Sidecar files next to the originals: `<name>.guid` on success, `<name>.error` on rejection.

Written atomically: a temporary file in the original's folder, fsync, rename, fsync the folder.
Accepted risk: on SMB/NFS shares rename atomicity and directory fsync are up to the server.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Final

from ocrwatch.errors import SidecarError

TMP_PREFIX: Final = ".ocrwatch-tmp-"


class Kind(StrEnum):
    GUID = ".guid"
    ERROR = ".error"


SIDECAR_SUFFIXES: Final = tuple(k.value for k in Kind)


def sidecar_path(original: Path, kind: Kind) -> Path:
    return original.with_name(original.name + kind.value)


def is_sidecar_name(name: str) -> bool:
    return name.endswith(SIDECAR_SUFFIXES) or name.startswith(TMP_PREFIX)


def has_current_sidecar(original_mtime_ns: int, sidecar_mtime_ns: int | None) -> bool:
    """Without a journal record, a sidecar describes the file if it is not older than the file."""
    return sidecar_mtime_ns is not None and sidecar_mtime_ns >= original_mtime_ns


def existing_sidecar(original: Path) -> tuple[Kind, int] | None:
    """The sidecar this file has, and its mtime; a .guid wins over a stale .error."""
    for kind in (Kind.GUID, Kind.ERROR):
        try:
            return kind, sidecar_path(original, kind).stat().st_mtime_ns
        except OSError:
            continue
    return None


def write_sidecar(original: Path, kind: Kind, text: str) -> Path:
    """Write `text` and a newline atomically, and remove the other kind if present."""
    target = sidecar_path(original, kind)
    tmp = target.with_name(f"{TMP_PREFIX}{secrets.token_hex(6)}-{target.name}")
    data = (" ".join(text.split()) + "\n").encode("utf-8")
    try:
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
            0o644,
        )
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _publish(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise SidecarError(f"cannot write {target}: {exc.strerror}") from None
    other = Kind.ERROR if kind is Kind.GUID else Kind.GUID
    with contextlib.suppress(FileNotFoundError):
        sidecar_path(original, other).unlink()
    return target


def _publish(tmp: Path, target: Path) -> None:
    """Make the complete temporary file appear under its final name in one step.

    A new sidecar is hard-linked into place and the temporary name removed: to an inotify
    watcher that is a create, whereas a rename is a moved-from that watchdog holds back up to
    0.5 s waiting for its moved-to, delaying every event queued behind it. Replacing an existing
    sidecar, or a share without hard links, falls back to rename. Either way readers see no
    sidecar or a complete one.
    """
    try:
        os.link(tmp, target)
    except OSError:
        tmp.replace(target)
    else:
        tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network filesystems refuse fsync on a directory; the rename already happened
    finally:
        os.close(fd)
