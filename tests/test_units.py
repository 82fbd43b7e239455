"""The systemd units load without a warning and stay hardened: `systemd-analyze verify` and
`security --offline=true`, on both units. CI (CI=true) has systemd-analyze (`.ci/run` installs
it), so there a missing one is a failure, not a skip."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNITS = ["ocrwatch.service", "ocrwatch@.service"]
MAX_EXPOSURE = 1.5


@pytest.fixture(scope="module")
def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "systemd-analyze is missing in CI; .ci/run must install systemd"
            )
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize(
    ("unit", "name"),
    [
        pytest.param("ocrwatch.service", "ocrwatch.service", id="service"),
        pytest.param("ocrwatch@.service", "ocrwatch@office.service", id="instance"),
    ],
)
def test_unit_verifies_without_a_warning(analyze, tmp_path, unit, name):
    """Every directive is known and valid: verify exits 0 and says nothing (an unknown or
    misspelt key is only a warning, so the output must be empty too). ExecStart points at a
    binary that exists here, since /opt/ocrwatch is not installed."""
    text = (REPO / "systemd" / unit).read_text()
    assert "ExecStart=/opt/ocrwatch/bin/ocrwatch run" in text
    (tmp_path / unit).write_text(
        text.replace("/opt/ocrwatch/bin/ocrwatch", shutil.which("true") or "/bin/true")
    )

    result = run(analyze, "verify", "--man=no", str(tmp_path / name))

    assert (0, "", "") == (result.returncode, result.stdout, result.stderr)


@pytest.mark.parametrize("unit", UNITS)
def test_unit_exposure_is_at_most_1_5(analyze, unit):
    """`systemd-analyze security --offline=true` rates the unit 1.5 or better."""
    result = run(analyze, "security", "--offline=true", str(REPO / "systemd" / unit))

    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("unit", UNITS)
def test_unit_promises_what_the_daemon_and_the_install_rely_on(unit):
    """The directives the README's Install section and the daemon's notify support rely on."""
    lines = set((REPO / "systemd" / unit).read_text().splitlines())

    assert {
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=60s",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "MemoryDenyWriteExecute=true",
        "UMask=0027",
    } <= lines
    assert not [line for line in lines if line.startswith("ReadWritePaths=")], (
        "watched folders belong in a drop-in (ReadWritePaths=-...), not in the unit"
    )


def directive(unit: str, key: str) -> str:
    values = [
        line.partition("=")[2]
        for line in (REPO / "systemd" / unit).read_text().splitlines()
        if line.startswith(f"{key}=")
    ]
    assert len(values) == 1, f"{unit}: {key}= set {len(values)} times"
    return values[0]


@pytest.mark.parametrize("unit", UNITS)
def test_the_service_sees_a_live_submit_of_another_user_as_alive(unit, tmp_path):
    """Under the unit's ProtectProc= (a proc mount with that hidepid=), the journal running as
    the service user still takes a claim of root's live `ocrwatch submit` for a live one.

    With `invisible` it does not: the daemon's resume would queue that file again and upload it
    twice. Needs root, to mount a private /proc and to drop to `nobody` like User= does.
    """
    hidepid = directive(unit, "ProtectProc")
    tools = [shutil.which(tool) for tool in ("unshare", "setpriv")]
    if os.geteuid() != 0 or None in tools:
        pytest.skip("needs root with unshare and setpriv (util-linux), as in CI")
    submit = subprocess.Popen(  # stands in for a root `submit` with a claim in flight
        [
            sys.executable,
            "-c",
            "import sys, time; from ocrwatch.journal import this_process; "
            "print(this_process(), flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert submit.stdout is not None
        owner = submit.stdout.readline().strip()
        check = (
            f"mount -t proc -o hidepid={hidepid} proc /proc && exec setpriv "
            '--reuid=nobody --regid=nogroup --clear-groups "$0" -c '
            "'import sys; from ocrwatch.journal import is_alive; print(is_alive(sys.argv[1]))' "
            '"$1"'
        )
        result = run("unshare", "--mount", "sh", "-c", check, sys.executable, owner)
    finally:
        submit.communicate("", timeout=10)
    if "Permission denied" in result.stderr or "ModuleNotFoundError" in result.stderr:
        pytest.skip(
            f"nobody cannot run this checkout's Python: {result.stderr.strip()}"
        )
    if result.returncode != 0 and "mount" in result.stderr:
        pytest.skip(f"no private /proc here: {result.stderr.strip()}")

    assert ("True\n", 0) == (result.stdout, result.returncode), result.stderr
