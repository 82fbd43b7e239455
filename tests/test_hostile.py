"""What ocrwatch survives: hostile files, disks and services, each with the daemon still up and no
file lost. Read the test names as the list.
"""

from __future__ import annotations

import os
from pathlib import Path

from .conftest import wait_until, write_config
from .daemon_harness import daemon_thread, sidecars
from .images import write_png


def config_for(tmp_path: Path, url: str, inbox: Path, **extra: object) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        **extra,
    )


def test_a_name_that_is_not_utf8_is_sent_and_the_files_beside_it_too(
    tmp_path, inbox, emulator
):
    """`bad\\xff.png` is stored losslessly, sent, and given its `.guid`; the scan of its folder
    goes on, at start and after a restart."""
    odd = Path(os.fsdecode(os.fsencode(str(inbox)) + b"/bad\xff.png"))
    write_png(odd, 1)
    write_png(inbox / "good.png", 2)
    config = config_for(tmp_path, emulator.url, inbox)
    with daemon_thread(config) as daemon:
        wait_until(lambda: len(sidecars(inbox)) == 2, 10, "both sent")
        state = daemon.journal.lookup([odd])[str(odd)].state
    with daemon_thread(config) as again:
        entry = again.journal.lookup([odd])[str(odd)]

    assert Path(os.fsdecode(os.fsencode(str(odd)) + b".guid")).exists()
    assert ("submitted", "submitted") == (state, entry.state)
    assert 2 == len(emulator.submissions())
