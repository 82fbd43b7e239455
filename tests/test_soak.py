"""The soak at CI size: 300 arrivals, two SIGKILLs, a service failing a third of the time."""

from __future__ import annotations

from .soak import run_soak


def test_soak_every_file_once_and_only_allowed_duplicates(tmp_path, capsys):
    """Every file ends with exactly one `.guid` and no `.error`; uploads stay within distinct
    contents + replies lost after acceptance + files in flight at the kills."""
    report = run_soak(tmp_path, files=300, kills=2)

    with capsys.disabled():
        print(f"\n{report}")
    assert report.uploads <= report.allowed
    assert report.faults_injected > 50
