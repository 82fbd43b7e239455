"""Which paths are candidates: include/exclude, built-in junk, symlinks, and the catch-up walk."""

from __future__ import annotations

from pathlib import Path, PurePath

import pytest

from ocrwatch.config import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from ocrwatch.selection import (
    candidate_stat,
    is_candidate,
    is_result_file,
    is_written_result,
    walk_candidates,
)

from .images import write_png


@pytest.mark.parametrize(
    ("relpath", "expected"),
    [
        ("scan.png", True),
        ("SCAN.JPG", True),
        ("a/b/c/scan.tiff", True),
        ("notes.txt", False),
        (".hidden.png", False),
        ("._scan.png", False),
        (".DS_Store", False),
        ("Thumbs.db", False),
        ("desktop.ini", False),
        ("scan.png.part", False),
        ("scan.png.crdownload", False),
        ("~$scan.png", False),
        ("scan.png.tmp", False),
        ("scan.png.guid", False),
        ("scan.png.error", False),
        (".ocrwatch.yaml", False),
        ("@eaDir/scan.png/SYNOFILE_THUMB_M.jpg", False),
        ("#recycle/scan.png", False),
        (".stfolder/scan.png", False),
        (".stversions/scan~20260101.png", False),
        (".Trash-1000/files/scan.png", False),
        (".hidden/scan.png", False),
    ],
)
def test_default_rules(relpath, expected):
    """Defaults take image extensions (any case) and skip scanner/NAS junk and our own files."""
    assert expected is is_candidate(PurePath(relpath), DEFAULT_INCLUDE, DEFAULT_EXCLUDE)


def test_patterns_match_relative_paths():
    """Exclude patterns with a slash match the path relative to the watched root."""
    assert not is_candidate(PurePath("archive/2020/a.png"), ["*.png"], ["archive/*"])
    assert is_candidate(PurePath("inbox/a.png"), ["*.png"], ["archive/*"])


def test_a_link_is_followed_only_inside_the_roots(tmp_path):
    """A link to a file inside the watched roots is looked at through the link; one to a file
    outside is looked at as the link itself (it gets an `.error`, never the outside file)."""
    import stat

    root = tmp_path / "root"
    outside = write_png(tmp_path / "outside" / "secret.png")
    inside = write_png(root / "real.png")
    (root / "out.png").symlink_to(outside)
    (root / "in.png").symlink_to(inside)

    out, inn = (
        candidate_stat(root / "out.png", [root]),
        candidate_stat(root / "in.png", [root]),
    )

    assert out is not None
    assert inn is not None
    assert stat.S_ISLNK(out.st_mode)
    assert inside.stat().st_ino == inn.st_ino
    assert candidate_stat(root / "nothing.png", [root]) is None


def walk(root, *, recursive):
    """Every candidate the catch-up walk yields under `root`, with the default rules."""
    return [
        f
        for batch in walk_candidates(
            root,
            recursive=recursive,
            include=DEFAULT_INCLUDE,
            exclude=DEFAULT_EXCLUDE,
            roots=[root],
        )
        for f in batch
    ]


def test_walk_finds_candidates_and_their_sidecars(tmp_path):
    """The walk yields candidates per folder with sidecar mtimes, skipping junk folders and loops."""
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "sub" / "b.png")
    write_png(tmp_path / "@eaDir" / "c.png")
    (tmp_path / "a.png.guid").write_text("x\n")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)

    found = walk(tmp_path, recursive=True)

    by_name = {Path(f.path).name: f.sidecar_mtime_ns is not None for f in found}
    assert {"a.png": True, "b.png": False} == by_name


def test_walk_non_recursive_stays_on_top(tmp_path):
    """recursive: false ignores subfolders."""
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "sub" / "b.png")

    found = walk(tmp_path, recursive=False)

    assert ["a.png"] == [Path(f.path).name for f in found]


@pytest.mark.parametrize(
    ("original", "result"),
    [
        pytest.param("scan.png", "scan.png.txt", id="txt"),
        pytest.param("scan.png", "scan.png.pdf", id="pdf-of-image"),
        pytest.param("scan.pdf", "scan.pdf.pdf", id="pdf-of-pdf"),
        pytest.param("scan.png", "scan.png.ocr.pdf", id="ocr-pdf"),
        pytest.param("scan.png", "scan.png.hocr", id="hocr"),
        pytest.param("scan.png", "scan.png.json", id="json"),
        pytest.param("scan.png", "scan.png.png", id="png-of-png"),
        pytest.param("scan.tif", "scan.tif.ocr.png", id="ocr-png"),
        pytest.param("SCAN.JPG", "SCAN.JPG.PDF", id="any-case"),
    ],
)
def test_result_files_are_never_candidates_whatever_the_patterns(
    tmp_path, original, result
):
    """Beside its original, a result file is passed over by the walk and by the event path,
    even with include: ["*"]."""
    (tmp_path / original).write_bytes(b"x")
    (tmp_path / result).write_bytes(b"%PDF-1.4\n%%EOF\n")

    found = [
        Path(f.path).name
        for batch in walk_candidates(
            tmp_path, recursive=False, include=["*"], exclude=[], roots=[tmp_path]
        )
        for f in batch
    ]

    assert [original] == found
    assert is_result_file(tmp_path / result, ["*"])
    assert not is_result_file(tmp_path / original, ["*"])


