"""Is an image file whole? Each format's own structure is walked to its end marker.

A scanner that pauses in the middle of a page leaves a prefix that can stay quiet for longer than
any settle time, and uploading it bills half an image. So PNG chunks are walked to IEND, JPEG
segments (and entropy-coded data) to EOI, TIFF directories and the strips or tiles they point to
are checked against the file's size, and so are a BMP's declared size and a GIF's blocks; a PDF is
whole once it ends with `%%EOF` (PDF white space after it allowed). No strict prefix of a
well-formed image passes (for a PDF: none cut before its last `%%EOF`). Only running out of bytes counts: a format not recognised
here, or a structure damaged in some other way, passes, and the service says what it makes of it.

Pure: the caller passes `read(offset, length)`, so tests pass bytes and the job loop a file.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

Read = Callable[[int, int], bytes]

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
SCAN_CHUNK: Final = 1 << 20
GIF_MAX_BYTES: Final = 16 << 20  # walked in memory; scanners rarely write big GIFs
TIFF_MAX_IFDS: Final = 4096
TIFF_TYPE_SIZES: Final = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
}
PDF_TAIL: Final = 1024
TIFF_DATA_TAGS: Final = (
    (273, 279),
    (324, 325),
)  # (offsets, byte counts): strips, tiles


class _TruncatedError(Exception):
    """A structure the file announces runs past its end."""


def why_incomplete(read: Read, size: int) -> str | None:
    """None if the image is whole (or not a format checked here), else why it is not."""
    if size == 0:
        return "the file is empty so far"
    head = read(0, 8)
    if any(len(head) < len(m) and m.startswith(head) for m, _ in MAGICS):
        return f"truncated image: only {size} bytes"
    kind, check = next(
        ((k, c) for m, (k, c) in MAGICS if head.startswith(m)), ("", None)
    )
    if check is None:
        return None

    def exact(offset: int, length: int) -> bytes:
        data = read(offset, length)
        if len(data) < length:
            raise _TruncatedError
        return data

    try:
        return check(exact, size)
    except _TruncatedError:
        return f"truncated {kind}: it ends at byte {size}"


def _png(read: Read, size: int) -> str | None:
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= size:
        length, kind = struct.unpack(">I4s", read(pos, 8))
        end = pos + 12 + length  # length, type, data, CRC
        if kind == b"IEND" and end <= size:
            return None
        pos = end
    return f"truncated PNG: no IEND chunk after {size} bytes"


def _jpeg(read: Read, size: int) -> str | None:
    missing = f"truncated JPEG: no end marker after {size} bytes"
    pos = 2
    while pos + 2 <= size:
        if read(pos, 1) != b"\xff":
            return None  # damaged, not short: the service decides
        marker = read(pos + 1, 1)[0]
        if marker == 0xD9:  # EOI
            return None
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn, TEM: no length
            pos += 2
            continue
        if pos + 4 > size:
            return missing
        (length,) = struct.unpack(">H", read(pos + 2, 2))
        pos += 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data runs to the next real marker
            found = _next_marker(read, size, pos)
            if found is None:
                return missing
            pos = found
    return missing


def _next_marker(read: Read, size: int, pos: int) -> int | None:
    """The offset of the next marker after entropy-coded data (0xFF00 and RSTn are data)."""
    while pos < size:
        chunk = read(pos, min(SCAN_CHUNK, size - pos))
        at = chunk.find(b"\xff")
        while at != -1:
            if pos + at + 1 >= size:
                return None
            following = (
                chunk[at + 1] if at + 1 < len(chunk) else read(pos + at + 1, 1)[0]
            )
            if (
                following != 0x00
                and not 0xD0 <= following <= 0xD7
                and following != 0xFF
            ):
                return pos + at
            at = chunk.find(b"\xff", at + 1)
        pos += len(chunk)
    return None


def _tiff(read: Read, size: int) -> str | None:
    order = "<" if read(0, 2) == b"II" else ">"
    (offset,) = struct.unpack(order + "I", read(4, 4))
    seen: set[int] = set()
    while offset:
        if offset in seen or len(seen) >= TIFF_MAX_IFDS:
            return None  # directories in a loop: damaged, not short
        seen.add(offset)
        if offset + 2 > size:
            # A later page too: a multi-page TIFF being written must not be judged (and
            # rejected for its page count) on the pages it has so far.
            return f"truncated TIFF: its directory at byte {offset} is past the end ({size} bytes)"
        (count,) = struct.unpack(order + "H", read(offset, 2))
        end = offset + 2 + 12 * count + 4
        if end > size:
            return f"truncated TIFF: its directory ends past the end ({end} > {size} bytes)"
        entries = read(offset + 2, 12 * count)
        values: dict[int, list[int]] = {}
        for i in range(count):
            tag, kind, n, raw = struct.unpack(
                order + "HHI4s", entries[12 * i : 12 * i + 12]
            )
            width = TIFF_TYPE_SIZES.get(kind, 1) * n
            if width > 4:
                (at,) = struct.unpack(order + "I", raw)
                if at + width > size:
                    return f"truncated TIFF: tag {tag} points past the end ({at + width} > {size} bytes)"
            if kind in (3, 4) and any(tag in pair for pair in TIFF_DATA_TAGS):
                data = (
                    raw
                    if width <= 4
                    else read(struct.unpack(order + "I", raw)[0], width)
                )
                fmt = order + ("H" if kind == 3 else "I") * n
                values[tag] = list(struct.unpack(fmt, data[:width]))
        for offsets_tag, counts_tag in TIFF_DATA_TAGS:
            for at, length in zip(
                values.get(offsets_tag, []), values.get(counts_tag, []), strict=False
            ):
                if at + length > size:
                    return f"truncated TIFF: image data ends past the end ({at + length} > {size} bytes)"
        (offset,) = struct.unpack(order + "I", read(end - 4, 4))
    return None


def tiff_pages(read: Read, size: int) -> int:
    """How many pages (image directories) a TIFF chains together, as it announces them: a
    directory pointed at past the end counts; a loop ends the count."""
    head = read(0, 8)
    if len(head) < 8:
        return 0
    order = "<" if head[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", head[4:8])
    seen: set[int] = set()
    while offset and offset not in seen and len(seen) < TIFF_MAX_IFDS:
        seen.add(offset)
        raw = read(offset, 2)
        if len(raw) < 2:
            break  # announced, so counted, though it is not (yet) in the file
        (count,) = struct.unpack(order + "H", raw)
        raw = read(offset + 2 + 12 * count, 4)
        if len(raw) < 4:
            break
        (offset,) = struct.unpack(order + "I", raw)
    return len(seen)


def _pdf(read: Read, size: int) -> str | None:
    # Readers accept a %%EOF anywhere in the last KiB (some producers append a few bytes of
    # junk after it); a PDF still being written has none there yet.
    start = max(0, size - PDF_TAIL)
    if b"%%EOF" in read(start, size - start):
        return None
    return f"truncated PDF: no %%EOF in its last {PDF_TAIL} bytes after {size} bytes"


def _bmp(read: Read, size: int) -> str | None:
    header = read(0, 14)
    if len(header) < 14:
        return f"truncated BMP: {size} bytes, not even a header"
    declared, _, data_at = struct.unpack("<IIi", header[2:14])
    if declared > size or data_at > size:
        return f"truncated BMP: {size} of {max(declared, data_at)} bytes"
    return None


def _gif(read: Read, size: int) -> str | None:
    if size > GIF_MAX_BYTES:
        return None
    data = read(0, size)
    missing = f"truncated GIF: no trailer after {size} bytes"
    pos = 13
    if len(data) < pos:
        return missing
    if data[10] & 0x80:  # global colour table
        pos += 3 << ((data[10] & 0x07) + 1)
    while pos < size:
        block = data[pos]
        if block == 0x3B:  # trailer
            return None
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif (
            block == 0x2C
        ):  # image: descriptor, local colour table, LZW size, sub-blocks
            if pos + 10 > size:
                return missing
            flags = data[pos + 9]
            pos += 10 + ((3 << ((flags & 0x07) + 1)) if flags & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)
        else:
            return None  # damaged, not short: the service decides
    return missing


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos]:
        pos += 1 + data[pos]
    return pos + 1


MAGICS: Final[
    tuple[tuple[bytes, tuple[str, Callable[[Read, int], str | None]]], ...]
] = (
    (PNG_SIGNATURE, ("PNG", _png)),
    (b"\xff\xd8", ("JPEG", _jpeg)),
    (b"II*\x00", ("TIFF", _tiff)),
    (b"MM\x00*", ("TIFF", _tiff)),
    (b"BM", ("BMP", _bmp)),
    (b"GIF87a", ("GIF", _gif)),
    (b"GIF89a", ("GIF", _gif)),
    (b"%PDF-", ("PDF", _pdf)),
)
