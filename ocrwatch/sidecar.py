"""Files ocrwatch writes next to the originals: `<name>.guid` on success, `<name>.error` on
rejection, and result files (`<name>.txt`, `<name>.pdf`, ... or `<name>.ocr.<ext>`).

Descriptors are close-on-exec, as `os.open` makes every one (PEP 446).
Written atomically: a temporary file, fsync, then made visible under its name in one step (link of
an unnamed O_TMPFILE where the filesystem has it, else rename of a named one in the same folder),
fsync the folder.
Accepted risk: on SMB/NFS shares rename atomicity and directory fsync are up to the server.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Final

from ocrwatch.errors import SidecarError

TMP_PREFIX: Final = ".ocrwatch-tmp-"
GUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


class Kind(StrEnum):
    GUID = ".guid"
    ERROR = ".error"


SIDECAR_SUFFIXES: Final = tuple(k.value for k in Kind)
# A result's type (docs/aspose-api.md §5 `results[].type`) -> the extension of its file.
RESULT_EXTENSIONS: Final = {
    "Text": "txt",
    "Pdf": "pdf",
    "Hocr": "hocr",
    "JSON": "json",
    "ImagePNG": "png",
}
# The infix of a result's second name, taken when a user's file already has the first.
RESULT_INFIX: Final = ".ocr"
# In a rejection's recorded reason when its `.error` could not be written: a missing `.error`
# then says nothing about what the user wants (see `catchup.error_removed`).
NO_ERROR_NOTE: Final = "(no .error: "


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


def write_sidecar(
    original: Path, kind: Kind, text: str, *, staging: Path | None = None
) -> Path:
    """Write `text` and a newline atomically, and remove the other kind if present.

    `staging` is a folder outside the watched trees (the daemon's state_dir) where the unnamed
    file is prepared when it is on the same filesystem: the watched folder then sees only the
    link, one inotify event per sidecar instead of three.
    """
    target = sidecar_path(original, kind)
    # A file name that is not UTF-8 may be quoted in the text: its odd bytes are escaped.
    data = (" ".join(text.split()) + "\n").encode("utf-8", "backslashreplace")
    write_atomic(target, data, staging=staging, like=original)
    other = Kind.ERROR if kind is Kind.GUID else Kind.GUID
    # Best effort: this sidecar is written, and a stale one that cannot be removed (a name one
    # byte too long for `.error`, say) must not turn that into a failure.
    with contextlib.suppress(OSError):
        sidecar_path(original, other).unlink()
    return target


def write_atomic(
    target: Path,
    data: bytes,
    *,
    replace: bool = True,
    staging: Path | None = None,
    like: Path | None = None,
) -> bool:
    """Put `data` in place as `target` in one step; the one writer of files next to originals.

    `replace=False` never replaces a file that exists: False if one took the name meanwhile
    (a user's file appearing between the decision and the write), True once written.
    `like`: the original, whose readers may read this file too, whatever the service's
    umask (0027 under the unit): its read bits for group and others are copied.
    Raises SidecarError if the folder or the disk refuses it.
    """
    try:
        mode = None if like is None else readable_like(like.stat().st_mode)
    except OSError:
        mode = None
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError as exc:
        raise SidecarError(f"cannot write {target}: {exc.strerror}") from None
    try:
        if not _write_anonymous(dir_fd, target, data, staging, mode):
            if not replace and os.path.lexists(target):
                return False
            if not _write_named(target, data, replace=replace, mode=mode):
                return False
        _fsync_dir(dir_fd)
    except OSError as exc:
        raise SidecarError(f"cannot write {target}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    return True


def remove_error(original: Path) -> bool:
    """Remove `<name>.error` (`retry`): True if one was there. Raises SidecarError if it
    stays (a folder the user may not write in)."""
    try:
        sidecar_path(original, Kind.ERROR).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise SidecarError(
            f"cannot remove {sidecar_path(original, Kind.ERROR)}: {exc.strerror}"
        ) from None
    return True


def why_unwritable(original: Path) -> str | None:
    """Why `<name>.guid` could not be written next to `original`, or None if it can.

    Checked before an upload, because the sidecar is the receipt: a task the service accepted
    but ocrwatch cannot record next to the file would be paid for again.
    """
    folder = original.parent
    name = os.fsencode(sidecar_path(original, Kind.GUID).name)
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(name) > limit:
        return (
            f"its sidecar name would be {len(name)} bytes, more than the {limit} this "
            "file system allows; shorten the file name"
        )
    if not os.access(folder, os.W_OK):
        return f"cannot write in {folder}; let the service user write there"
    return None


def read_guid(original: Path) -> str | None:
    """The GUID a current `.guid` holds, or None if it holds none."""
    try:
        text = sidecar_path(original, Kind.GUID).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text.lower() if GUID_RE.fullmatch(text) else None


def readable_like(original_mode: int) -> int:
    """rw for the service, and read for whoever may read the original."""
    return 0o600 | (original_mode & 0o044)


def _write_anonymous(
    dir_fd: int, target: Path, data: bytes, staging: Path | None, mode: int | None
) -> bool:
    """Write an unnamed temporary file (O_TMPFILE), fsync it, then link it in as `target`.

    The file has no name until it is complete, so a crash leaves nothing behind. False where the
    filesystem cannot do this (many network shares) or the sidecar already exists (a link cannot
    replace it).
    """
    tmpfile = getattr(os, "O_TMPFILE", None)
    # No stat for an existing sidecar first: the link then fails with EEXIST.
    if tmpfile is None:
        return False
    places = [target.parent]
    if staging is not None and _same_device(staging, dir_fd):
        places.insert(0, staging)
    for place in places:
        try:
            fd = os.open(place, tmpfile | os.O_WRONLY, 0o644)
        except OSError:
            continue
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            _write_all(fd, data)
            os.fsync(fd)
            # With dst_dir_fd, CPython calls linkat(AT_SYMLINK_FOLLOW), which links the open
            # inode; plain os.link() would try to hard-link the /proc symlink itself (EXDEV).
            os.link(
                f"/proc/self/fd/{fd}",
                target.name,
                dst_dir_fd=dir_fd,
                follow_symlinks=True,
            )
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                continue  # staging is another mount of the same disk: prepare it in place
            if exc.errno in (errno.ENOENT, errno.EPERM, errno.EOPNOTSUPP):
                return False  # no /proc, or no hard links here: use the named way
            raise
        finally:
            os.close(fd)
    return False


def _same_device(folder: Path, dir_fd: int) -> bool:
    try:
        return _device(folder) == os.fstat(dir_fd).st_dev
    except OSError:
        return False


@functools.lru_cache(maxsize=8)
def _device(folder: Path) -> int:
    """Cached: a remount since is caught by the link failing with EXDEV."""
    return folder.stat().st_dev


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (a big PDF, a signal): loop until all is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_named(
    target: Path, data: bytes, *, replace: bool = True, mode: int | None = None
) -> bool:
    """A named temporary file in the same folder, fsync, then rename over the target.

    Without `replace`, it is hard-linked in instead, which fails rather than replace a file
    that took the name meanwhile (False); where links are refused, a last look and a rename.
    """
    # Short, whatever the target's name: a long name must fit once, not twice.
    tmp = target.with_name(f"{TMP_PREFIX}{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace or not _link_no_replace(tmp, target):
            tmp.replace(target)
        else:
            tmp.unlink()
    except FileExistsError:  # only the no-replace link raises it
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return True


def _link_no_replace(tmp: Path, target: Path) -> bool:
    """Link `tmp` in as `target`; False where the filesystem has no hard links (the caller
    renames). Raises FileExistsError if the name is taken."""
    try:
        os.link(tmp, target)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        return False
    return True


def _fsync_dir(dir_fd: int) -> None:
    with contextlib.suppress(OSError):
        # Some network filesystems refuse fsync on a folder; the link or rename already happened.
        os.fsync(dir_fd)