@pytest.mark.parametrize(
    ("beside", "name"),
    [
        pytest.param([], "scan.png.pdf", id="original-gone"),
        pytest.param(["notes.txt"], "notes.txt.pdf", id="original-not-an-image"),
        pytest.param(["report.pdf"], "report.pdf.docx.pdf", id="other-stem"),
        pytest.param(["a.png", "a.png.png"], "a.png.png.png", id="result-of-a-result"),
        pytest.param(["scan.png.guid"], "scan.png.guid.pdf", id="sidecar-original"),
    ],
)
def test_a_file_that_only_looks_like_a_result_is_a_candidate(tmp_path, beside, name):
    """Only a file whose `<X>` is an image or PDF beside it (and no result itself) is a
    result: a user's `notes.txt.pdf`, or a PDF whose original is gone, is sent."""
    for other in beside:
        (tmp_path / other).write_bytes(b"x")
    (tmp_path / name).write_bytes(b"%PDF-1.4\n%%EOF\n")

    found = {
        Path(f.path).name
        for batch in walk_candidates(
            tmp_path,
            recursive=False,
            include=DEFAULT_INCLUDE,
            exclude=DEFAULT_EXCLUDE,
            roots=[tmp_path],
        )
        for f in batch
    }

    assert name in found
    assert not is_result_file(tmp_path / name, DEFAULT_INCLUDE)


def test_pdfs_are_candidates_by_default():
    """A scanner's `doc.pdf` is taken with the default include list."""
    assert is_candidate(PurePath("inbox/doc.pdf"), DEFAULT_INCLUDE, DEFAULT_EXCLUDE)
    assert is_candidate(PurePath("DOC.PDF"), DEFAULT_INCLUDE, DEFAULT_EXCLUDE)


def test_a_result_file_event_is_not_tracked_nor_given_to_submit(tmp_path):
    """The watcher's path (Intake.add_event) and `ocrwatch submit` with a shell glob pass a
    result file over, and take its original."""
    from ocrwatch.batch import Summary, expand
    from ocrwatch.config import FolderConfig, parse_config
    from ocrwatch.intake import Intake
    from ocrwatch.journal import Journal

    write_png(tmp_path / "in" / "scan.png")
    (tmp_path / "in" / "scan.png.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    root = tmp_path / "in"
    journal = Journal(tmp_path / "journal.sqlite3")
    intake = Intake(
        journal,
        {root: FolderConfig(path=root, include=("*.png", "*.pdf"))},
        on_queued=lambda: None,
        on_override_edit=lambda path: None,
    )
    config = parse_config(
        {
            "api": {"trial": True},
            "state_dir": str(tmp_path),
            "folders": [{"path": str(root)}],
        },
        "test",
    )

    intake.add_event(root, root / "scan.png.pdf", False, 0.0)
    tracked_after_result = len(intake)
    intake.add_event(root, root / "scan.png", False, 0.0)
    jobs = expand(sorted(root.iterdir()), config, None, Summary())

    assert (0, 1) == (tracked_after_result, len(intake))
    assert ["scan.png"] == [job.path.name for job in jobs]


def test_a_folder_is_no_original_of_a_result_name(tmp_path):
    """`2026.pdf` beside a folder `2026/` is a scan (with include `*`), not a result."""
    from ocrwatch.selection import is_result_file, walk_candidates

    (tmp_path / "2026").mkdir()
    (tmp_path / "2026.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")

    walked = [
        Path(f.path).name
        for batch in walk_candidates(
            tmp_path, recursive=False, include=("*",), exclude=(), roots=[tmp_path]
        )
        for f in batch
        if f.path.endswith(".pdf")
    ]

    assert (False, ["2026.pdf"]) == (
        is_result_file(tmp_path / "2026.pdf", ("*",)),
        walked,
    )


@pytest.mark.parametrize(
    ("look", "written", "ours"),
    [
        pytest.param((56, 78), (56, 78), True, id="as-written"),
        pytest.param((57, 79), (56, 78), False, id="changed-by-a-user"),
        pytest.param((56, 78), None, False, id="never-written"),
    ],
)
def test_a_written_result_is_known_by_the_journal(look, written, ours):
    """A file ocrwatch wrote as a result, unchanged since, is ours without its original."""
    assert ours == is_written_result(look, written)
