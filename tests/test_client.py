"""The Aspose client against the emulator over loopback: tokens, retries, bodies, bad input."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import SecretStr

from ocrwatch.auth import TokenCache
from ocrwatch.client import (
    ImageBody,
    OcrClient,
    error_for_status,
    parse_task_id,
    payload_frame,
)
from ocrwatch.config import Credentials, parse_config
from ocrwatch.errors import AuthError, RejectedError, TransientApiError
from ocrwatch.retry import RetryPolicy, next_attempt_at, parse_retry_after
from ocrwatch.settings import Settings

from .conftest import CLIENT_ID, SECRET
from .images import HEADERS, png_bytes, write_png


def make_client(
    url,
    *,
    sleeps=None,
    secret=SECRET,
    trial=False,
    max_attempts=6,
    max_delay=120.0,
    timeout=None,
):
    api = {
        "base_url": url,
        "trial": trial,
        "retry": {"max_attempts": max_attempts, "max_delay": max_delay},
    }
    if timeout:
        api["timeout"] = timeout
    config = parse_config(
        {"api": api, "state_dir": "/tmp/x", "folders": [{"path": "/srv/in"}]}, "test"
    )
    creds = None if trial else Credentials(CLIENT_ID, SecretStr(secret))
    policy = RetryPolicy(
        max_attempts=max_attempts,
        max_delay_s=max_delay,
        sleep=sleeps.append if sleeps is not None else time.sleep,
    )
    return OcrClient(config.api, creds, policy=policy)


def images(folder: Path, n: int, start: int = 0) -> list[Path]:
    return [
        write_png(folder / f"scan-{i:04d}.png", seed=i) for i in range(start, start + n)
    ]


class TestTokens:
    def test_one_token_call_for_50_submissions_at_concurrency_8(
        self, emulator, tmp_path
    ):
        """Concurrent workers share one cached token: the token endpoint is called once."""
        client = make_client(emulator.url)
        files = images(tmp_path, 50)

        with ThreadPoolExecutor(8) as pool:
            subs = list(pool.map(lambda p: client.submit(p, Settings()), files))

        assert 50 == len({s.guid for s in subs})
        assert 1 == emulator.token_calls

    def test_token_refreshed_after_expiry(self, tmp_path):
        """A token past its lifetime is replaced before use (emulator TTL 1 s)."""
        from ocrwatch.emulator import Emulator

        with Emulator(client_id=CLIENT_ID, client_secret=SECRET, token_ttl_s=1) as emu:
            client = make_client(emu.url)
            client.submit(write_png(tmp_path / "a.png", 1), Settings())
            first = emu.issued_tokens()
            deadline = time.monotonic() + 1.2
            from .conftest import wait_until

            wait_until(lambda: time.monotonic() > deadline, 3, "token lifetime passed")
            client.submit(write_png(tmp_path / "b.png", 2), Settings())

            assert 2 == emu.token_calls
            assert 200 == emu.submissions()[-1]["status"]
            assert first != emu.issued_tokens()

    def test_401_mid_run_recovers_with_one_new_token(self, emulator, tmp_path):
        """Tokens revoked mid-run: the next call gets 401, refreshes once, and succeeds."""
        client = make_client(emulator.url)
        files = images(tmp_path, 10)
        for path in files[:5]:
            client.submit(path, Settings())

        emulator.expire_tokens()
        for path in files[5:]:
            client.submit(path, Settings())

        statuses = [
            r["status"]
            for r in emulator.received
            if r["path"].endswith("RecognizeImage")
        ]
        assert 10 == statuses.count(200)
        assert 1 == statuses.count(401)
        assert 2 == emulator.token_calls

    def test_bad_credentials_fail_fast_after_one_token_call(self, emulator, tmp_path):
        """A refused secret raises AuthError naming the fix, and is not retried against the token endpoint."""
        client = make_client(emulator.url, secret="wrong")
        files = images(tmp_path, 5)

        errors = []
        for path in files:
            with pytest.raises(AuthError) as info:
                client.submit(path, Settings())
            errors.append(str(info.value))

        assert 1 == emulator.token_calls
        assert errors[0].startswith(
            f"the token endpoint refused client_id `{CLIENT_ID}` (HTTP 400, invalid_client)"
        )
        assert "check api.client_id and the client secret" in errors[0]
        assert [] == emulator.submissions()

    def test_second_401_after_refresh_is_auth_error(self, tmp_path):
        """If a fresh token is refused too, the request is not retried a third time."""
        from ocrwatch.emulator import Emulator

        with Emulator(client_id=CLIENT_ID, client_secret=SECRET, token_ttl_s=0) as emu:
            client = make_client(emu.url)
            with pytest.raises(AuthError, match="refused a freshly issued token"):
                client.submit(write_png(tmp_path / "a.png"), Settings())

            assert 2 == emu.token_calls

    def test_token_cache_refetches_only_within_margin_of_expiry(self):
        """A token is reused until 60 s before it expires, then fetched anew."""
        now = 0.0
        fetched: list[float] = []

        def fetch():
            fetched.append(now)
            return f"t{len(fetched)}", 3600.0

        tokens = TokenCache(fetch, clock=lambda: now)
        first = tokens.get()
        now = 3539.0
        still_first = tokens.get()
        now = 3540.0
        second = tokens.get()

        assert ("t1", "t1", "t2") == (first, still_first, second)
        assert [0.0, 3540.0] == fetched

    def test_a_caller_waiting_for_another_callers_fetch_hears_every_second(self):
        """While one worker fetches the token (a slow endpoint), the others wait their turn
        and say so every WAIT_SLICE_S: the watchdog sees them alive, not wedged."""
        import threading

        from ocrwatch.auth import WAIT_SLICE_S

        release = threading.Event()
        fetching = threading.Event()

        def fetch():
            fetching.set()
            release.wait(10)
            return "t1", 3600.0

        tokens = TokenCache(fetch)
        first = threading.Thread(target=tokens.get)
        first.start()
        assert fetching.wait(5)
        waits: list[float] = []
        timer = threading.Timer(2.5 * WAIT_SLICE_S, release.set)
        timer.start()

        token = tokens.get(on_wait=lambda: waits.append(time.monotonic()))
        first.join(5)
        timer.cancel()

        assert "t1" == token
        assert 2 <= len(waits) <= 3

    def test_token_cache_remembers_refusal_until_retry_after(self):
        """After a refusal, no new fetch happens until the refusal's wait is over."""
        now = 0.0
        calls = []

        def fetch():
            calls.append(now)
            raise AuthError("refused", retry_after_s=600)

        tokens = TokenCache(fetch, clock=lambda: now)
        for t in (0.0, 10.0, 599.0, 600.0):
            now = t
            with pytest.raises(AuthError):
                tokens.get()

        assert [0.0, 600.0] == calls

    def test_a_429_is_a_wait_shared_by_every_caller(self):
        """Rate limiting: the endpoint is not asked again before its Retry-After has passed,
        whoever asks; then it is."""
        from ocrwatch.errors import TokenRateLimitError

        now = 0.0
        calls: list[float] = []

        def fetch():
            calls.append(now)
            if len(calls) == 1:
                raise TokenRateLimitError("slow down", status=429, retry_after_s=2.0)
            return "t", 3600.0

        tokens = TokenCache(fetch, clock=lambda: now)
        with pytest.raises(TokenRateLimitError):
            tokens.get()
        now = 1.0
        with pytest.raises(TokenRateLimitError) as waiting:
            tokens.get()
        now = 2.0
        token = tokens.get()

        assert ([0.0, 2.0], "t", 1.0) == (calls, token, waiting.value.retry_after_s)

    def test_a_429_after_a_refusal_is_the_lockout(self):
        """After refused credentials, a 429 means they are locked out: a refusal, not a wait."""
        from ocrwatch.errors import TokenRateLimitError

        now = 0.0
        answers = [
            AuthError("refused", status=400, retry_after_s=60),
            TokenRateLimitError("429", status=429, retry_after_s=600),
        ]

        def fetch():
            raise answers.pop(0)

        tokens = TokenCache(fetch, clock=lambda: now)
        with pytest.raises(AuthError):
            tokens.get()
        now = 60.0
        with pytest.raises(AuthError, match="locks these credentials out") as info:
            tokens.get()

        assert 600.0 == info.value.retry_after_s

    @pytest.mark.parametrize(
        ("status", "oauth_error", "kind"),
        [
            pytest.param(400, "invalid_client", AuthError, id="invalid-client"),
            pytest.param(401, "invalid_client", AuthError, id="401-invalid-client"),
            pytest.param(
                400, "unsupported_grant_type", TransientApiError, id="other-400"
            ),
            pytest.param(403, None, TransientApiError, id="a-proxy-403-page"),
            pytest.param(502, None, TransientApiError, id="502"),
        ],
    )
    def test_only_invalid_client_is_refused_credentials(
        self, status, oauth_error, kind
    ):
        """A proxy's 403 or an odd 400 is waited out; it does not pause all uploads."""
        from ocrwatch.auth import error_for_token_status

        error = error_for_token_status(status, None, CLIENT_ID, oauth_error)

        assert kind is type(error)

    def test_a_token_429_wait_is_capped_by_max_delay(self):
        """Retry-After: 600 from the token endpoint: asked again after retry.max_delay."""
        from ocrwatch.errors import TokenRateLimitError

        now = 0.0
        calls: list[float] = []

        def fetch():
            calls.append(now)
            raise TokenRateLimitError("429", status=429, retry_after_s=600)

        tokens = TokenCache(fetch, clock=lambda: now, max_wait_s=5)
        for t in (0.0, 4.0, 5.0):
            now = t
            with pytest.raises(TokenRateLimitError):
                tokens.get()

        assert [0.0, 5.0] == calls

    def test_invalidate_ignores_a_token_already_replaced(self):
        """A late 401 for an old token does not throw away the new one (no refresh storms)."""
        n = iter(range(10))
        tokens = TokenCache(lambda: (f"t{next(n)}", 3600.0), clock=lambda: 0.0)
        old = tokens.get()
        tokens.invalidate(old)
        new = tokens.get()

        tokens.invalidate(old)

        assert ("t0", "t1", "t1") == (old, new, tokens.get())


