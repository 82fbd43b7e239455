"""What a claimed file is, looked at right before it would be sent: the reads that keep a scan from
being paid for twice, or half.

Is there a current sidecar already (a copied tree, a file moved with its `.guid`)? Is the image
whole? What is its content, for the dedupe lookup? These functions only read; what follows from
them (a sidecar, a journal state) is decided and recorded by the job loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ocrwatch.client import open_image
from ocrwatch.completeness import why_incomplete
from ocrwatch.errors import RejectedError
from ocrwatch.settings import Settings
from ocrwatch.settle import Look
from ocrwatch.sidecar import (
    Kind,
    existing_sidecar,
    has_current_sidecar,
    read_guid,
    sidecar_path,
)

HASH_CHUNK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Inspection:
    incomplete: str | None  # why the image is not whole yet, if it is not
    sha256: str | None  # of its content, when asked for and it is whole


@dataclass(frozen=True, slots=True)
class Receipt:
    """A sidecar that is current for the file: its GUID, or the reason in its `.error`."""

    kind: Kind
    text: str


def current_receipt(path: Path, look: Look) -> Receipt | None:
    """The file's sidecar if it is current (no older than the file) and well-formed."""
    found = existing_sidecar(path)
    if found is None or not has_current_sidecar(look.mtime_ns, found[1]):
        return None
    if found[0] is Kind.GUID:
        guid = read_guid(path)
        return None if guid is None else Receipt(Kind.GUID, guid)
    try:
        text = sidecar_path(path, Kind.ERROR).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return Receipt(Kind.ERROR, text or "rejected")


LINK_OUT: Final = "not sent: it is a symbolic link that does not lead to a file in the watched folders"


def open_within(path: Path, roots: Iterable[Path]) -> int:
    """Open the file to send, once, and check what was opened: really inside a watched folder
    (`roots` resolved), then a regular file. Whatever a link pointed at when the file settled,
    this descriptor is what is hashed and sent.

    A link that leads out of the watched folders, nowhere, or round in a loop gets one and the
    same reason, which names no target: an `.error` must not tell a user of a shared folder
    what exists elsewhere on the server. Such a link is not even opened (opening some devices
    does something); a link inside is opened at its resolved target, and that (or a path that
    was no link) with O_NOFOLLOW. The descriptor's real path is checked again after the open,
    for a folder swapped for a link in between.

    Raises FileChangedError if it is gone, RejectedError if it can never be sent as it is.
    """
    roots = list(roots)
    opened = path
    if path.is_symlink():
        try:
            opened = path.resolve(strict=True)  # opened itself, never through the link
        except (OSError, RuntimeError):
            raise RejectedError(LINK_OUT) from None
        if not _within(opened, roots):
            raise RejectedError(LINK_OUT)
    try:
        fd = open_image(opened, nofollow=True)
    except RejectedError:
        # It became a link since it was looked at: O_NOFOLLOW refused it.
        if opened.is_symlink():
            raise RejectedError(LINK_OUT) from None
        raise
    try:
        if not _within(Path(f"/proc/self/fd/{fd}").readlink(), roots):
            raise RejectedError(LINK_OUT)
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise RejectedError("not a file: it is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise RejectedError(
                "cannot read the file: it is not a regular file (a FIFO, socket or device)"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _within(real: Path, roots: list[Path]) -> bool:
    return any(real == root or root in real.parents for root in roots)


def inspect(fd: int, *, want_sha256: bool) -> Inspection:
    """Is the opened file whole, and (if wanted) what is its sha256?

    A file that cannot be read here passes: the client says why, in its `.error`.
    """
    try:
        size = os.fstat(fd).st_size
        incomplete = why_incomplete(lambda offset, n: os.pread(fd, n, offset), size)
        if incomplete is not None or not want_sha256:
            return Inspection(incomplete, None)
        digest = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, HASH_CHUNK, offset):
            digest.update(chunk)
            offset += len(chunk)
        return Inspection(None, digest.hexdigest())
    except OSError:
        return Inspection(None, None)


def content_key(settings: Settings, trial: bool) -> str:
    """What the same content must also share to reuse a GUID: the settings and the endpoint."""
    wire = json.dumps({"trial": trial, "settings": settings.to_wire()}, sort_keys=True)
    return hashlib.sha256(wire.encode()).hexdigest()[:32]
