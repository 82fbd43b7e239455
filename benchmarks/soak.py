"""The soak at full size: 3,000 arrivals (new scans, copies, renames) against a service that fails
a third of the time, with five SIGKILLs of the daemon. Same code as tests/test_soak.py.

Usage: python benchmarks/soak.py [FILES] [KILLS] [SEED]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import common  # noqa: F401 -- puts the repository on sys.path

from tests.soak import run_soak


def main(files: int, kills: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report = run_soak(Path(tmp), files=files, kills=kills, seed=seed)
    print(report)
    print(f"uploads within the allowance: {report.uploads <= report.allowed}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*(args + [3000, 5, 7][len(args) :]))
