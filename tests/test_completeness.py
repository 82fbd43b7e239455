"""The completeness check: a whole image passes, no strict prefix of one does (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocrwatch.completeness import tiff_pages, why_incomplete

from .images import (
    bmp_bytes,
    gif_bytes,
    jpeg_bytes,
    multipage_tiff_bytes,
    pdf_bytes,
    png_bytes,
    tiff_bytes,
)


def check(data: bytes) -> str | None:
    return why_incomplete(lambda offset, n: data[offset : offset + n], len(data))


pngs = st.builds(
    png_bytes,
    st.integers(0, 2**16),
    st.integers(1, 40),
    st.integers(1, 40),
)
jpegs = st.builds(
    jpeg_bytes, st.binary(min_size=1, max_size=400), thumbnail=st.booleans()
)
tiffs = st.builds(
    tiff_bytes,
    st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=5),
    big_endian=st.booleans(),
)
gifs = st.builds(
    gif_bytes, st.lists(st.binary(min_size=1, max_size=600), min_size=1, max_size=3)
)
bmps = st.builds(bmp_bytes, st.binary(min_size=1, max_size=200))
multipage_tiffs = st.builds(
    multipage_tiff_bytes, st.integers(1, 6), big_endian=st.booleans()
)
images = st.one_of(pngs, jpegs, tiffs, gifs, bmps, multipage_tiffs)
pdfs = st.builds(
    pdf_bytes, st.text(alphabet="abc xyz", max_size=40), st.integers(0, 999)
)


@given(images)
def test_a_whole_image_is_complete(data):
    """Every well-formed image passes."""
    assert check(data) is None


@given(images, st.data())
def test_no_strict_prefix_of_an_image_is_complete(data, draw):
    """However the writer paused, a prefix is never taken for the whole file."""
    cut = draw.draw(st.integers(0, len(data) - 1), label="cut")

    assert check(data[:cut]) is not None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(
            png_bytes(1, 64, 64)[:426],
            "truncated PNG: no IEND chunk after 426 bytes",
            id="png",
        ),
        pytest.param(
            jpeg_bytes()[:-2], "truncated JPEG: no end marker after", id="jpeg"
        ),
        pytest.param(
            tiff_bytes([b"x" * 10, b"y" * 10])[:-4],
            "truncated TIFF: its directory ends past the end",
            id="tiff",
        ),
        pytest.param(bmp_bytes(b"z" * 30)[:-1], "truncated BMP:", id="bmp"),
        pytest.param(
            gif_bytes([b"a" * 300])[:-1], "truncated GIF: no trailer", id="gif"
        ),
    ],
)
def test_the_reason_names_the_format_and_what_is_missing(data, reason):
    """The reason goes into an `.error` sidecar after incomplete_timeout: it says what is wrong."""
    assert (check(data) or "").startswith(reason)


def test_a_jpeg_thumbnail_end_marker_is_not_the_end_of_the_file():
    """The EOI of an embedded thumbnail (in APP1) comes early; the walk skips it by length."""
    data = jpeg_bytes(b"\x00" * 50, thumbnail=True)
    thumbnail_end = data.index(b"\xff\xd9") + 2

    assert check(data[:thumbnail_end]) is not None


@pytest.mark.parametrize(
    "data",
    [b"plain text", b"\xff\xd8\xff\xe0\x00\x04\x00\x00" + b"garbage"],
    ids=["text", "damaged-jpeg"],
)
def test_damaged_or_unknown_content_is_left_to_the_service(data):
    """Only running out of bytes counts as incomplete; anything else goes ahead."""
    assert check(data) is None


def test_a_tiff_whose_directories_loop_is_left_to_the_service():
    """A directory chain that points back at itself is damage, not a file still being written."""
    import struct

    data = bytearray(tiff_bytes([b"x" * 10]))
    ifd_at = struct.unpack("<I", data[4:8])[0]
    data[-4:] = struct.pack("<I", ifd_at)  # "next directory": this one again

    assert check(bytes(data)) is None


def test_an_empty_file_is_waited_for():
    """A scanner may create the file before it writes anything."""
    assert "the file is empty so far" == check(b"")


@given(pdfs)
def test_a_whole_pdf_is_complete(data):
    """A PDF that ends with %%EOF passes, with or without PDF white space after it."""
    assert (None, None) == (check(data), check(data + b"\r\n \x00\n"))


@given(pdfs, st.data())
def test_no_pdf_cut_before_its_last_eof_marker_is_complete(data, draw):
    """A PDF still being written (cut anywhere before its final %%EOF) waits."""
    cut = draw.draw(st.integers(0, data.rindex(b"%%EOF") + 4), label="cut")

    assert check(data[:cut]) is not None


def test_a_pdf_with_junk_after_its_eof_marker_is_complete():
    """Some producers append bytes after %%EOF; readers take it, and so does ocrwatch."""
    assert check(pdf_bytes() + b"\n<junk appended by a scanner>\n") is None


def test_a_truncated_pdf_says_so():
    """The reason for an `.error` after incomplete_timeout names the missing %%EOF."""
    data = pdf_bytes()[:200]

    assert "truncated PDF: no %%EOF in its last 1024 bytes after 200 bytes" == check(
        data
    )


@pytest.mark.parametrize(
    ("pages", "big_endian"),
    [(1, False), (3, False), (3, True), (12, False)],
    ids=["one", "three", "three-big-endian", "twelve"],
)
def test_tiff_pages_counts_the_directories(pages, big_endian):
    """tiff_pages follows the chain of image directories, in either byte order."""
    data = multipage_tiff_bytes(pages, big_endian=big_endian)

    assert pages == tiff_pages(lambda o, n: data[o : o + n], len(data))


def test_a_multipage_tiff_cut_before_its_last_page_waits():
    """A later page pointed at past the end is a TIFF still being written, not a single page:
    it waits, and tiff_pages still counts the page it announces."""
    data = multipage_tiff_bytes(3)
    last_ifd = len(data) - (2 + 12 * 4 + 4)
    cut = data[: last_ifd - 64]  # the third page's strip and directory are missing

    assert "truncated TIFF: its directory at byte" in (check(cut) or "")
    assert 3 == tiff_pages(lambda o, n: cut[o : o + n], len(cut))
