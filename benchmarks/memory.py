"""RSS growth of `ocrwatch submit`'s client for one 200 MB image: the body is streamed, not built.

The emulator runs in its own process, so only the client's memory is measured (ru_maxrss of a
child that does one warm-up submit, then the big one). Usage: python benchmarks/memory.py [MB]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import CLIENT_ID, SECRET, emulator

CHILD = r"""
import json, resource, sys
from pathlib import Path
from pydantic import SecretStr
from ocrwatch.client import OcrClient
from ocrwatch.config import Credentials, parse_config
from ocrwatch.settings import Settings
url, small, big, client_id, secret = sys.argv[1:6]
api = parse_config({"api": {"base_url": url, "timeout": {"read": 600}}, "state_dir": "/tmp/x",
                    "folders": [{"path": "/srv/in"}]}, "bench").api
client = OcrClient(api, Credentials(client_id, SecretStr(secret)))
client.submit(Path(small), Settings())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sub = client.submit(Path(big), Settings(language="English"))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "after_kib": after, "guid": sub.guid, "sha256": sub.sha256}))
"""


def main(megabytes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, emulator() as url:
        base = Path(tmp)
        small, big = base / "small.png", base / "big.png"
        small.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(1000))
        with big.open("wb") as handle:
            handle.write(b"\x89PNG\r\n\x1a\n")
            for _ in range(megabytes):
                handle.write(os.urandom(1 << 20))
        result = subprocess.run(
            [sys.executable, "-c", CHILD, url, str(small), str(big), CLIENT_ID, SECRET],
            capture_output=True,
            text=True,
            check=True,
        )
        figures = json.loads(result.stdout)
        growth_mib = (figures["after_kib"] - figures["before_kib"]) / 1024
        print(
            f"image {big.stat().st_size / 2**20:.0f} MiB, base64 body {4 * big.stat().st_size / 3 / 2**20:.0f} MiB"
        )
        print(
            f"client peak RSS before {figures['before_kib'] / 1024:.0f} MiB, after {figures['after_kib'] / 1024:.0f} MiB: growth {growth_mib:.1f} MiB (target < 64)"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
