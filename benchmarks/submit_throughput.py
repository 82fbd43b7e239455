"""`ocrwatch submit` on 500 small images at concurrency 4, against the bare-requests ceiling.

Both run against the same emulator process in the same run. Usage: python benchmarks/submit_throughput.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ceiling import bare_requests_rate
from common import OCRWATCH, emulator, env, write_config, write_images

N = 500


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, emulator() as url:
        base = Path(tmp)
        files = write_images(base / "inbox", N)
        config = write_config(
            base / "config.yaml", url, [{"path": str(base / "inbox")}]
        )
        ceiling = bare_requests_rate(url, files, threads=4)

        started = time.perf_counter()
        result = subprocess.run(
            [
                *OCRWATCH,
                "submit",
                "-c",
                str(config),
                "--log-level",
                "warning",
                str(base / "inbox"),
            ],
            capture_output=True,
            text=True,
            env=env(),
            check=False,
        )
        elapsed = time.perf_counter() - started
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(list((base / "inbox").glob("*.guid"))) == N
        rate = N / elapsed
        print(f"bare requests, 4 threads: {ceiling:.0f} files/s")
        print(
            f"ocrwatch submit (whole process, incl. start-up): {rate:.0f} files/s = {rate / ceiling:.2f}x ceiling ({elapsed:.2f}s)"
        )
        print(f"python {sys.version.split()[0]}, {N} files")


if __name__ == "__main__":
    main()