class TestRetries:
    @pytest.mark.parametrize(
        "fault",
        [
            pytest.param({"rate_503": 0.4}, id="503"),
            pytest.param({"rate_429": 0.4, "retry_after": "0"}, id="429"),
            pytest.param({"rate_drop": 0.4}, id="dropped-connection"),
        ],
    )
    def test_every_submission_succeeds_under_transient_faults(self, tmp_path, fault):
        """With 40 % of uploads failing transiently, every file still gets a task, with backoff between tries."""
        from ocrwatch.emulator import Emulator, Faults

        sleeps: list[float] = []
        with Emulator(
            client_id=CLIENT_ID, client_secret=SECRET, faults=Faults(**fault), seed=7
        ) as emu:
            client = make_client(emu.url, sleeps=sleeps, max_attempts=12)
            subs = [client.submit(p, Settings()) for p in images(tmp_path, 30)]

            faults = [r for r in emu.received if r.get("fault")]
            assert 30 == len({s.guid for s in subs})
            assert faults, "the emulator injected no fault"
            assert len(faults) == len(sleeps)

    def test_backoff_is_jittered_exponential_capped_by_max_delay(
        self, emulator, tmp_path
    ):
        """Waits grow with full jitter and never exceed retry.max_delay."""
        sleeps: list[float] = []
        client = make_client(emulator.url, sleeps=sleeps, max_attempts=6, max_delay=2.0)
        emulator.fail_next(503, times=5)

        client.submit(write_png(tmp_path / "a.png"), Settings())

        assert 5 == len(sleeps)
        assert all(0 <= s <= 2.0 for s in sleeps)

    def test_gives_up_after_max_attempts_with_transient_error(self, emulator, tmp_path):
        """After retry.max_attempts the TransientApiError surfaces, carrying the attempt count."""
        client = make_client(emulator.url, sleeps=[], max_attempts=3)
        emulator.fail_next(503, times=5)

        with pytest.raises(TransientApiError) as info:
            client.submit(write_png(tmp_path / "a.png"), Settings())

        assert (3, 503) == (info.value.attempts, info.value.status)

    def test_retry_after_is_honoured_on_the_wire(self, emulator, tmp_path):
        """A 429 with Retry-After: 1 delays the next upload by at least a second (emulator timestamps)."""
        client = make_client(emulator.url, max_delay=2.0)
        emulator.fail_next(429, retry_after="1")

        client.submit(write_png(tmp_path / "a.png"), Settings())

        posts = [r for r in emulator.received if r["path"].endswith("RecognizeImage")]
        assert [429, 200] == [r["status"] for r in posts]
        assert posts[1]["ts"] - posts[0]["ts"] >= 1.0

    def test_retry_after_beyond_max_delay_hands_back_to_journal(
        self, emulator, tmp_path
    ):
        """A Retry-After longer than max_delay is not slept on: the error carries it for the journal."""
        sleeps: list[float] = []
        client = make_client(emulator.url, sleeps=sleeps, max_delay=5)
        emulator.fail_next(503, retry_after="600")

        with pytest.raises(TransientApiError) as info:
            client.submit(write_png(tmp_path / "a.png"), Settings())

        assert ([], 600.0) == (sleeps, info.value.retry_after_s)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param("120", 120.0, id="seconds"),
            pytest.param("Wed, 25 Nov 2026 16:00:30 GMT", 30.0, id="http-date"),
            pytest.param("Wed, 25 Nov 2026 15:00:00 GMT", 0.0, id="date-in-past"),
            pytest.param("soon", None, id="garbage"),
            pytest.param(None, None, id="absent"),
        ],
    )
    def test_parse_retry_after_both_forms(self, value, expected):
        """Retry-After is read as seconds or as an HTTP date."""
        import datetime as dt

        now = dt.datetime(2026, 11, 25, 16, 0, 0, tzinfo=dt.UTC).timestamp()

        assert expected == parse_retry_after(value, now)

    def test_journal_backoff_grows_to_an_hour_and_respects_retry_after(self):
        """Retry-later delays double from 30 s, cap at 1 h, and are never shorter than Retry-After."""
        delays = [next_attempt_at(n, 0.0, jitter=0) for n in (1, 2, 3, 8, 20)]

        assert [30.0, 60.0, 120.0, 3600.0, 3600.0] == delays
        assert 600.0 == next_attempt_at(1, 0.0, 600.0, jitter=0)

    @pytest.mark.parametrize(
        ("status", "kind"),
        [
            (200, None),
            (400, RejectedError),
            (404, RejectedError),
            (413, RejectedError),
            (415, RejectedError),
            (401, AuthError),
            (403, AuthError),
            (408, TransientApiError),
            (429, TransientApiError),
            (500, TransientApiError),
            (502, TransientApiError),
            (503, TransientApiError),
        ],
    )
    def test_error_for_status(self, status, kind):
        """Only 4xx other than 401/403/408/429 reject the file; the rest are auth or transient."""
        error = error_for_status(status, "detail")

        assert kind is (None if error is None else type(error))

    def test_service_text_echoing_a_bearer_token_is_masked(self):
        """A service message that echoes our Authorization header cannot carry the token into an .error."""
        from ocrwatch.client import problem_detail

        detail = problem_detail(
            '{"title": "Bad Request", "detail": "header was Bearer eyJhb.eyJzd.sig42"}'
        )

        assert "Bad Request - header was Bearer **********" == detail

    def test_rejection_carries_the_service_message(self, emulator, tmp_path):
        """A 400 from the service becomes a RejectedError with its ProblemDetails text."""
        client = make_client(emulator.url)
        path = tmp_path / "fake.png"
        path.write_bytes(HEADERS["gif"] + b"x" * 20)
        emulator.fail_next(415)

        with pytest.raises(
            RejectedError, match=r"rejected by the service \(HTTP 415\): Injected fault"
        ):
            client.submit(path, Settings())


