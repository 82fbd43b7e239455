"""Small real images for tests: valid PNG, JPEG-, TIFF-, BMP- and GIF-headed files, each unique."""

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
