"""What ships beside the code works: the example config parses and `make demo`'s script completes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ocrwatch.config import DEFAULT_INCLUDE, load_config

from .conftest import cli_env

REPO = Path(__file__).resolve().parent.parent


def test_example_config_is_valid():
    """config.example.yaml passes the same validation `check` applies."""
    config = load_config(REPO / "config.example.yaml")

    assert ["default", "invoices-de"] == list(config.profiles)
    assert [False, True] == [f.polling for f in config.folders]
    # A folder that spells out `include` must not lose what the defaults take (PDFs).
    assert all(set(DEFAULT_INCLUDE) <= set(f.include) for f in config.folders)


def run_demo(where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "demo.py"),
            "--once",
            "--dir",
            str(where),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
        check=False,
    )


def test_demo_submits_the_sample_images(tmp_path):
    """The demo starts the emulator and the daemon and gets a GUID sidecar for every sample;
    a second run in the same folder shows its own GUIDs and text, not the first run's."""
    samples = sorted(p.name for p in (REPO / "examples").glob("*.png"))
    guids = []
    for _ in range(2):
        result = run_demo(tmp_path)

        assert 0 == result.returncode, result.stderr[-2000:]
        assert [s + ".guid" for s in samples] == sorted(
            p.name for p in (tmp_path / "inbox").glob("*.guid")
        )
        assert (
            "recognized text of scan-0001.png: Recognized by the ocrwatch emulator"
            in result.stdout
        ), result.stdout
        printed = [line for line in result.stdout.splitlines() if ".png.guid: " in line]
        guids.append(printed)
        assert [
            (tmp_path / "inbox" / f"{s}.guid").read_text().strip() for s in samples
        ] == [line.split(": ", 1)[1] for line in printed[: len(samples)]]
    assert not set(guids[0]) & set(guids[1])
