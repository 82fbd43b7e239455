"""PDF scans as input: sent to RecognizePdf, whole only at their %%EOF; and the multi-page TIFF
that RecognizeImage cannot read, refused with its page count."""

from __future__ import annotations

import hashlib
import os

import pytest

from ocrwatch.client import detect_image_type
from ocrwatch.errors import RejectedError
from ocrwatch.preflight import inspect
from ocrwatch.settings import Settings

from .conftest import wait_until, write_config
from .daemon_harness import daemon_thread
from .images import multipage_tiff_bytes, pdf_bytes, png_bytes, tiff_bytes
from .test_client import make_client


def test_a_pdf_goes_to_recognize_pdf_with_the_same_body(emulator, tmp_path):
    """OcrClient.submit sends a PDF to /v5.0/ocr/RecognizePdf, its bytes and settings as for an
    image; an image still goes to RecognizeImage."""
    client = make_client(emulator.url)
    doc = tmp_path / "doc.pdf"
    doc.write_bytes(pdf_bytes(seed=1))
    scan = tmp_path / "scan.png"
    scan.write_bytes(png_bytes(1))

    pdf_sub = client.submit(doc, Settings(language="German"))
    png_sub = client.submit(scan, Settings())

    pdf_received, png_received = emulator.submissions()
    assert ("PDF", "PNG") == (pdf_sub.image_type, png_sub.image_type)
    assert (
        "/v5.0/ocr/RecognizePdf",
        pdf_sub.guid,
        hashlib.sha256(pdf_bytes(seed=1)).hexdigest(),
        "German",
    ) == (
        pdf_received["path"],
        pdf_received["guid"],
        pdf_received["image_sha256"],
        pdf_received["settings"]["language"],
    )
    assert "/v5.0/ocr/RecognizeImage" == png_received["path"]


def test_a_pdfs_result_is_read_from_recognize_pdf(emulator, tmp_path):
    """fetch_result(pdf=True) reads the task at RecognizePdf?id= and gets its text."""
    client = make_client(emulator.url)
    doc = tmp_path / "doc.pdf"
    doc.write_bytes(pdf_bytes(seed=2))
    sub = client.submit(doc, Settings())

    result = client.wait_for_result(sub.guid, sleep=lambda s: None, pdf=True)

    reads = [r["path"] for r in emulator.received if r["method"] == "GET"]
    assert ["/v5.0/ocr/RecognizePdf"] == reads
    assert "Completed" == result.status
    assert sub.sha256 in (result.text or "")


def test_a_pdf_in_trial_mode_is_rejected_before_sending(emulator, tmp_path):
    """There is no trial endpoint for PDFs: a clear rejection, and nothing is sent."""
    client = make_client(emulator.url, trial=True)
    doc = tmp_path / "doc.pdf"
    doc.write_bytes(pdf_bytes())

    with pytest.raises(RejectedError, match="RecognizePdf has no trial endpoint"):
        client.submit(doc, Settings())

    assert [] == emulator.submissions()


@pytest.mark.parametrize("big_endian", [False, True], ids=["II", "MM"])
def test_a_multipage_tiff_is_rejected_naming_its_page_count(
    emulator, tmp_path, big_endian
):
    """RecognizeImage reads single-page TIFF only: a 3-page TIFF gets an `.error` reason that
    says so and what to do, and is not sent."""
    client = make_client(emulator.url)
    scan = tmp_path / "pages.tif"
    scan.write_bytes(multipage_tiff_bytes(3, big_endian=big_endian))

    with pytest.raises(RejectedError) as info:
        client.submit(scan, Settings())

    assert (
        "a TIFF with 3 pages; RecognizeImage reads single-page TIFF only; "
        "split it or convert it to PDF"
    ) == str(info.value)
    assert [] == emulator.submissions()


def test_a_single_page_tiff_is_still_sent(emulator, tmp_path):
    """One image directory is one page: sent as before."""
    client = make_client(emulator.url)
    scan = tmp_path / "page.tif"
    scan.write_bytes(tiff_bytes([b"x" * 32]))

    sub = client.submit(scan, Settings())

    assert "TIFF" == sub.image_type
    assert 1 == len(emulator.submissions())


def test_a_truncated_pdf_on_disk_is_incomplete(tmp_path):
    """The job loop's look at an opened file: a PDF without its %%EOF yet is not whole."""
    whole, cut = tmp_path / "whole.pdf", tmp_path / "cut.pdf"
    whole.write_bytes(pdf_bytes())
    cut.write_bytes(pdf_bytes()[:-12])
    looks = []
    for path in (whole, cut):
        fd = os.open(path, os.O_RDONLY)
        try:
            looks.append(inspect(fd, want_sha256=False).incomplete)
        finally:
            os.close(fd)

    assert looks[0] is None
    assert (looks[1] or "").startswith("truncated PDF: no %%EOF in its last 1024 bytes")


def test_pdf_content_is_recognised_by_its_header():
    """`%PDF-` is the content check, whatever the name."""
    assert ("PDF", None) == (
        detect_image_type(b"%PDF-1.7\n"),
        detect_image_type(b"%PS-"),
    )


def test_a_pdf_dropped_in_gets_its_guid_and_result_pdfs_are_not_sent(
    emulator, tmp_path
):
    """The daemon with default rules: doc.pdf goes to RecognizePdf and gets doc.pdf.guid; a
    result file beside an original (scan.png.pdf, doc.pdf.pdf) is never sent."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
    )
    (inbox / "scan.png").write_bytes(png_bytes(4))
    (inbox / "scan.png.pdf").write_bytes(
        pdf_bytes(seed=40)
    )  # present at the catch-up scan
    with daemon_thread(config):
        (inbox / "doc.pdf").write_bytes(pdf_bytes(seed=41))
        (inbox / "doc.pdf.pdf").write_bytes(pdf_bytes(seed=42))  # seen by the watcher

        wait_until(
            lambda: (
                (inbox / "doc.pdf.guid").exists() and (inbox / "scan.png.guid").exists()
            ),
            20,
            "two sidecars",
        )

    received = {(r["path"], r["image_sha256"]) for r in emulator.submissions()}
    assert {
        ("/v5.0/ocr/RecognizePdf", hashlib.sha256(pdf_bytes(seed=41)).hexdigest()),
        ("/v5.0/ocr/RecognizeImage", hashlib.sha256(png_bytes(4)).hexdigest()),
    } == received
    assert not (inbox / "doc.pdf.pdf.guid").exists()
    assert not (inbox / "scan.png.pdf.guid").exists()
