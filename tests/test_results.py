"""Result files: which name each result gets, that a user's file is never replaced, and that
what the emulator returns lands next to the scan as the README says."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ocrwatch.client import ResultEntry, TaskResult, parse_task_result
from ocrwatch.results import (
    Existing,
    Planned,
    Skipped,
    choose,
    existing,
    file_bytes,
    plan,
    write_results,
    written_signature,
)
from ocrwatch.settings import Settings
from ocrwatch.sidecar import write_atomic

from .images import png_bytes, write_png
from .test_client import make_client

SCAN = Path("/srv/in/scan.png")


def states(**named: Existing):
    """A `state` function from names (`scan_png_txt` for scan.png.txt) to what is there."""
    table = {SCAN.with_name(k.replace("_", ".")): v for k, v in named.items()}
    return lambda path: table.get(path, Existing.ABSENT)


def targets(decisions):
    return [d.path.name if isinstance(d, Planned) else d for d in decisions]


class TestPlan:
    def test_each_type_gets_its_extension(self):
        """Text, Pdf, Hocr, JSON and ImagePNG go to .txt, .pdf, .hocr, .json and .png."""
        entries = [(k, b"x") for k in ("Text", "Pdf", "Hocr", "JSON", "ImagePNG")]

        decided = plan(SCAN, entries, states())

        assert [
            "scan.png.txt",
            "scan.png.pdf",
            "scan.png.hocr",
            "scan.png.json",
            "scan.png.png",
        ] == targets(decided)
        assert not any(d.replace for d in decided if isinstance(d, Planned))

    def test_a_users_file_moves_the_result_to_ocr_name(self):
        """A name held by a user's file gives `<name>.ocr.<ext>`; the other results keep
        their first names."""
        decided = plan(
            SCAN,
            [("Text", b"t"), ("Pdf", b"p")],
            states(scan_png_txt=Existing.FOREIGN),
        )

        assert ["scan.png.ocr.txt", "scan.png.pdf"] == targets(decided)

    def test_our_own_result_is_replaced_in_place(self):
        """A name that holds an earlier result of ours is written again, replacing it."""
        [decided] = plan(SCAN, [("Text", b"t")], states(scan_png_txt=Existing.OURS))

        assert isinstance(decided, Planned)
        assert (SCAN.with_name("scan.png.txt"), True) == (decided.path, decided.replace)

    def test_a_result_stays_where_it_was_first_written(self):
        """Our `.ocr.txt` (written when a user's `.txt` was in the way) is replaced there,
        even after the user's `.txt` has gone: no second copy appears."""
        chosen = choose(
            (SCAN.with_name("scan.png.txt"), SCAN.with_name("scan.png.ocr.txt")),
            states(scan_png_ocr_txt=Existing.OURS),
        )

        assert (SCAN.with_name("scan.png.ocr.txt"), True) == chosen

    def test_both_names_held_by_users_skips_that_result_only(self):
        """With both names taken by users' files, that result is skipped with a reason saying
        so; the others are written."""
        decided = plan(
            SCAN,
            [("Text", b"t"), ("Pdf", b"p")],
            states(scan_png_txt=Existing.FOREIGN, scan_png_ocr_txt=Existing.FOREIGN),
        )

        assert isinstance(decided[0], Skipped)
        assert "scan.png.txt and scan.png.ocr.txt" in decided[0].reason
        assert ["scan.png.pdf"] == targets(decided[1:])

    @pytest.mark.parametrize(
        ("entries", "reason"),
        [
            pytest.param([("Excel", b"x")], "no file is written", id="unknown-type"),
            pytest.param(
                [("Text", b"a"), ("Text", b"b")], "the first was kept", id="twice"
            ),
        ],
    )
    def test_unknown_or_repeated_types_are_skipped(self, entries, reason):
        """A type with no file name, or a second entry of one type, is skipped, not guessed."""
        decided = plan(SCAN, entries, states())

        assert isinstance(decided[-1], Skipped)
        assert reason in decided[-1].reason

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            pytest.param(b"hello", b"hello\n", id="adds-newline"),
            pytest.param(b"hello\n", b"hello\n", id="keeps-one"),
            pytest.param("Grüße".encode(), "Grüße\n".encode(), id="utf-8"),
            pytest.param(
                b"bad \xff byte", "bad \ufffd byte\n".encode(), id="not-utf-8"
            ),
        ],
    )
    def test_text_is_utf8_with_a_trailing_newline(self, data, expected):
        """A .txt is UTF-8 and ends with exactly one newline it did not have."""
        assert expected == file_bytes("Text", data)

    def test_other_types_are_written_as_sent(self):
        """A PDF's bytes are not touched (no newline added)."""
        assert b"%PDF-1.4 ... %%EOF" == file_bytes("Pdf", b"%PDF-1.4 ... %%EOF")


