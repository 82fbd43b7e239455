"""on_complete: the command gets the original, the GUID and the result files; one that fails
or hangs holds up no other file and loses no result; a `.ocrwatch.yaml` may not set one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ocrwatch.hooks import STOP_GRACE_S, HookRunner, hook_call, passed_env, run_hook
from ocrwatch.taskpoll import SCALE_ENV

from .conftest import SECRET, wait_until, write_config
from .daemon_harness import daemon_thread, journal_entry
from .images import png_bytes

# Records its arguments and environment in OUT/<file name>.json; a file named hang* sleeps
# (its pid in OUT/<name>.pid first), fail* exits 3.
HOOK = """
import json, os, sys, time
from pathlib import Path
out, original = Path(sys.argv[1]), Path(sys.argv[2])
if original.name.startswith("hang"):
    (out / (original.name + ".pid")).write_text(str(os.getpid()))
    time.sleep(120)
if original.name.startswith("fail"):
    print("no space left for the copy", file=sys.stderr)
    sys.exit(3)
env = {
    k: v
    for k, v in os.environ.items()
    if k.startswith("OCRWATCH_")
    or k in ("NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY", "HTTPS_PROXY", "PATH")
}
(out / (original.name + ".json")).write_text(
    json.dumps({"argv": sys.argv[1:], "env": env, "cwd": os.getcwd()})
)
"""


@pytest.fixture(autouse=True)
def _short_polls(monkeypatch):
    monkeypatch.setenv(SCALE_ENV, "0.05")


@pytest.fixture
def hook(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "hook.py"
    script.write_text(textwrap.dedent(HOOK))
    out = tmp_path / "hook-out"
    out.mkdir()
    return script, out


def hook_config(tmp_path, url, inbox, script, out, **profile):
    return write_config(
        tmp_path / "config.yaml",
        url,
        [{"path": str(inbox), "settle_seconds": 0.2}],
        shutdown_timeout=2,
        profiles={
            "default": {
                "fetch_results": True,
                "resultType": "TextAndPdf",
                "on_complete": [sys.executable, str(script), str(out)],
                **profile,
            }
        },
    )


def test_on_complete_gets_the_file_the_guid_and_the_results(
    emulator, tmp_path, inbox, hook, monkeypatch
):
    """Arguments: the command's own, then the original, the GUID, the result files; the
    environment: OCRWATCH_FILE, OCRWATCH_GUID, OCRWATCH_RESULTS (one per line), OCRWATCH_PROFILE,
    and of the daemon's only an allowlist (never the secret or a proxy's credentials); the
    working folder is /, not the share."""
    script, out = hook
    config = hook_config(tmp_path, emulator.url, inbox, script, out)
    scan = inbox / "scan.png"
    monkeypatch.setenv("OCRWATCH_CLIENT_SECRET", SECRET)  # the daemon's, not the hook's
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))  # likewise
    monkeypatch.setenv(
        "NOTIFY_SOCKET", "@not-for-hooks"
    )  # the daemon's line to systemd
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@127.0.0.1:9")  # its credentials
    monkeypatch.setenv("OCRWATCH_EMULATOR_SECRET", SECRET)  # whatever the unit adds

    with daemon_thread(config):
        scan.write_bytes(png_bytes(1))
        wait_until((out / "scan.png.json").exists, 20, "the hook's record")

    seen = json.loads((out / "scan.png.json").read_text())
    guid = (inbox / "scan.png.guid").read_text().strip()
    results = [str(inbox / "scan.png.txt"), str(inbox / "scan.png.pdf")]
    assert [str(out), str(scan), guid, *results] == seen["argv"]
    assert {
        "OCRWATCH_FILE": str(scan),
        "OCRWATCH_GUID": guid,
        "OCRWATCH_RESULTS": "\n".join(results),
        "OCRWATCH_PROFILE": "default",
        "PATH": os.environ["PATH"],
    } == seen["env"]
    assert "/" == seen["cwd"]  # never the share


def test_a_hook_that_fails_or_hangs_blocks_no_other_file(
    emulator, tmp_path, inbox, hook
):
    """A hook that hangs and one that fails: the other files get their results and their
    hooks while the hung one still runs; the failure is logged with its stderr; the results
    of both stay."""
    script, out = hook
    config = hook_config(tmp_path, emulator.url, inbox, script, out)
    names = ["hang.png", "fail.png", "ok-1.png", "ok-2.png", "ok-3.png"]

    with capture_logs() as logs, daemon_thread(config):
        for i, name in enumerate(names):
            (inbox / name).write_bytes(png_bytes(10 + i))
        wait_until(
            lambda: all((out / f"ok-{i}.png.json").exists() for i in (1, 2, 3)),
            20,
            "the other hooks",
        )
        hung_pid = int((out / "hang.png.pid").read_text())
        os.kill(hung_pid, 0)  # still hanging while the others were done

    failed = [e for e in logs if e["event"] == "hook.failed"]
    assert {"fail.png": "exit status 3"} == {
        Path(e["path"]).name: e["error"] for e in failed if "exit" in e["error"]
    }
    assert any("no space left" in e.get("stderr", "") for e in failed)
    assert all((inbox / f"{name}.txt").exists() for name in names)


def test_a_hung_hook_is_killed_at_its_timeout(emulator, tmp_path, inbox, hook):
    """on_complete_timeout: the hook's process group is killed and `hook.failed` says so."""
    script, out = hook
    config = hook_config(
        tmp_path, emulator.url, inbox, script, out, on_complete_timeout=0.5
    )

    with capture_logs() as logs, daemon_thread(config):
        (inbox / "hang.png").write_bytes(png_bytes(20))
        wait_until(
            lambda: any(e["event"] == "hook.failed" for e in logs), 20, "hook.failed"
        )

    [failed] = [e for e in logs if e["event"] == "hook.failed"]
    assert "killed after 0.5 s (on_complete_timeout)" == failed["error"]
    pid = int((out / "hang.png.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert (inbox / "hang.png.txt").exists()


def test_on_complete_in_an_override_file_is_refused(emulator, tmp_path, inbox, hook):
    """A `.ocrwatch.yaml` that sets on_complete holds its folder's files with a reason that
    names it and says only the main config may; nothing there is sent or run."""
    script, out = hook
    config = hook_config(tmp_path, emulator.url, inbox, script, out)
    share = inbox / "share"
    share.mkdir()
    override = share / ".ocrwatch.yaml"
    override.write_text(f"on_complete: [{sys.executable}, {script}, {out}]\n")
    held, fine = share / "scan.png", inbox / "fine.png"

    with daemon_thread(config):
        held.write_bytes(png_bytes(30))
        fine.write_bytes(png_bytes(31))
        wait_until(
            lambda: (
                (entry := journal_entry(tmp_path / "state", held)) is not None
                and entry.held
            ),
            20,
            "the file held",
        )
        wait_until((out / "fine.png.json").exists, 20, "the other file's hook")

    entry = journal_entry(tmp_path / "state", held)
    assert entry is not None
    assert (
        f"held: {override}: on_complete: only the main config may set on_complete, "
        "never a .ocrwatch.yaml"
    ) in (entry.last_error or "")
    assert 1 == len(emulator.submissions())
    assert not (out / "scan.png.json").exists()


def test_on_complete_as_a_string_is_a_config_error(tmp_path, inbox, capsys):
    """on_complete is a list (no shell): a string is refused at `check`, exit 2, one sentence."""
    from ocrwatch.cli import main

    config = write_config(
        tmp_path / "config.yaml",
        "http://127.0.0.1:9",
        [{"path": str(inbox)}],
        profiles={"default": {"on_complete": "cp $1 /tmp"}},
    )

    code = main(["check", "-c", str(config)])

    assert 2 == code
    assert (
        f"ocrwatch: {config}: profiles.default.on_complete: give the command as a list of "
        "strings (no shell)"
    ) in capsys.readouterr().err


def test_an_override_file_may_turn_fetching_off(emulator, tmp_path, inbox, hook):
    """`fetch_results: false` in a `.ocrwatch.yaml`: that folder's files end `submitted`
    with only their `.guid`, and no hook runs for them."""
    script, out = hook
    config = hook_config(tmp_path, emulator.url, inbox, script, out)
    plain = inbox / "plain"
    plain.mkdir()
    (plain / ".ocrwatch.yaml").write_text("fetch_results: false\n")
    scan, other = plain / "scan.png", inbox / "other.png"

    with daemon_thread(config):
        scan.write_bytes(png_bytes(40))
        wait_until((plain / "scan.png.guid").exists, 20, "the .guid")
        other.write_bytes(png_bytes(41))
        wait_until((out / "other.png.json").exists, 20, "the other file's hook")

    entry = journal_entry(tmp_path / "state", scan)
    assert entry is not None
    assert "submitted" == entry.state
    assert not (plain / "scan.png.txt").exists()
    assert not (out / "scan.png.json").exists()


def test_check_shows_each_folders_result_keys(tmp_path, inbox, capsys):
    """`check` prints whether a folder's results are fetched, the timeout and the hook."""
    from ocrwatch.cli import main

    config = write_config(
        tmp_path / "config.yaml",
        "http://127.0.0.1:9",
        [{"path": str(inbox)}],
        profiles={
            "default": {
                "fetch_results": True,
                "fetch_timeout": "5m",
                "on_complete": ["/usr/local/bin/done", "--quiet"],
            }
        },
    )

    code = main(["check", "-c", str(config)])

    assert 0 == code
    assert (
        "  results: fetched, fetch_timeout 300s, on_complete ['/usr/local/bin/done', '--quiet']"
        in capsys.readouterr().out.splitlines()
    )


def test_a_relative_program_is_a_config_error(tmp_path, inbox, capsys):
    """on_complete's program must be an absolute path: a relative one would be found on PATH
    or beside the share's files; exit 2, one sentence."""
    from ocrwatch.cli import main

    config = write_config(
        tmp_path / "config.yaml",
        "http://127.0.0.1:9",
        [{"path": str(inbox)}],
        profiles={"default": {"on_complete": ["python3", "hooks/x.py"]}},
    )

    code = main(["check", "-c", str(config)])

    assert 2 == code
    assert (
        f"ocrwatch: {config}: profiles.default.on_complete: the program must be an "
        "absolute path (`python3` is not)"
    ) in capsys.readouterr().err


def test_the_environment_is_an_allowlist():
    """Only PATH, LANG, LC_*, TZ, HOME, USER and LOGNAME pass from the daemon to a hook."""
    base = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "HOME": "/var/lib/ocrwatch",
        "USER": "ocrwatch",
        "LOGNAME": "ocrwatch",
        "HTTPS_PROXY": "http://user:pw@proxy:3128",
        "OCRWATCH_CLIENT_SECRET": SECRET,
        "OCRWATCH_EMULATOR_SECRET": SECRET,
        "CREDENTIALS_DIRECTORY": "/run/credentials/ocrwatch.service",
        "NOTIFY_SOCKET": "/run/systemd/notify",
    }

    passed = passed_env(base)

    assert ["HOME", "LANG", "LC_ALL", "LOGNAME", "PATH", "TZ", "USER"] == sorted(passed)


def _call(script: str, timeout_s: float = 10.0):
    return hook_call(["/bin/sh", "-c", script], Path("/x.png"), "g", [], timeout_s, "p")


def test_a_flood_on_stderr_costs_no_memory(tmp_path):
    """A hook writing 150 MB to stderr: only its tail is kept (the process grows by far less
    than the flood), and the failure's log line still shows its last words."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        textwrap.dedent(
            """
            import json, resource, sys
            from pathlib import Path
            from structlog.testing import capture_logs
            from ocrwatch.hooks import hook_call, run_hook

            def rss_mb():
                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

            def call(script):
                return hook_call(["/bin/sh", "-c", script], Path("/x.png"), "g", [], 30, "p")

            with capture_logs():
                run_hook(call("echo warm-up >&2; exit 1"))
            before = rss_mb()
            flood = "head -c 150000000 /dev/zero >&2; echo the end >&2; exit 1"
            with capture_logs() as logs:
                ok = run_hook(call(flood))
            grown = rss_mb() - before
            print(json.dumps({"ok": ok, "grown_mb": grown, "stderr": logs[-1]["stderr"][-7:]}))
            """
        )
    )

    proc = subprocess.run(
        [sys.executable, str(probe)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    seen = json.loads(proc.stdout)
    assert (False, "the end") == (seen["ok"], seen["stderr"])
    assert seen["grown_mb"] < 30, seen  # the whole flood would be 150 MB and more


def test_a_hook_ends_when_its_process_exits(tmp_path):
    """A hook that leaves a daemon (own session) holding its stderr: it counts as done when it
    exits 0, not when that daemon lets go of the pipe, and is not logged as killed."""
    pidfile = tmp_path / "daemon.pid"
    call = _call(f"setsid sleep 30 & echo $! > {pidfile}; exit 0", timeout_s=20)
    try:
        with capture_logs() as logs:
            started = time.monotonic()
            ok = run_hook(call)
            took = time.monotonic() - started

        assert ok
        assert took < 5, took
        assert ["hook.completed"] == [e["event"] for e in logs]
    finally:
        _kill(pidfile)


def test_stop_is_bounded_by_its_timeout(tmp_path):
    """stop(1.0) with a hook whose daemon holds its stderr: it returns within seconds."""
    pidfile = tmp_path / "daemon.pid"
    runner = HookRunner()
    try:
        runner.start(_call(f"setsid sleep 30 & echo $! > {pidfile}; sleep 30"))
        wait_until(
            lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the hook"
        )

        started = time.monotonic()
        runner.stop(1.0)
        took = time.monotonic() - started

        assert took < 1.0 + STOP_GRACE_S + 1, took
    finally:
        _kill(pidfile)


def test_no_queued_hook_starts_once_stop_began(tmp_path):
    """Hooks still queued when a stop begins never start, even while the stop waits for the
    running one to end."""
    marks = tmp_path / "marks"
    marks.mkdir()
    runner = HookRunner(threads=1)
    runner.start(_call("sleep 0.5"))
    for i in range(3):
        runner.start(_call(f"touch {marks}/{i}"))

    runner.stop(5.0)

    assert [] == sorted(p.name for p in marks.iterdir())


def _kill(pidfile: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_the_hook_is_the_files_effective_profiles(emulator, tmp_path, inbox, hook):
    """A `.ocrwatch.yaml` switching a folder to a profile without a hook: its files get their
    results and no hook, while the rest of the watched folder keeps its hook."""
    script, out = hook
    config = write_config(
        tmp_path / "config.yaml",
        emulator.url,
        [{"path": str(inbox), "settle_seconds": 0.2, "profile": "office"}],
        shutdown_timeout=2,
        profiles={
            "office": {
                "fetch_results": True,
                "on_complete": [sys.executable, str(script), str(out)],
            },
            "private": {"fetch_results": True},
        },
    )
    hr = inbox / "hr"
    hr.mkdir()
    (hr / ".ocrwatch.yaml").write_text("profile: private\n")
    salary, memo = hr / "salary.png", inbox / "memo.png"

    with daemon_thread(config):
        salary.write_bytes(png_bytes(50))
        wait_until((hr / "salary.png.txt").exists, 20, "the salary's text")
        memo.write_bytes(png_bytes(51))
        wait_until((out / "memo.png.json").exists, 20, "the memo's hook")

    assert not (out / "salary.png.json").exists()
    assert (
        "office"
        == json.loads((out / "memo.png.json").read_text())["env"]["OCRWATCH_PROFILE"]
    )
