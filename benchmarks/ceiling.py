"""The bare-`requests` ceiling: N threads posting prepared RecognizeImage bodies, nothing else."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import requests
from common import token


def bare_requests_rate(url: str, files: list[Path], threads: int) -> float:
    """Files per second for the simplest possible client: no journal, no sidecars, no retries."""
    bearer = token(url)
    bodies = [
        json.dumps(
            {
                "image": base64.b64encode(p.read_bytes()).decode(),
                "settings": {"language": "English"},
            }
        ).encode()
        for p in files
    ]
    headers = {
        "Authorization": f"Bearer {bearer}",
        "Content-Type": "application/json",
        "Accept": "text/plain",
    }
    lock = threading.Lock()
    cursor = [0]

    def worker() -> None:
        session = requests.Session()
        while True:
            with lock:
                i = cursor[0]
                cursor[0] += 1
            if i >= len(bodies):
                return
            response = session.post(
                f"{url}/v5.0/ocr/RecognizeImage",
                data=bodies[i],
                headers=headers,
                timeout=30,
            )
            response.raise_for_status()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(bodies) / (time.perf_counter() - started)