class TestBodies:
    def test_emulator_receives_profile_settings_exactly_and_the_file_sha256(
        self, emulator, tmp_path
    ):
        """Keys, casing (`Rotate`) and enum values go out as configured; the image hash matches the file."""
        client = make_client(emulator.url)
        path = write_png(tmp_path / "a.png", 3)
        settings = Settings(
            language="German",
            rotate=90,
            result_type="TextAndPdf",
            make_spell_check=True,
            make_skew_correct=False,
            dsr_mode="DsrPlusDetector",
            dsr_confidence="MidHigh",
        )

        sub = client.submit(path, settings)

        [received] = emulator.submissions()
        expected = {
            "language": "German",
            "makeSkewCorrect": False,
            "makeSpellCheck": True,
            "dsrMode": "DsrPlusDetector",
            "dsrConfidence": "MidHigh",
            "resultType": "TextAndPdf",
            "Rotate": 90,
        }
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert expected == received["settings"]
        assert digest == received["image_sha256"] == sub.sha256
        assert sub.guid == received["guid"]

    def test_streamed_body_is_valid_json_with_standard_padded_base64(self, tmp_path):
        """The streamed body parses as JSON and its Content-Length is exact, for sizes around chunk edges."""
        for size in (1, 2, 3, 4, 786431, 786432, 786433, 2 * 786432 + 1):
            path = tmp_path / f"f{size}"
            data = b"\x89PNG\r\n\x1a\n" + os.urandom(max(0, size - 8))
            data = data[:size]
            path.write_bytes(data)
            prefix, suffix = payload_frame(Settings(language="English"))
            fd = os.open(path, os.O_RDONLY)
            try:
                body = ImageBody(fd, len(data), prefix, suffix)
                raw = b"".join(body)
            finally:
                os.close(fd)

            parsed = json.loads(raw)
            assert len(body) == len(raw)
            assert data == base64.b64decode(parsed["image"], validate=True)
            assert {"language": "English"} == parsed["settings"]

    def test_trial_mode_uses_trial_endpoint_without_authorization(
        self, emulator, tmp_path
    ):
        """trial: true posts to RecognizeImageTrial with no token call and no Authorization header."""
        client = make_client(emulator.url, trial=True)

        client.submit(write_png(tmp_path / "a.png"), Settings())

        [received] = emulator.submissions()
        assert ("/v5.0/ocr/RecognizeImageTrial", "none", 0) == (
            received["path"],
            received["auth"],
            emulator.token_calls,
        )

    def test_result_can_be_fetched_and_decoded(self, emulator, tmp_path):
        """The recognised text is fetched by GUID and base64-decoded."""
        client = make_client(emulator.url)
        path = write_png(tmp_path / "a.png", 5)
        sub = client.submit(path, Settings(language="German"))

        result = client.wait_for_result(sub.guid, sleep=lambda s: None)

        assert "Completed" == result.status
        assert sub.sha256 in (result.text or "")
        assert "language German" in (result.text or "")

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            (
                "a197aade-bba9-4c7a-92c7-46851b3dceaa",
                "a197aade-bba9-4c7a-92c7-46851b3dceaa",
            ),
            (
                '"A197AADE-BBA9-4C7A-92C7-46851B3DCEAA"\n',
                "a197aade-bba9-4c7a-92c7-46851b3dceaa",
            ),
            (
                "  a197aade-bba9-4c7a-92c7-46851b3dceaa\r\n",
                "a197aade-bba9-4c7a-92c7-46851b3dceaa",
            ),
        ],
    )
    def test_parse_task_id_accepts_plain_quoted_and_padded(self, body, expected):
        """The GUID is stripped of whitespace and quotes, then validated."""
        assert expected == parse_task_id(body)

    @pytest.mark.parametrize(
        "body", ["", "ok", "{}", "a197aade-bba9-4c7a-92c7", "<html>error</html>"]
    )
    def test_parse_task_id_rejects_non_guids(self, body):
        """Anything that is not a GUID is not written to a sidecar, and is a protocol error:
        not retried at once, since every POST may be billed."""
        from ocrwatch.errors import ProtocolError

        with pytest.raises(
            ProtocolError, match="the service answered 200 with no task id"
        ):
            parse_task_id(body)


