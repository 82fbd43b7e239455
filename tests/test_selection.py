"""Which paths are candidates: include/exclude, built-in junk, symlinks, and the catch-up walk."""

from __future__ import annotations

from pathlib import Path, PurePath

import pytest

from ocrwatch.config import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from ocrwatch.selection import candidate_stat, is_candidate, walk_candidates

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
