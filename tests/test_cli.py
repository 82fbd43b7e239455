"""`ocrwatch submit`, `check` and `status` as a user runs them: subprocesses against the emulator."""

from __future__ import annotations

import argparse
import json
import subprocess
from typing import Any

import yaml
from pydantic import SecretStr

from ocrwatch.client import OcrClient
from ocrwatch.config import ApiConfig, Credentials
from ocrwatch.settings import Settings

from .conftest import OCRWATCH, SECRET, cli_env, run_on_a_terminal, write_config
from .images import write_png


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OCRWATCH, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        check=False,
    )


def log_events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_submit_writes_sidecars_and_skips_them_next_time(config_file, inbox, emulator):
    """Every image gets a .guid holding the emulator's GUID; a second run submits nothing."""
    files = [write_png(inbox / f"scan-{i:04d}.png", i) for i in range(6)]
    write_png(inbox / "sub" / "deep.png", 99)

    first = run("submit", "-c", str(config_file), str(inbox))
    second = run("submit", "-c", str(config_file), str(inbox))

    guids = {r["guid"] for r in emulator.submissions()}
    written = {
        (f.parent / (f.name + ".guid")).read_text().strip()
        for f in [*files, inbox / "sub" / "deep.png"]
    }
    assert (0, 0) == (first.returncode, second.returncode)
    assert (
        "submitted 7, reused 0, skipped 0 (sidecar present), failed 0"
        == first.stdout.splitlines()[0]
    )
    assert (
        "submitted 0, reused 0, skipped 7 (sidecar present), failed 0"
        == second.stdout.splitlines()[0]
    )
    assert guids == written
    assert 7 == len(emulator.submissions())


def test_submit_logs_one_event_per_file_with_context(config_file, inbox, emulator):
    """job.submitted carries path, profile, guid, attempts, bytes and duration."""
    path = write_png(inbox / "a.png", 1)

    result = run("submit", "-c", str(config_file), str(path))

    [event] = [e for e in log_events(result.stderr) if e["event"] == "job.submitted"]
    assert {
        "path",
        "profile",
        "guid",
        "attempts",
        "bytes",
        "duration_ms",
        "level",
        "timestamp",
    } <= set(event)
    assert (str(path), "default", path.stat().st_size) == (
        event["path"],
        event["profile"],
        event["bytes"],
    )


def test_submit_content_changed_after_sidecar_is_sent_again(
    config_file, inbox, emulator
):
    """A file rewritten after its sidecar gets a new task and a replaced sidecar."""
    path = write_png(inbox / "a.png", 1)
    run("submit", "-c", str(config_file), str(path))
    old = (inbox / "a.png.guid").read_text()
    import os

    write_png(path, 2)
    st = path.stat()
    os.utime(
        path,
        ns=(st.st_atime_ns, (inbox / "a.png.guid").stat().st_mtime_ns + 1_000_000_000),
    )

    result = run("submit", "-c", str(config_file), str(path))

    assert 0 == result.returncode
    assert 2 == len(emulator.submissions())
    assert old != (inbox / "a.png.guid").read_text()


def test_bad_files_get_error_sidecars_and_the_rest_go_through(
    config_file, inbox, emulator
):
    """Empty and non-image files get .error with the reason; good ones still get .guid; exit 1."""
    write_png(inbox / "good.png", 1)
    (inbox / "empty.png").write_bytes(b"")
    (inbox / "notes.png").write_text("not an image")

    result = run("submit", "-c", str(config_file), str(inbox))

    assert 1 == result.returncode
    assert (
        "submitted 1, reused 0, skipped 0 (sidecar present), failed 2"
        == result.stdout.splitlines()[0]
    )
    assert (
        "the file is empty so far; not sent\n"
        == (inbox / "empty.png.error").read_text()
    )
    assert (inbox / "notes.png.error").read_text().startswith("not a supported image")
    assert (inbox / "good.png.guid").exists()


def test_bad_credentials_exit_1_after_one_token_call(tmp_path, inbox, emulator):
    """Refused credentials: one token call, no uploads, no .error files, and a clear reason."""
    for i in range(10):
        write_png(inbox / f"s{i}.png", i)
    config = write_config(
        tmp_path / "c.yaml",
        emulator.url,
        [{"path": str(inbox)}],
        api={"client_secret": "wrong"},
    )

    result = run("submit", "-c", str(config), str(inbox))

    assert 1 == result.returncode
    assert 1 == emulator.token_calls
    assert [] == emulator.submissions()
    assert [] == list(inbox.glob("*.error"))
    assert (
        "refused client_id `test-client` (HTTP 400, invalid_client); check api.client_id and the client secret"
        in result.stdout
    )


