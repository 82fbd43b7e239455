"""Sidecars are written atomically: after a crash there is no sidecar or a complete one."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocrwatch.errors import SidecarError
from ocrwatch.selection import is_candidate
from ocrwatch.sidecar import (
    Kind,
    _write_named,
    has_current_sidecar,
    is_sidecar_name,
    readable_like,
    sidecar_path,
    write_sidecar,
)

GUID_LINE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n$"
)


def test_names_follow_the_contract(tmp_path):
    """`scan-0001.png` gets `scan-0001.png.guid` / `.error`."""
    original = tmp_path / "scan-0001.png"

    assert ("scan-0001.png.guid", "scan-0001.png.error") == (
        sidecar_path(original, Kind.GUID).name,
        sidecar_path(original, Kind.ERROR).name,
    )


def test_guid_replaces_stale_error_and_vice_versa(tmp_path):
    """A file has one sidecar kind at a time: the newer outcome removes the other."""
    original = tmp_path / "a.png"
    original.write_bytes(b"x")
    write_sidecar(original, Kind.ERROR, "the file is empty")

    write_sidecar(original, Kind.GUID, "a197aade-bba9-4c7a-92c7-46851b3dceaa")

    assert ["a.png", "a.png.guid"] == sorted(p.name for p in tmp_path.iterdir())
    assert (
        "a197aade-bba9-4c7a-92c7-46851b3dceaa\n"
        == (tmp_path / "a.png.guid").read_text()
    )


def test_error_text_is_one_line(tmp_path):
    """A multi-line reason is folded into one human-readable line."""
    original = tmp_path / "a.png"

    write_sidecar(original, Kind.ERROR, "rejected by the service:\n  bad\timage")

    assert (
        "rejected by the service: bad image\n" == (tmp_path / "a.png.error").read_text()
    )


def test_unwritable_folder_is_a_sidecar_error(tmp_path):
    """A folder that cannot take the sidecar (here: it does not exist) raises SidecarError, leaving no temp file."""
    with pytest.raises(SidecarError, match="cannot write"):
        write_sidecar(tmp_path / "gone" / "a.png", Kind.GUID, "x")


def test_temp_files_are_never_candidates_or_sidecars():
    """A temporary file left by a crash mid-write is ignored by selection."""
    leftover = ".ocrwatch-tmp-0a1b2c-scan.png.guid"

    assert is_sidecar_name(leftover)
    assert not is_candidate(Path(leftover), ["*"], [])


def test_sidecar_currency_by_mtime():
    """Without a journal record, a sidecar older than its file no longer describes it."""
    assert (True, True, False, False) == (
        has_current_sidecar(100, 100),
        has_current_sidecar(100, 200),
        has_current_sidecar(200, 100),
        has_current_sidecar(100, None),
    )


def test_kill_9_during_writes_leaves_no_partial_sidecar(tmp_path):
    """A writer killed with SIGKILL mid-loop leaves only complete sidecars (or none) behind."""
    script = textwrap.dedent(
        f"""
        import sys, uuid
        from pathlib import Path
        from ocrwatch.sidecar import Kind, write_sidecar
        folder = Path({str(tmp_path)!r})
        n = 0
        while True:
            for i in range(20):
                write_sidecar(folder / f"f{{i}}.png", Kind.GUID, str(uuid.uuid4()))
                n += 1
                if n % 50 == 0:
                    print(n, flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for _ in range(6):  # let it write a few hundred sidecars first
        assert proc.stdout.readline()

    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()

    sidecars = [p for p in tmp_path.glob("*.guid") if not p.name.startswith(".")]
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".ocrwatch-tmp-")]
    assert 20 == len(sidecars)
    assert len(leftovers) <= 1
    bad = [p.name for p in sidecars if not GUID_LINE.match(p.read_text())]
    assert [] == bad


def test_new_sidecar_appears_without_a_visible_temporary_name(tmp_path):
    """Where the filesystem has O_TMPFILE, a watcher sees the sidecar appear complete, and no temp name."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    from .conftest import wait_until

    seen: list[str] = []

    class Record(FileSystemEventHandler):
        def on_any_event(self, event):
            seen.append(str(event.src_path))

    observer = Observer()
    observer.schedule(Record(), str(tmp_path))
    observer.start()
    try:
        write_sidecar(
            tmp_path / "a.png", Kind.GUID, "a197aade-bba9-4c7a-92c7-46851b3dceaa"
        )
        wait_until(
            lambda: any(p.endswith("a.png.guid") for p in seen), 5, "sidecar event"
        )
    finally:
        observer.stop()
        observer.join()

    assert [] == [p for p in seen if ".ocrwatch-tmp-" in p]
    assert (
        "a197aade-bba9-4c7a-92c7-46851b3dceaa\n"
        == (tmp_path / "a.png.guid").read_text()
    )


@given(
    st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"),
        min_size=1,
    ).filter(lambda name: name not in (".", "..") and len(os.fsencode(name)) <= 255)
)
def test_sidecar_names_stay_in_the_folder_and_lead_back_to_the_file(name):
    """Whatever the name (unicode, spaces, newlines, 255 bytes), the sidecar sits next to the
    file and its name is the file's name plus the suffix."""
    original = Path("/srv/scans") / name

    for kind in Kind:
        path = sidecar_path(original, kind)
        assert original.parent == path.parent
        assert name == path.name.removesuffix(kind.value)


@pytest.mark.parametrize(
    ("original_mode", "expected"),
    [(0o644, 0o644), (0o640, 0o640), (0o600, 0o600), (0o604, 0o604)],
)
def test_a_sidecar_is_as_readable_as_its_original(tmp_path, original_mode, expected):
    """Under the unit's UMask=0027 a sidecar would be the service's alone; whoever may read
    the scan may read its `.guid` too (and never more), whichever way it is written."""
    original = tmp_path / "scan.png"
    original.write_bytes(b"x")
    original.chmod(original_mode)
    named = tmp_path / "named.guid"  # the way shares without O_TMPFILE get it
    old_umask = os.umask(0o027)
    try:
        path = write_sidecar(
            original, Kind.GUID, "c4b60313-4f78-45f8-b708-069eb98dc22e"
        )
        _write_named(named, b"x\n", mode=readable_like(original_mode))
    finally:
        os.umask(old_umask)

    assert (expected, expected) == (
        stat.S_IMODE(path.stat().st_mode),
        stat.S_IMODE(named.stat().st_mode),
    )
