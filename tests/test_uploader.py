"""Uploads in child processes: the `.guid`, tokens from the parent, forwarded logs, a killed child."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from ocrwatch.client import OcrClient
from ocrwatch.config import ApiConfig, Credentials, parse_config
from ocrwatch.errors import AuthError, RejectedError, TransientApiError
from ocrwatch.settings import Settings
from ocrwatch.uploader import LocalUploader, ProcessUploader

from .conftest import CLIENT_ID, SECRET, fetch_token, wait_until
from .images import write_png


def make_client(
    url: str, tmp_path: Path, secret: str = SECRET
) -> tuple[OcrClient, ApiConfig]:
    config = parse_config(
        {
            "api": {"base_url": url, "retry": {"max_attempts": 3, "max_delay": 0.2}},
            "state_dir": str(tmp_path / "state"),
            "folders": [{"path": str(tmp_path / "in")}],
        },
        "test",
    )
    return OcrClient(config.api, Credentials(CLIENT_ID, SecretStr(secret))), config.api


def make_uploader(
    url: str, tmp_path: Path, *, slots: int = 1, secret: str = SECRET
) -> tuple[ProcessUploader, OcrClient]:
    client, config_api = make_client(url, tmp_path, secret)
    staging = tmp_path / "staging"
    staging.mkdir()
    up = ProcessUploader(
        config_api,
        client.tokens,
        slots,
        fallback=LocalUploader(client, slots, staging=staging),
        staging=staging,
    )
    assert up.wait_started(30)
    return up, client


@pytest.fixture
def uploader(emulator, tmp_path) -> Iterator[ProcessUploader]:
    up, _ = make_uploader(emulator.url, tmp_path)
    yield up
    up.close()


def child_pids(up: ProcessUploader) -> list[int]:
    return [c.process.pid for c in up._children if c.process.pid is not None]


def test_a_child_submits_and_writes_the_guid(emulator, uploader, tmp_path):
    """The sidecar appears next to the file and the emulator got exactly the file's bytes."""
    path = write_png(tmp_path / "a.png", seed=1)

    upload = uploader.upload(path, Settings(language="German"))

    sub = upload.submission
    assert upload.sidecar_error is None
    assert f"{sub.guid}\n" == (tmp_path / "a.png.guid").read_text()
    [received] = emulator.submissions()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == received["image_sha256"]
    assert "German" == received["settings"]["language"]
    assert [] == list((tmp_path / "staging").iterdir())  # nothing left behind there


def test_a_rejected_file_raises_in_the_parent(uploader, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")

    with pytest.raises(RejectedError, match="the file is empty"):
        uploader.upload(empty, Settings())


def test_after_a_401_the_child_gets_its_new_token_from_the_parent(emulator, tmp_path):
    """Tokens revoked mid-run: one refresh for the whole daemon, asked for over the pipe."""
    up, client = make_uploader(emulator.url, tmp_path, slots=2)
    try:
        files = [write_png(tmp_path / f"{i}.png", seed=i) for i in range(6)]
        for path in files[:3]:
            up.upload(path, Settings())
        emulator.expire_tokens()
        for path in files[3:]:
            up.upload(path, Settings())
    finally:
        up.close()

    statuses = [
        r["status"] for r in emulator.received if r["path"].endswith("RecognizeImage")
    ]
    assert 6 == statuses.count(200)
    assert 1 == statuses.count(401)
    assert 2 == emulator.token_calls
    assert client.tokens is not None
    # the parent's cache holds the new token
    assert client.tokens.get() == emulator.issued_tokens()[-1]


def test_refused_credentials_raise_before_anything_is_sent(emulator, tmp_path):
    up, _ = make_uploader(emulator.url, tmp_path, secret="wrong")
    try:
        with pytest.raises(AuthError, match=r"check api\.client_id"):
            up.upload(write_png(tmp_path / "a.png", seed=1), Settings())
    finally:
        up.close()
    assert [] == emulator.submissions()
    assert 1 == emulator.token_calls


def test_the_childs_retry_log_lines_are_logged_by_the_parent(
    emulator, uploader, tmp_path
):
    emulator.fail_next(503)

    with capture_logs() as logs:
        uploader.upload(write_png(tmp_path / "a.png", seed=1), Settings())

    [retry] = [e for e in logs if e["event"] == "submission.retry_scheduled"]
    assert "the service answered HTTP 503" == retry["error"]
    assert str(tmp_path / "a.png") == retry["path"]


def test_a_killed_child_fails_one_upload_as_transient_and_is_replaced(
    emulator, uploader, tmp_path
):
    """The OOM killer takes a child: that file is retried later, the next one goes through."""
    [pid] = child_pids(uploader)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: _gone(pid), 10, "the child to die")

    with (
        capture_logs() as logs,
        pytest.raises(TransientApiError, match="upload process stopped"),
    ):
        uploader.upload(write_png(tmp_path / "a.png", seed=1), Settings())
    upload = uploader.upload(write_png(tmp_path / "b.png", seed=2), Settings())

    assert (tmp_path / "b.png.guid").read_text() == f"{upload.submission.guid}\n"
    assert [pid] != child_pids(uploader)
    assert ["uploader.child_died"] == [e["event"] for e in logs]