def test_unknown_profile_option_is_usage_error(config_file, inbox):
    """--profile must name a configured profile: exit 2, one line."""
    result = run("submit", "-c", str(config_file), "--profile", "nope", str(inbox))

    assert 2 == result.returncode
    assert [
        "ocrwatch: --profile: unknown profile `nope`; known: default"
    ] == result.stderr.splitlines()


def test_config_error_from_cli_is_one_line_exit_2_no_traceback(tmp_path, emulator):
    """A bad key in the config file: exit 2, one stderr sentence, no traceback."""
    config = write_config(
        tmp_path / "c.yaml",
        emulator.url,
        [{"path": str(tmp_path), "setle_seconds": 1}],
        state_dir=str(tmp_path.parent / "st"),
    )

    for command in ("check", "submit", "run"):
        args = [command, "-c", str(config)] + (
            [str(tmp_path)] if command == "submit" else []
        )
        result = run(*args)

        assert (
            2,
            [
                f"ocrwatch: {config}: folders[0].setle_seconds: unknown key; did you mean `settle_seconds`?"
            ],
        ) == (result.returncode, result.stderr.splitlines())


def test_check_prints_each_folder_with_resolved_profile(tmp_path, emulator):
    """check shows each folder, its profile and the settings that will be sent."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    config = write_config(
        tmp_path / "c.yaml",
        emulator.url,
        [{"path": str(a)}, {"path": str(b), "profile": "invoices-de", "polling": True}],
        profiles={
            "default": {"language": "English"},
            "invoices-de": {
                "extends": "default",
                "language": "German",
                "makeSpellCheck": True,
            },
        },
    )

    result = run("check", "-c", str(config))

    assert 0 == result.returncode
    assert '  profile: default {"language": "English"}' in result.stdout
    assert (
        '  profile: invoices-de {"language": "German", "makeSpellCheck": true}'
        in result.stdout
    )
    assert f"folder: {b}  (missing: will be watched once it appears)" in result.stdout
    assert "polling every 10s" in result.stdout


def test_check_online_fetches_one_token_and_names_the_url_on_failure(
    tmp_path, emulator
):
    """--online: a working config fetches one token and uploads nothing; a wrong secret or
    a wrong port is exit 1 with one sentence naming the URL, after one token call."""
    folder = tmp_path / "in"
    folder.mkdir()
    good = write_config(tmp_path / "good.yaml", emulator.url, [{"path": str(folder)}])
    dead_url = "http://127.0.0.1:9"  # the discard port: nothing listens
    dead = write_config(tmp_path / "dead.yaml", dead_url, [{"path": str(folder)}])

    ok = run("check", "--online", "-c", str(good))
    offline = run(
        "check", "-c", str(good), env=cli_env(OCRWATCH_CLIENT_SECRET="wrong-secret")
    )
    refused = run(
        "check",
        "--online",
        "-c",
        str(good),
        env=cli_env(OCRWATCH_CLIENT_SECRET="wrong-secret"),
    )
    unreachable = run("check", "--online", "-c", str(dead))

    token_url = f"{emulator.url}/connect/token"
    assert 0 == ok.returncode, ok.stderr
    assert f"online: {token_url} issued a token; the credentials work" in ok.stdout
    assert 0 == offline.returncode  # without --online nothing is asked of the service
    assert 1 == refused.returncode
    assert [
        f"ocrwatch: check --online: {token_url}: the token endpoint refused client_id "
        "`test-client` (HTTP 400, invalid_client); check api.client_id and the client secret"
    ] == [line for line in refused.stderr.splitlines() if not line.startswith("{")]
    assert 1 == unreachable.returncode
    assert (
        f"ocrwatch: check --online: the token endpoint at {dead_url}/connect/token "
        "cannot be reached (ConnectionError)" in unreachable.stderr
    )
    assert "Traceback" not in refused.stderr + unreachable.stderr
    assert "wrong-secret" not in refused.stdout + refused.stderr
    assert [] == emulator.submissions()
    assert 2 == emulator.token_calls


def test_status_before_any_journal(config_file):
    """status with no journal yet says so and exits 0."""
    result = run("status", "-c", str(config_file), "--json")

    assert (0, False) == (result.returncode, json.loads(result.stdout)["exists"])


def test_secret_and_tokens_never_appear_in_any_output(tmp_path, inbox, emulator):
    """A full cycle with a forced 401 and a rejected file leaks neither the secret nor any token."""
    for i in range(5):
        write_png(inbox / f"s{i}.png", i)
    (inbox / "bad.png").write_text("nope")
    config = write_config(tmp_path / "c.yaml", emulator.url, [{"path": str(inbox)}])
    data = yaml.safe_load(config.read_text())
    del data["api"]["client_secret"]
    config.write_text(yaml.safe_dump(data))
    env = cli_env(OCRWATCH_CLIENT_SECRET=SECRET)
    emulator.fail_next(401)  # forces the invalidate-and-refresh path mid-run

    outputs = [
        run("submit", "-c", str(config), "--log-level", "debug", str(inbox), env=env),
        run("check", "-c", str(config), "--log-level", "debug", env=env),
        run("status", "-c", str(config), env=env),
        run("status", "-c", str(config), "--json", env=env),
    ]
    written = "".join(p.read_text() for p in inbox.glob("*.error")) + "".join(
        p.read_text() for p in inbox.glob("*.guid")
    )

    tokens = emulator.issued_tokens()
    everything = "".join(o.stdout + o.stderr for o in outputs) + written
    assert 2 == emulator.token_calls
    assert tokens
    assert SECRET not in everything
    assert not [t for t in tokens if t in everything]
    assert 1 == outputs[0].returncode
    assert 5 == len(list(inbox.glob("*.guid")))


def test_missing_path_is_reported_not_crashed(config_file, inbox):
    """A path that does not exist fails that path with a reason that says so."""
    missing = inbox / "nope.png"

    result = run("submit", "-c", str(config_file), str(missing))

    assert (1, ["submitted 0, reused 0, skipped 0 (sidecar present), failed 1"]) == (
        result.returncode,
        result.stdout.splitlines()[:1],
    )
    assert f"  failed: {missing}: no such file or folder; check the path" in (
        result.stdout.splitlines()
    )


def test_emulator_command_prints_url_first_and_exits_0_on_sigterm(tmp_path):
    """`ocrwatch emulator --port 0` prints the bound URL first, serves, and exits 0 on SIGTERM."""
    import signal

    from .conftest import fetch_token

    proc = subprocess.Popen(
        [
            *OCRWATCH,
            "emulator",
            "--port",
            "0",
            "--client-id",
            "test-client",
            "--client-secret",
            SECRET,
            "--log",
            str(tmp_path / "e.jsonl"),
            "--task-error",
            "1",
            "--task-warning",
            "Skewed.",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        token = fetch_token(url)
        client = OcrClient(
            ApiConfig(base_url=url),
            Credentials("test-client", SecretStr(SECRET)),
        )
        sub = client.submit(write_png(tmp_path / "a.png", 1), Settings())
        task = client.wait_for_result(sub.guid)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()

    assert url.startswith("http://127.0.0.1:")
    assert 3 == len(token.split("."))
    assert 0 == code
    assert '"path": "/connect/token"' in (tmp_path / "e.jsonl").read_text()
    assert ("Error", ("Skewed.",)) == (task.status, task.warnings)
    assert task.messages


def test_submit_on_a_terminal_shows_a_progress_bar(config_file, inbox, emulator):
    """On a TTY, submit draws a progress bar (and keeps info logs quiet); the summary still follows."""
    for i in range(3):
        write_png(inbox / f"s{i}.png", i)
    code, text = run_on_a_terminal(
        ["submit", "-c", str(config_file), str(inbox)], cli_env()
    )

    assert 0 == code
    assert "3/3" in text
    assert "submitted 3, reused 0, skipped 0 (sidecar present), failed 0" in text
    assert "job.submitted" not in text


def test_status_shows_what_submit_did(config_file, inbox, emulator):
    """submit records into run's journal: status counts its files and shows its rejection."""
    write_png(inbox / "a.png", 1)
    write_png(inbox / "b.png", 2)
    (inbox / "bad.png").write_text("nope")

    submitted = run("submit", "-c", str(config_file), str(inbox))
    status = run("status", "-c", str(config_file), "--json")

    report = json.loads(status.stdout)
    assert (1, 0) == (submitted.returncode, status.returncode)
    assert (2, 1, 0) == (
        report["counts"]["submitted"],
        report["counts"]["rejected"],
        report["queue_depth"],
    )
    assert [str(inbox / "bad.png")] == [f["path"] for f in report["recent_failures"]]