class TestWrite:
    def test_results_are_written_next_to_the_original(self, tmp_path):
        """Each result lands under its name, with its bytes, and nothing else appears."""
        scan = write_png(tmp_path / "scan.png")

        written = write_results(
            scan, [("Text", b"words"), ("Pdf", b"%PDF-x")], lambda p: False
        )

        assert [tmp_path / "scan.png.txt", tmp_path / "scan.png.pdf"] == list(
            written.files
        )
        assert (b"words\n", b"%PDF-x") == (
            (tmp_path / "scan.png.txt").read_bytes(),
            (tmp_path / "scan.png.pdf").read_bytes(),
        )
        assert {"scan.png", "scan.png.txt", "scan.png.pdf"} == {
            p.name for p in tmp_path.iterdir()
        }

    def test_a_users_txt_is_never_overwritten(self, tmp_path):
        """A user's scan.png.txt keeps its content; the text goes to scan.png.ocr.txt."""
        scan = write_png(tmp_path / "scan.png")
        (tmp_path / "scan.png.txt").write_text("my own notes\n")

        write_results(scan, [("Text", b"recognized")], lambda p: False)

        assert "my own notes\n" == (tmp_path / "scan.png.txt").read_text()
        assert "recognized\n" == (tmp_path / "scan.png.ocr.txt").read_text()

    def test_our_earlier_result_is_replaced(self, tmp_path):
        """A file the caller knows as ours is replaced by the new result."""
        scan = write_png(tmp_path / "scan.png")
        ours = tmp_path / "scan.png.txt"
        ours.write_text("old result\n")

        written = write_results(scan, [("Text", b"new result")], lambda p: p == ours)

        assert ((ours,), "new result\n") == (written.files, ours.read_text())

    def test_a_link_at_the_name_is_never_written_through(self, tmp_path):
        """A symbolic link named like a result is a user's: its target is not touched, even
        if the caller would call the name ours."""
        scan = write_png(tmp_path / "scan.png")
        target = tmp_path / "elsewhere.txt"
        target.write_text("keep\n")
        (tmp_path / "scan.png.txt").symlink_to(target)

        write_results(scan, [("Text", b"recognized")], lambda p: True)

        assert "keep\n" == target.read_text()
        assert (tmp_path / "scan.png.txt").is_symlink()
        assert "recognized\n" == (tmp_path / "scan.png.ocr.txt").read_text()

    def test_existing_tells_absent_ours_and_foreign(self, tmp_path):
        """Only a regular file that `is_ours` accepts counts as ours; a folder never does."""
        (tmp_path / "ours.txt").write_text("x")
        (tmp_path / "theirs.txt").write_text("x")
        (tmp_path / "folder.txt").mkdir()

        seen = [
            existing(tmp_path / name, lambda p: p.name != "theirs.txt")
            for name in ("none.txt", "ours.txt", "theirs.txt", "folder.txt")
        ]

        assert [
            Existing.ABSENT,
            Existing.OURS,
            Existing.FOREIGN,
            Existing.FOREIGN,
        ] == seen

    def test_a_written_signature_tells_a_replaced_file(self, tmp_path):
        """The (inode, size, mtime) kept for a result differs once a user puts their own file
        under its name, so the journal can tell ours from theirs."""
        scan = write_png(tmp_path / "scan.png")
        [path] = write_results(scan, [("Text", b"ours")], lambda p: False).files
        kept = written_signature(path)
        (tmp_path / "theirs").write_text("ours\n")

        (tmp_path / "theirs").replace(path)

        assert kept != written_signature(path)