class FlakyTokens:
    """A token source that breaks (a bug, not an API error) when asked for a second token."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.token: str | None = None
        self.fetches = 0

    def get(self) -> str:
        if self.token is None:
            self.fetches += 1
            if self.fetches == 2:
                raise RuntimeError("bug in the token source")
            self.token = fetch_token(self.url)
        return self.token

    def invalidate(self, token: str) -> None:
        if token == self.token:
            self.token = None


def test_a_child_cut_off_mid_conversation_is_not_reused(emulator, tmp_path):
    """The child still waits for its token when the parent gives up: a new child takes the slot."""
    up, _ = make_uploader(emulator.url, tmp_path)
    up._tokens = FlakyTokens(emulator.url)
    try:
        [first] = child_pids(up)
        up.upload(write_png(tmp_path / "a.png", seed=1), Settings())
        emulator.expire_tokens()
        with pytest.raises(RuntimeError, match="bug in the token source"):
            up.upload(write_png(tmp_path / "b.png", seed=2), Settings())
        upload = up.upload(write_png(tmp_path / "c.png", seed=3), Settings())
        after = child_pids(up)
    finally:
        up.close()

    assert first not in after
    assert 1 == len(after)
    assert (tmp_path / "c.png.guid").read_text() == f"{upload.submission.guid}\n"
    assert not (tmp_path / "b.png.guid").exists()


def test_without_child_processes_uploads_go_through_the_fallback(emulator, tmp_path):
    """Children that cannot be started (here: an API config that cannot be sent to them) are
    reported once, and every upload is still done, in threads."""
    client, _ = make_client(emulator.url, tmp_path)
    unsendable = SimpleNamespace(lock=threading.Lock())
    with capture_logs() as logs:
        up = ProcessUploader(
            unsendable,  # type: ignore[arg-type]
            client.tokens,
            2,
            fallback=LocalUploader(client, 2),
        )
        assert up.wait_started(30)
    try:
        upload = up.upload(write_png(tmp_path / "a.png", seed=1), Settings())
        started = child_pids(up)
    finally:
        up.close()

    assert [] == started
    assert (tmp_path / "a.png.guid").read_text() == f"{upload.submission.guid}\n"
    [warning] = [e for e in logs if e["event"] == "uploader.processes_unavailable"]
    assert "threads" == warning["fallback"]


def test_close_stops_every_child(emulator, tmp_path):
    up, _ = make_uploader(emulator.url, tmp_path, slots=3)
    pids = child_pids(up)
    assert 3 == len(pids)

    up.close()

    assert all(_gone(pid) for pid in pids)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] == "Z"  # a zombie until the parent reaps it
    except FileNotFoundError:
        return True