def test_a_lost_guid_is_restored_from_the_journal_not_paid_again(
    config_file, inbox, emulator
):
    """submit, delete the .guid, submit again: the journal's GUID comes back, one upload in all."""
    path = write_png(inbox / "a.png", 1)
    run("submit", "-c", str(config_file), str(path))
    guid = (inbox / "a.png.guid").read_text()
    (inbox / "a.png.guid").unlink()

    again = run("submit", "-c", str(config_file), str(path))

    assert (0, "submitted 0, reused 0, skipped 1 (sidecar present), failed 0") == (
        again.returncode,
        again.stdout.splitlines()[0],
    )
    assert guid == (inbox / "a.png.guid").read_text()
    assert 1 == len(emulator.submissions())


def test_submit_leaves_a_file_in_flight_in_run_alone(tmp_path, inbox):
    """The daemon is uploading a file when submit is asked for it too: submit waits for the
    daemon's outcome and reports it; one upload, one GUID."""
    from ocrwatch.emulator import Emulator

    from .conftest import CLIENT_ID, wait_until
    from .daemon_harness import journal_entry, spawn, stop

    with Emulator(client_id=CLIENT_ID, client_secret=SECRET, latency_s=1.0) as emu:
        config = write_config(
            tmp_path / "config.yaml",
            emu.url,
            [{"path": str(inbox), "settle_seconds": 0.2}],
        )
        proc = spawn(config, tmp_path / "run.log", wait_started=True)
        path = write_png(inbox / "a.png", 1)
        wait_until(
            lambda: (
                (e := journal_entry(tmp_path / "state", path)) is not None
                and e.state == "submitting"
            ),
            15,
            "the daemon's upload in flight",
        )

        result = run("submit", "-c", str(config), str(path))
        wait_until(lambda: (inbox / "a.png.guid").exists(), 15, "the daemon's .guid")
        assert 0 == stop(proc)
        sent = emu.submissions()

    assert (0, "submitted 0, reused 0, skipped 1 (sidecar present), failed 0") == (
        result.returncode,
        result.stdout.splitlines()[0],
    )
    assert (
        [f"{sent[0]['guid']}\n"]
        == [s["guid"] + "\n" for s in sent]
        == [(inbox / "a.png.guid").read_text()]
    )