class TestWriteAtomic:
    def test_without_replace_an_existing_file_is_left_alone(self, tmp_path):
        """replace=False returns False and keeps the file that took the name meanwhile."""
        target = tmp_path / "scan.png.txt"
        target.write_text("the user's\n")

        done = write_atomic(target, b"ours\n", replace=False)

        assert (False, "the user's\n") == (done, target.read_text())
        assert ["scan.png.txt"] == [p.name for p in tmp_path.iterdir()]

    def test_without_replace_a_free_name_is_written(self, tmp_path):
        """replace=False writes a name that is free, and leaves no temporary file."""
        target = tmp_path / "scan.png.pdf"

        done = write_atomic(target, b"%PDF-1.4", replace=False)

        assert (True, b"%PDF-1.4") == (done, target.read_bytes())
        assert ["scan.png.pdf"] == [p.name for p in tmp_path.iterdir()]

    def test_the_named_way_links_without_replacing(self, tmp_path):
        """Where O_TMPFILE is missing (many shares), the named temporary file is linked in:
        a free name gets the data, a taken one keeps its file, and no temporary is left."""
        from ocrwatch.sidecar import _write_named

        free, taken = tmp_path / "a.png.txt", tmp_path / "b.png.txt"
        taken.write_text("the user's\n")

        results = (
            _write_named(free, b"ours\n", replace=False),
            _write_named(taken, b"ours\n", replace=False),
        )

        assert (True, False) == results
        assert ("ours\n", "the user's\n") == (free.read_text(), taken.read_text())
        assert {"a.png.txt", "b.png.txt"} == {p.name for p in tmp_path.iterdir()}

    def test_a_big_result_is_written_whole(self, tmp_path):
        """A result far bigger than one write() (a long searchable PDF) arrives whole."""
        data = os.urandom(3 << 20) + b"%%EOF"
        target = tmp_path / "scan.png.pdf"

        write_atomic(target, data)

        assert (
            hashlib.sha256(data).digest()
            == hashlib.sha256(target.read_bytes()).digest()
        )


class TestTaskResult:
    def test_every_entry_is_kept_in_order_with_warnings(self):
        """parse_task_result keeps each results[] entry with its type, and error.warnings."""
        body = (
            '{"id": "c4b60313-4f78-45f8-b708-069eb98dc22e", "taskStatus": "Completed",'
            ' "responseStatusCode": "Ok", "results": [{"type": "Text", "data": "aGk="},'
            ' {"type": "Pdf", "data": "JVBERi0="}], "error": {"messages": [],'
            ' "warnings": ["Low contrast."]}}'
        )

        result = parse_task_result(body)

        assert (
            TaskResult(
                "c4b60313-4f78-45f8-b708-069eb98dc22e",
                "Completed",
                (ResultEntry("Text", b"hi"), ResultEntry("Pdf", b"%PDF-")),
                (),
                ("Low contrast.",),
                "Ok",
            )
            == result
        )
        assert "hi" == result.text

    def test_from_the_emulator_to_the_folder(self, emulator, tmp_path):
        """TextAndPdf through the real client: the .txt holds exactly the emulator's text and
        a newline, the .pdf starts with %PDF-; a user's .pdf stays as it was."""
        scan = tmp_path / "scan.png"
        scan.write_bytes(png_bytes(11))
        (tmp_path / "scan.png.pdf").write_bytes(b"the user's pdf")
        client = make_client(emulator.url)
        sub = client.submit(scan, Settings(result_type="TextAndPdf"))

        result = client.wait_for_result(sub.guid, sleep=lambda s: None)
        write_results(scan, result.results, lambda p: False)

        sha = hashlib.sha256(png_bytes(11)).hexdigest()
        text = f"Recognized by the ocrwatch emulator: {len(png_bytes(11))} bytes, sha256 {sha}, language English.\n"
        assert text == (tmp_path / "scan.png.txt").read_text()
        assert (tmp_path / "scan.png.ocr.pdf").read_bytes().startswith(b"%PDF-")
        assert b"the user's pdf" == (tmp_path / "scan.png.pdf").read_bytes()
