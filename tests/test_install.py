"""The README's Install section, followed as an admin would: `pip install .` into a fresh venv,
and `systemd/install.sh` into a staging root, then the daemon run as systemd would run it, as an
unprivileged user with $CREDENTIALS_DIRECTORY and $STATE_DIRECTORY, under MemoryDenyWriteExecute.

CI runs as root, so the service user is `nobody` (group `nogroup`) via setpriv, and the config,
folders and secret get that group just as the script gives them `ocrwatch`.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocrwatch.config import load_config
from ocrwatch.emulator import Emulator

from .conftest import CLIENT_ID, SECRET, cli_env, wait_until
from .daemon_harness import SPAWNED
from .images import write_png

REPO = Path(__file__).resolve().parent.parent
USER, GROUP = "nobody", "nogroup"
# The second has a space and a `%`, which the drop-in must quote and escape for systemd.
FOLDERS = ["/srv/scans/inbox", "/srv/scans/Invoices 100%"]

# systemd's MemoryDenyWriteExecute=, as the kernel offers it (PR_SET_MDWE, Linux 6.3+): set
# before ocrwatch or any of its libraries is imported, and the daemon says whether it is on.
MDWE_THEN_RUN = """
import ctypes, runpy, sys
libc = ctypes.CDLL(None, use_errno=True)
on = libc.prctl(65, 1, 0, 0, 0) == 0 and libc.prctl(66, 0, 0, 0, 0) == 1
print("mdwe:", "on" if on else "unsupported", flush=True)
sys.argv = ["ocrwatch", *sys.argv[1:]]
runpy.run_module("ocrwatch", run_name="__main__", alter_sys=True)
"""


@dataclass
class Installed:
    root: Path
    user: pwd.struct_passwd
    group: grp.struct_group
    access: str

    @property
    def config(self) -> Path:
        return self.root / "etc/ocrwatch/config.yaml"

    @property
    def secret(self) -> Path:
        return self.root / "etc/ocrwatch/secret"

    @property
    def inbox(self) -> Path:
        return self.root / "srv/scans/inbox"


def as_service_user(*args: str) -> list[str]:
    """The command under the service user's uid and gid only, with no way to gain more."""
    return [
        "setpriv",
        f"--reuid={USER}",
        f"--regid={GROUP}",
        "--clear-groups",
        "--no-new-privs",
        "--",
        *args,
    ]


def systemd_env(installed: Installed, *, with_credential: bool) -> dict[str, str]:
    """$STATE_DIRECTORY and $CREDENTIALS_DIRECTORY made as systemd makes them for the unit:
    the state folder 0750 and the credential 0400, both the service user's."""
    uid, gid = installed.user.pw_uid, installed.group.gr_gid
    state = installed.root / "var/lib/ocrwatch"
    state.mkdir(parents=True, exist_ok=True)
    os.chown(state, uid, gid)
    state.chmod(0o750)
    env = cli_env(STATE_DIRECTORY=str(state), HOME="/nonexistent")
    if with_credential:
        creds = installed.root / "run/credentials/ocrwatch.service"
        creds.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(installed.secret, creds / "client_secret")
        for path, mode in ((creds / "client_secret", 0o400), (creds, 0o500)):
            os.chown(path, uid, gid)
            path.chmod(mode)
        env["CREDENTIALS_DIRECTORY"] = str(creds)
    return env


