"""`make demo`: the emulator, the daemon watching ./inbox, and the sample scans dropped into it.

Runs until Ctrl-C (drop more images into ./inbox meanwhile); `--once` stops after the samples.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OCRWATCH = [sys.executable, "-m", "ocrwatch"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--once", action="store_true", help="stop once the sample images are done"
    )
    parser.add_argument(
        "--dir", type=Path, default=Path.cwd(), help="where inbox/ and demo/ go"
    )
    args = parser.parse_args()
    base = args.dir.resolve()
    inbox, work = base / "inbox", base / "demo"
    inbox.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    samples = sorted(HERE.glob("*.png"))
    forget_previous_run(work, inbox, samples)

    emulator = subprocess.Popen(
        [*OCRWATCH, "emulator", "--port", "0", "--log", str(work / "emulator.jsonl")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert emulator.stdout is not None
    url = emulator.stdout.readline().strip()
    config = work / "config.yaml"
    config.write_text(
        f"api:\n  base_url: {url}\n  client_id: emulator\n  client_secret: emulator-secret\n"
        f"state_dir: {work / 'state'}\n"
        f"folders:\n  - path: {inbox}\n    settle_seconds: 1\n"
        "profiles:\n  default:\n    language: English\n    resultType: Text\n"
        "    fetch_results: true\n"
    )
    print(f"emulator on {url}; config {config}", flush=True)
    daemon = subprocess.Popen(
        [*OCRWATCH, "run", "-c", str(config), "--log-format", "console"]
    )
    try:
        for sample in samples:
            shutil.copy(sample, inbox / sample.name)
        print(
            f"copied {len(samples)} sample scans into {inbox}; waiting for their text...",
            flush=True,
        )
        deadline = time.monotonic() + 60
        pending = [inbox / (s.name + ".guid") for s in samples]
        texts = [inbox / (s.name + ".txt") for s in samples]
        while any(not p.exists() for p in [*pending, *texts]):
            if time.monotonic() > deadline or daemon.poll() is not None:
                print(
                    "the samples were not all submitted; see the log above",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.2)
        for path in pending:
            print(f"{path.name}: {path.read_text().strip()}")
        text = texts[0].read_text().strip()
        print(f"recognized text of {samples[0].name}: {text}")
        print(f"  (written next to it as {texts[0]}, one .txt per scan)")
        if args.once:
            return 0
        print(f"\nwatching {inbox}: drop images there; Ctrl-C to stop", flush=True)
        daemon.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in (daemon, emulator):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=40)
        if emulator.stdout is not None:
            emulator.stdout.close()


def forget_previous_run(work: Path, inbox: Path, samples: list[Path]) -> None:
    """Each demo starts a new emulator, which knows none of an earlier run's tasks: the
    samples, their sidecars and the journal of an earlier run go, so that this run sends
    the samples and shows its own GUIDs and text. Other files in the inbox stay."""
    shutil.rmtree(work / "state", ignore_errors=True)
    for sample in samples:
        for suffix in ("", ".guid", ".error", ".txt"):
            name = sample.name + suffix
            (inbox / name).unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
