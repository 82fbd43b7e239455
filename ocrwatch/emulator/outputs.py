"""What a finished emulator task returns, one file per result type, each a valid file of its kind.

The text is deterministic per image (its size and sha256), so tests can say exactly what a
`.txt` must hold. The PDF is a real one page PDF 1.4 (header, objects, an xref whose offsets are
right, trailer, `%%EOF`) that shows the text; the hOCR has `ocr_page`, `ocr_line` and `ocrx_word`;
the PNG decodes. The JSON shape is the emulator's own: the spec describes only "content blocks
with their coordinates and recognized text".
"""

from __future__ import annotations

import html
import json
import struct
import textwrap
import zlib
from typing import Final

# A result type -> its parts: the combined values name them ("TextAndPdf" -> Text, Pdf).
PARTS: Final = ("Text", "Pdf", "Hocr", "JSON", "ImagePNG")
PAGE: Final = (595, 842)  # A4 in points
LINE_CHARS: Final = 80


def result_parts(result_type: str) -> list[str]:
    named = result_type.split("And")
    return [part for part in PARTS if part in named]


def recognized_text(image_bytes: int, sha256: str, language: str, trial: bool) -> str:
    text = (
        f"Recognized by the ocrwatch emulator: {image_bytes} bytes, sha256 {sha256}, "
        f"language {language}."
    )
    if trial:  # the service masks about one word in ten in evaluation mode
        words = text.split(" ")
        text = " ".join("*" * len(w) if i % 10 == 3 else w for i, w in enumerate(words))
    return text


def render(part: str, text: str) -> bytes:
    if part == "Text":
        return text.encode()
    if part == "Pdf":
        return pdf_bytes(text)
    if part == "Hocr":
        return hocr_bytes(text)
    if part == "JSON":
        return json_bytes(text)
    return png_bytes()


def _lines(text: str) -> list[str]:
    return textwrap.wrap(text, LINE_CHARS, break_long_words=True) or [""]


def pdf_bytes(text: str) -> bytes:
    """A one page PDF showing `text` in Helvetica."""

    def literal(line: str) -> bytes:
        raw = line.encode("latin-1", "replace")
        return (
            b"("
            + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")
            + b")"
        )

    shown = b" T* ".join(literal(line) + b" Tj" for line in _lines(text))
    content = b"BT /F1 10 Tf 14 TL 36 %d Td " % (PAGE[1] - 48) + shown + b" ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] " % PAGE
        + b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    return out + b"startxref\n%d\n%%%%EOF\n" % xref_at


def hocr_bytes(text: str) -> bytes:
    """hOCR 1.2: one `ocr_page` with a line per 80 characters, a word per word."""
    width, height = PAGE
    lines = []
    for n, line in enumerate(_lines(text), start=1):
        top = 36 + 14 * (n - 1)
        words = " ".join(
            f"<span class='ocrx_word' id='word_1_{n}_{i}'>{html.escape(word)}</span>"
            for i, word in enumerate(line.split(), start=1)
        )
        lines.append(
            f"   <span class='ocr_line' id='line_1_{n}' "
            f"title='bbox 36 {top} {width - 36} {top + 12}'>{words}</span>"
        )
    body = "\n".join(lines)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        " <head>\n  <title></title>\n"
        '  <meta http-equiv="Content-Type" content="text/html;charset=utf-8"/>\n'
        "  <meta name='ocr-system' content='ocrwatch emulator'/>\n"
        "  <meta name='ocr-capabilities' content='ocr_page ocr_line ocrx_word'/>\n"
        " </head>\n <body>\n"
        f"  <div class='ocr_page' id='page_1' title='bbox 0 0 {width} {height}'>\n"
        f"{body}\n  </div>\n </body>\n</html>\n"
    ).encode()


def json_bytes(text: str) -> bytes:
    blocks = [
        {
            "text": line,
            "rect": {"x": 36, "y": 36 + 14 * i, "width": PAGE[0] - 72, "height": 12},
        }
        for i, line in enumerate(_lines(text))
    ]
    return json.dumps({"text": text, "blocks": blocks}).encode()


def png_bytes(width: int = 4, height: int = 4) -> bytes:
    """A small white greyscale PNG (ImagePNG is the preprocessing APIs' output)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    raw = b"".join(b"\x00" + b"\xff" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