def test_a_file_a_killed_submit_left_claimed_is_sent_by_the_next_one(
    config_file, inbox, emulator
):
    """kill -9 of `submit` mid-upload loses no file: its claim dies with it."""
    import sqlite3

    from ocrwatch.config import load_config
    from ocrwatch.journal import Job, Journal, owner_of

    path = write_png(inbox / "a.png", 1)
    st = path.stat()
    journal = Journal(load_config(config_file).journal_path)
    journal.claim_file(Job(path, inbox, st.st_size, st.st_mtime_ns), 0.0)
    journal.close()
    db = sqlite3.connect(load_config(config_file).journal_path)
    db.execute("UPDATE files SET claimed_by=?", (owner_of(2**22 + 1),))  # gone
    db.commit()
    db.close()

    result = run("submit", "-c", str(config_file), str(path))

    assert (0, "submitted 1, reused 0, skipped 0 (sidecar present), failed 0") == (
        result.returncode,
        result.stdout.splitlines()[0],
    )
    assert 1 == len(emulator.submissions())


def test_a_reader_that_left_gets_no_traceback(config_file):
    """`ocrwatch check | head -2`: the pipe is closed before check writes; no traceback."""
    proc = subprocess.Popen(
        [*OCRWATCH, "check", "-c", str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=30)

    assert b"Traceback" not in err
    assert b"BrokenPipeError" not in err
    assert 141 == proc.returncode


def test_every_subcommand_help_has_a_description_and_the_emulator_its_defaults():
    """`ocrwatch X --help` says what X does; the emulator's help names its defaults and
    offers no `-c`, which it does not read."""
    from ocrwatch.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    subparsers: dict[str, argparse.ArgumentParser] = dict(action.choices or {})
    for name, sub in subparsers.items():
        assert len(sub.description or "") > 40, name
    emulator_help = subparsers["emulator"].format_help()
    assert "--config" not in emulator_help
    assert "(default: 8089)" in emulator_help
    assert "(default: emulator)" in emulator_help


def test_emulator_mistakes_are_one_sentence_not_a_traceback():
    """A taken port or a missing TLS file: exit 2 and one line."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run("emulator", "--port", str(port))
    no_cert = run(
        "emulator", "--port", "0", "--tls-cert", "/nonexistent", "--tls-key", "/x"
    )

    assert (
        2,
        [
            f"ocrwatch: emulator: cannot listen on 127.0.0.1:{port} (Address already in use); "
            "choose another --port, or --port 0 for a free one"
        ],
    ) == (busy.returncode, busy.stderr.splitlines())
    assert (
        2,
        ["ocrwatch: --tls-cert: /nonexistent is not a file; give a PEM file"],
    ) == (
        no_cert.returncode,
        no_cert.stderr.splitlines(),
    )
