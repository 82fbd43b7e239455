"""Small real images for tests: valid PNG, JPEG-, TIFF-, BMP- and GIF-headed files, each unique,
a multi-page TIFF and a small PDF."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def png_bytes(seed: int = 0, width: int = 8, height: int = 8) -> bytes:
    """A valid, unique RGB PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    raw = b"".join(
        b"\x00"
        + b"".join(
            bytes(((x * 31 + y * 17 + seed) % 256, (seed >> 8) % 256, seed % 256))
            for x in range(width)
        )
        for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def write_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(seed))
    return path


HEADERS = {
    "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "tif": b"II*\x00\x08\x00\x00\x00",
    "bmp": b"BM\x36\x00\x00\x00\x00\x00",
    "gif": b"GIF89a\x01\x00\x01\x00",
}


def jpeg_bytes(entropy: bytes = b"\x12\x34", *, thumbnail: bool = True) -> bytes:
    """A structurally valid baseline JPEG: SOI, APP0, an APP1 holding a whole JPEG thumbnail (an
    EOI that is not the end), DQT, SOF0, DHT, SOS, entropy-coded data (0xFF stuffed, a restart
    marker in the middle) and EOI. Not decodable; every marker and length is right."""

    def segment(marker: int, body: bytes) -> bytes:
        return bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body

    stuffed = entropy.replace(b"\xff", b"\xff\x00")
    half = len(stuffed) // 2
    if half and stuffed[half - 1] == 0xFF:
        half += 1  # do not split a stuffed 0xFF00 with the restart marker
    scan = stuffed[:half] + b"\xff\xd0" + stuffed[half:]
    inner = b"\xff\xd8" + segment(0xDB, bytes(65)) + b"\xff\xd9" if thumbnail else b""
    return (
        b"\xff\xd8"
        + segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
        + (segment(0xE1, b"Exif\x00\x00" + inner) if thumbnail else b"")
        + segment(0xDB, bytes(65))
        + segment(0xC0, b"\x08\x00\x08\x00\x08\x01\x01\x11\x00")
        + segment(0xC4, bytes(17) + b"\x00")
        + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
        + scan
        + b"\xff\xd9"
    )


def tiff_bytes(strips: list[bytes], *, big_endian: bool = False) -> bytes:
    """A valid single-page TIFF: header, strip data, then the directory (StripOffsets and
    StripByteCounts out of line when there are several strips), ending the file."""
    order = ">" if big_endian else "<"
    header = (b"MM\x00*" if big_endian else b"II*\x00") + b"\x00\x00\x00\x00"
    data = b"".join(strips)
    offsets, at = [], len(header)
    for strip in strips:
        offsets.append(at)
        at += len(strip)
    n = len(strips)
    arrays = b""
    arrays_at = len(header) + len(data)
    if n > 1:
        offsets_at = arrays_at
        arrays += struct.pack(order + "I" * n, *offsets)
        counts_at = arrays_at + len(arrays)
        arrays += struct.pack(order + "I" * n, *map(len, strips))
    ifd_at = arrays_at + len(arrays)

    def entry(tag: int, kind: int, count: int, value: int) -> bytes:
        if kind == 3 and count == 1:
            return struct.pack(order + "HHIHH", tag, kind, count, value, 0)
        return struct.pack(order + "HHII", tag, kind, count, value)

    entries = [
        entry(256, 3, 1, 8),
        entry(257, 3, 1, 8 * n),
        entry(273, 4, n, offsets_at if n > 1 else offsets[0]),
        entry(279, 4, n, counts_at if n > 1 else len(strips[0])),
    ]
    ifd = struct.pack(order + "H", len(entries)) + b"".join(entries) + b"\x00" * 4
    header = header[:4] + struct.pack(order + "I", ifd_at)
    return header + data + arrays + ifd


def gif_bytes(frames: list[bytes]) -> bytes:
    """A valid GIF89a: a global colour table, a comment extension and one image per frame
    (its LZW data in sub-blocks), then the trailer."""

    def sub_blocks(data: bytes) -> bytes:
        out = b"".join(
            bytes((len(data[i : i + 255]),)) + data[i : i + 255]
            for i in range(0, len(data), 255)
        )
        return out + b"\x00"

    out = b"GIF89a" + struct.pack("<HHBBB", 8, 8, 0x80, 0, 0) + bytes(6)
    out += b"\x21\xfe" + sub_blocks(b"ocrwatch test")
    for frame in frames:
        out += (
            b"\x2c" + struct.pack("<HHHHB", 0, 0, 8, 8, 0) + b"\x02" + sub_blocks(frame)
        )
    return out + b"\x3b"


def bmp_bytes(pixels: bytes) -> bytes:
    """A BMP whose header declares its own size."""
    body = struct.pack("<IiiHHIIiiII", 40, 1, 1, 1, 24, 0, len(pixels), 0, 0, 0, 0)
    size = 14 + len(body) + len(pixels)
    return b"BM" + struct.pack("<IIi", size, 0, 14 + len(body)) + body + pixels


def multipage_tiff_bytes(pages: int, *, big_endian: bool = False) -> bytes:
    """A valid TIFF with `pages` image directories chained one after another, one strip each."""
    order = ">" if big_endian else "<"
    out = bytearray((b"MM\x00*" if big_endian else b"II*\x00") + b"\x00\x00\x00\x00")
    entries = 4
    ifd_size = 2 + 12 * entries + 4
    previous_link = 4  # where the offset of the next directory goes
    for page in range(pages):
        strip = bytes([page % 256]) * 64
        strip_at = len(out)
        out += strip
        ifd_at = len(out)
        struct.pack_into(order + "I", out, previous_link, ifd_at)

        def entry(tag: int, kind: int, value: int) -> bytes:
            if kind == 3:
                return struct.pack(order + "HHIHH", tag, kind, 1, value, 0)
            return struct.pack(order + "HHII", tag, kind, 1, value)

        out += struct.pack(order + "H", entries)
        out += entry(256, 3, 8) + entry(257, 3, 8)
        out += entry(273, 4, strip_at) + entry(279, 4, len(strip))
        previous_link = len(out)
        out += (
            b"\x00\x00\x00\x00"  # no next directory, unless the next page fills it in
        )
        assert len(out) == ifd_at + ifd_size
    return bytes(out)


def pdf_bytes(text: str = "ocrwatch test page", seed: int = 0) -> bytes:
    """A small valid one page PDF (its xref offsets right), unique per `seed`."""
    content = f"BT /F1 12 Tf 72 720 Td ({text} {seed}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Times-Roman >>",
        b"<< /Length "
        + str(len(content)).encode()
        + b" >>\nstream\n"
        + content
        + b"\nendstream",
    ]
    out = b"%PDF-1.7\n"
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def pdf_xref_is_right(data: bytes) -> bool:
    """Every in-use xref entry of a classic (uncompressed) PDF points at its `N 0 obj`."""
    import re

    at = int(re.findall(rb"startxref\s+(\d+)", data)[-1])
    if not data[at:].startswith(b"xref"):
        return False
    lines = data[at:].split(b"\n")
    first, count = map(int, lines[1].split())
    for number, line in enumerate(lines[2 : 2 + count], start=first):
        offset, _, kind = line.split()[:3]
        if kind == b"n" and not data[int(offset) :].startswith(b"%d 0 obj" % number):
            return False
    return True
