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
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ocrwatch.completeness import why_incomplete
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


def inspect(path: Path, *, want_sha256: bool) -> Inspection:
    """Open the file once: is it whole, and (if wanted) what is its sha256?

    A file that cannot be read here (a FIFO, a folder, no permission) passes: the client gives
    it its `.error` with the reason.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return Inspection(None, None)
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
    finally:
        os.close(fd)


def content_key(settings: Settings, trial: bool) -> str:
    """What the same content must also share to reuse a GUID: the settings and the endpoint."""
    wire = json.dumps({"trial": trial, "settings": settings.to_wire()}, sort_keys=True)
    return hashlib.sha256(wire.encode()).hexdigest()[:32]