@pytest.fixture(params=["acl", "group"])
def installed(
    request: pytest.FixtureRequest, emulator: Emulator
) -> Iterator[Installed]:
    """systemd/install.sh run into a staging root, for a scanner's folder that already holds a
    scan and a folder that does not exist yet; then the two edits the README asks for: client_id
    and folders in the config (here also the emulator's URL and the staging root's paths), and
    the secret in /etc/ocrwatch/secret. Folder access by ACL (`acl` tools) or by group."""
    if os.geteuid() != 0:
        pytest.skip(
            "the install is root's (chown root:ocrwatch) and runs the daemon as nobody"
        )
    if shutil.which("setpriv") is None:
        pytest.fail(
            "setpriv (util-linux) is needed to run the daemon as the service user"
        )
    if request.param == "acl" and shutil.which("setfacl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("setfacl is missing in CI; .ci/run must install acl")
        pytest.skip("the acl tools are not installed (apt-get install acl)")
    # Not under tmp_path: pytest's base folder is 0700 root, which the service user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="ocrwatch-install-", dir="/tmp"))
    root.chmod(0o755)
    try:
        old_scan = write_png(root / "srv/scans/inbox/scan-0000.png", seed=40)
        old_scan.chmod(0o640)  # the scanner's, root:root, before ocrwatch was installed
        result = subprocess.run(
            ["sh", str(REPO / "systemd/install.sh"), *FOLDERS],
            env=cli_env(
                DESTDIR=str(root),
                OCRWATCH_USER=USER,
                OCRWATCH_GROUP=GROUP,
                OCRWATCH_BIN=f"{sys.executable} -m ocrwatch",
                OCRWATCH_ACL="yes" if request.param == "acl" else "no",
            ),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert (0, "") == (result.returncode, result.stderr)
        found = Installed(root, pwd.getpwnam(USER), grp.getgrnam(GROUP), request.param)
        edit_config(found, emulator.url)
        found.secret.write_text(SECRET + "\n")  # sudoedit keeps root:root 0600
        yield found
    finally:
        shutil.rmtree(root, ignore_errors=True)


def edit_config(installed: Installed, url: str) -> None:
    """What the admin changes in the installed config.example.yaml, and nothing else."""
    text = installed.config.read_text()
    for old, new in (
        ("base_url: https://api.aspose.cloud", f"base_url: {url}"),
        ('client_id: "your-client-id"', f'client_id: "{CLIENT_ID}"'),
        (
            "client_secret_file: /etc/ocrwatch/",
            f"client_secret_file: {installed.root}/etc/ocrwatch/",
        ),
        ("path: '/srv/scans/", f"path: '{installed.root}/srv/scans/"),
        ("settle_seconds: 2 ", "settle_seconds: 0.2 "),
    ):
        assert old in text, f"config.example.yaml no longer has {old!r}"
        text = text.replace(old, new)
    installed.config.write_text(text)


def test_install_gives_the_documented_owners_and_modes(installed):
    """Config readable by the service's group only, the secret root's alone, and the folders
    listed with `-` in the unit's drop-in."""
    root, gid = installed.root, installed.group.gr_gid

    def owner_mode(path: Path) -> tuple[int, int, int]:
        st = path.stat()
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    assert [(0, gid, 0o750), (0, gid, 0o640), (0, 0, 0o600)] == [
        owner_mode(root / "etc/ocrwatch"),
        owner_mode(installed.config),
        owner_mode(installed.secret),
    ]
    dropin = root / "etc/systemd/system/ocrwatch.service.d/folders.conf"
    assert (
        '[Service]\nReadWritePaths="-/srv/scans/inbox"\n'
        'ReadWritePaths="-/srv/scans/Invoices 100%%"\n'
    ) == dropin.read_text()
    # The config watches exactly the folders given to install.sh.
    assert [f"{root}{f}" for f in FOLDERS] == [
        str(f.path) for f in load_config(installed.config).folders
    ]
    if shutil.which("systemd-analyze"):  # does systemd read the drop-in as meant?
        unit = root / "check.service"
        unit.write_text("[Service]\nExecStart=/bin/true\n" + dropin.read_text()[10:])
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(unit)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert (0, "") == (verify.returncode, verify.stderr)
    assert (
        f"ExecStart={sys.executable} -m ocrwatch run -c /etc/ocrwatch/config.yaml"
        in (root / "etc/systemd/system/ocrwatch.service").read_text().splitlines()
    )


def test_the_service_user_may_write_the_folders_and_read_the_scans(installed):
    """In the existing folder, in a new one and in a subfolder made later by the scanner, the
    service user can create sidecars and read the scans; with ACLs, the scanner's folder keeps
    its group, and a subfolder made later is writable whatever the scanner's umask."""
    inbox = installed.inbox
    # The scanner, as root, after the install. Without ACLs its new folders must be group-
    # writable (the README says so: umask 002, or samba's `force directory mode = 2775`).
    (inbox / "later").mkdir()
    if installed.access == "group":
        (inbox / "later").chmod(0o2775)
    write_png(inbox / "later/scan.png").chmod(0o640)
    second = shlex.quote(f"{installed.root}{FOLDERS[1]}/x.guid")
    probe = (
        f"touch {inbox}/x.guid {inbox}/later/x.guid {second}"
        f" && cat {inbox}/scan-0000.png {inbox}/later/scan.png >/dev/null"
    )

    result = subprocess.run(
        as_service_user("sh", "-c", probe),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )

    assert (0, "") == (result.returncode, result.stderr)
    kept = 0 if installed.access == "acl" else installed.group.gr_gid
    assert kept == inbox.stat().st_gid


def test_the_installed_service_submits_a_scan(installed, emulator, tmp_path):
    """As the service user, with the secret only in $CREDENTIALS_DIRECTORY and the journal in
    $STATE_DIRECTORY, the installed config gives a daemon that starts and submits the scan
    that was there and a dropped one: the emulator got each once, each `.guid` holds its GUID,
    and the secret appears nowhere."""
    log = tmp_path / "daemon.log"
    env = systemd_env(installed, with_credential=True)
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            as_service_user(
                sys.executable, "-c", MDWE_THEN_RUN, "run", "-c", str(installed.config)
            ),
            stdout=handle,
            stderr=handle,
            env=env,
            umask=0o027,  # the unit's UMask=
        )
    SPAWNED.append(proc)
    wait_until(
        lambda: b"daemon.started" in log.read_bytes() or proc.poll() is not None,
        20,
        "daemon started",
    )
    assert proc.poll() is None, log.read_text()

    scan = write_png(installed.inbox / "scan-0001.png", seed=41)  # the scanner, as root
    scan.chmod(0o640)
    # The one there before the install (found by the catch-up scan), and a new one.
    scans = [installed.inbox / "scan-0000.png", scan]
    guids = [p.with_name(p.name + ".guid") for p in scans]
    wait_until(lambda: all(g.exists() for g in guids), 20, "both .guid sidecars")
    proc.send_signal(signal.SIGTERM)
    assert 0 == proc.wait(30)

    text = log.read_text()
    sent = {r["image_sha256"]: r["guid"] for r in emulator.submissions()}
    assert [f"{sent[hashlib.sha256(p.read_bytes()).hexdigest()]}\n" for p in scans] == [
        g.read_text() for g in guids
    ]
    assert 2 == len(emulator.submissions())
    for guid_file in guids:
        assert installed.user.pw_uid == guid_file.stat().st_uid
        assert 0 == stat.S_IMODE(guid_file.stat().st_mode) & 0o007, "UMask=0027"
    assert (Path(env["STATE_DIRECTORY"]) / "journal.sqlite3").exists()
    assert "secret.file_unreadable" in text  # root's 0600 file: the credential was used
    assert SECRET not in text
    # Under MemoryDenyWriteExecute wherever the kernel offers it (here, and CI's kernels).
    assert text.splitlines()[0] in ("mdwe: on", "mdwe: unsupported")


def test_check_as_the_service_user_finds_the_secret_only_as_a_credential(installed):
    """The example config's client_secret_file is root's: the service user reads the systemd
    credential instead (a warning, exit 0), and without one the error names both places."""
    check = as_service_user(
        sys.executable, "-m", "ocrwatch", "check", "-c", str(installed.config)
    )

    with_credential = subprocess.run(
        check,
        env=systemd_env(installed, with_credential=True),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    without = subprocess.run(
        check,
        env=systemd_env(installed, with_credential=False),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert 0 == with_credential.returncode, with_credential.stderr
    assert f"api: {installed.config.read_text().split('base_url: ')[1].split()[0]}" in (
        with_credential.stdout
    )
    assert "secret found" in with_credential.stdout
    assert "secret.file_unreadable" in with_credential.stderr
    assert f"state_dir: {installed.root}/var/lib/ocrwatch" in with_credential.stdout
    assert 2 == without.returncode
    assert (
        f"no client secret found (api.client_secret_file {installed.secret}: permission "
        "denied; $CREDENTIALS_DIRECTORY is not set)"
    ) in without.stderr.splitlines()[-1]
    assert (
        SECRET not in with_credential.stdout + with_credential.stderr + without.stderr
    )


def test_pip_install_into_a_fresh_venv(tmp_path):
    """`pip install .` into a new venv gives a working `ocrwatch`: --version, and check of
    config.example.yaml with the secret as a systemd credential."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [
            str(venv / "bin/pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(REPO),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert 0 == installed.returncode, installed.stderr[-3000:]
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "client_secret").write_text(SECRET)
    env = cli_env(CREDENTIALS_DIRECTORY=str(creds))
    ocrwatch = str(venv / "bin/ocrwatch")

    version = subprocess.run(
        [ocrwatch, "--version"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    check = subprocess.run(
        [ocrwatch, "check", "-c", str(REPO / "config.example.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=60,
    )

    assert (0, "ocrwatch 0.1.0") == (version.returncode, version.stdout.strip())
    assert 0 == check.returncode, check.stderr
    assert f"config: {REPO / 'config.example.yaml'} (valid)" in check.stdout
    assert "client_id your-client-id, secret found" in check.stdout
    assert SECRET not in check.stdout + check.stderr