class TestBadInput:
    def test_each_bad_file_is_rejected_with_a_reason(self, emulator, tmp_path):
        """Empty, non-image, directory, FIFO and dangling-link files are rejected before upload."""
        client = make_client(emulator.url)
        (tmp_path / "empty.png").write_bytes(b"")
        (tmp_path / "text.png").write_text("hello, not an image")
        (tmp_path / "dir.png").mkdir()
        os.mkfifo(tmp_path / "fifo.png")
        (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")

        reasons = {}
        for name in ("empty.png", "text.png", "dir.png", "fifo.png", "dangling.png"):
            with pytest.raises(RejectedError) as info:
                client.submit(tmp_path / name, Settings())
            reasons[name] = str(info.value)

        assert {
            "empty.png": "the file is empty",
            "text.png": "not a supported image: text.png is not PNG, JPEG, TIFF, BMP, GIF or PDF by its content",
            "dir.png": "not a file: it is a directory",
            "fifo.png": "cannot read the file: it is not a regular file (a FIFO, socket or device)",
            "dangling.png": "cannot read the file: it is a dangling symbolic link",
        } == reasons
        assert [] == emulator.submissions()

    @pytest.mark.parametrize("kind", ["jpg", "tif", "bmp", "gif"])
    def test_image_types_detected_by_magic_bytes(self, emulator, tmp_path, kind):
        """JPEG, TIFF, BMP and GIF headers are accepted whatever the file is called."""
        client = make_client(emulator.url)
        path = tmp_path / "scan.dat"
        path.write_bytes(HEADERS[kind] + b"\x00" * 64)

        sub = client.submit(path, Settings())

        assert {"jpg": "JPEG", "tif": "TIFF", "bmp": "BMP", "gif": "GIF"}[
            kind
        ] == sub.image_type

    def test_png_bytes_fixture_is_a_png(self):
        """The test images really start with the PNG signature."""
        assert png_bytes(1).startswith(b"\x89PNG\r\n\x1a\n")


class TestChangedWhileSending:
    @pytest.mark.parametrize("change", ["appended", "renamed"])
    def test_a_file_changed_during_its_upload_says_so_with_its_task(
        self, tmp_path, change
    ):
        """A file appended to (or renamed) while its upload is in flight comes back with its
        billed task and the reason it no longer describes the file, so that no .guid is
        written for content the file no longer has, and the GUID is not lost either."""
        import threading

        from ocrwatch.client import Submission
        from ocrwatch.emulator import Emulator

        from .conftest import wait_until

        path = write_png(tmp_path / "growing.png", 1)
        with Emulator(client_id=CLIENT_ID, client_secret=SECRET, latency_s=0.5) as emu:
            client = make_client(emu.url)
            assert client.tokens is not None
            client.tokens.get()  # the token call gets its latency out of the way first
            done: list[Submission] = []
            worker = threading.Thread(
                target=lambda: done.append(client.submit(path, Settings()))
            )
            bodies_before = emu.bodies_read
            worker.start()
            # The whole body has reached the server, which now sits on its 0.5 s latency.
            wait_until(lambda: emu.bodies_read > bodies_before, 5, "upload in flight")
            if change == "appended":  # the scanner writes another page mid-upload
                with path.open("ab") as handle:
                    handle.write(b"page two")
            else:
                path.rename(tmp_path / "renamed.png")
            worker.join(10)
            [accepted] = emu.submissions()

        expected = {
            "appended": "the file changed while it was being sent",
            "renamed": "the file disappeared while it was being sent",
        }[change]
        assert [(accepted["guid"], expected)] == [(s.guid, s.changed) for s in done]
