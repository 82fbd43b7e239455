"""The emulator follows aspose-api.md, so that the official SDK (and ocrwatch) get faithful answers."""

from __future__ import annotations

import base64
import json
import time

import pytest
import requests

from ocrwatch.emulator import Emulator

from .conftest import CLIENT_ID, SECRET, fetch_token
from .images import png_bytes

PNG_B64 = base64.b64encode(png_bytes(1)).decode()


def token(emulator: Emulator) -> str:
    return fetch_token(emulator.url)


def post_image(
    emulator: Emulator, body: object, bearer: str | None, path: str = "RecognizeImage"
) -> requests.Response:
    headers = {"Content-Type": "application/json", "Accept": "text/plain"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    return requests.post(
        f"{emulator.url}/v5.0/ocr/{path}",
        data=json.dumps(body),
        headers=headers,
        timeout=5,
    )


def test_the_emulator_and_ocrwatch_read_the_same_enums_from_the_spec():
    """Both sides keep their own lists, written from docs/aspose-api.md; they must agree."""
    from ocrwatch import settings
    from ocrwatch.emulator import state

    for name in ("LANGUAGES", "RESULT_TYPES", "DSR_MODES", "DSR_CONFIDENCES"):
        assert getattr(settings, name) == getattr(state, name), name
    assert 154 == len(state.LANGUAGES)


def test_run_does_not_load_the_emulator():
    """The test server is not part of the product path: importing the daemon and the CLI
    leaves it unloaded."""
    import subprocess
    import sys

    code = (
        "import sys, ocrwatch.cli, ocrwatch.daemon, ocrwatch.batch; "
        "print(any(m.startswith('ocrwatch.emulator') for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert "False" == result.stdout.strip()


class TestTokenEndpoint:
    def test_form_token_response_shape(self, emulator):
        """A form-encoded client_credentials request gets access_token, expires_in and token_type Bearer."""
        response = requests.post(
            f"{emulator.url}/connect/token",
            timeout=5,
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": SECRET,
            },
        )

        body = response.json()
        assert ("application/json; charset=utf-8", "Bearer", 3600) == (
            response.headers["Content-Type"],
            body["token_type"],
            body["expires_in"],
        )
        assert 3 == len(body["access_token"].split("."))

    def test_multipart_form_as_python_sdk_24_8_sends(self, emulator):
        """multipart/form-data credentials are accepted, as production must have."""
        response = requests.post(
            f"{emulator.url}/connect/token",
            timeout=5,
            files={
                "grant_type": (None, "client_credentials"),
                "client_id": (None, CLIENT_ID),
                "client_secret": (None, SECRET),
            },
        )

        assert 200 == response.status_code

    def test_http_basic_credentials_as_go_sdk_sends(self, emulator):
        """Client credentials in an HTTP Basic header are accepted."""
        response = requests.post(
            f"{emulator.url}/connect/token",
            timeout=5,
            auth=(CLIENT_ID, SECRET),
            data={"grant_type": "client_credentials"},
        )

        assert 200 == response.status_code

    def test_bad_credentials_400_then_429_lockout_after_five(self, emulator):
        """Five refusals for a pair lock it out with 429 and Retry-After: 600."""
        statuses = []
        for _ in range(7):
            response = requests.post(
                f"{emulator.url}/connect/token",
                timeout=5,
                data={
                    "grant_type": "client_credentials",
                    "client_id": CLIENT_ID,
                    "client_secret": "wrong",
                },
            )
            statuses.append(response.status_code)

        assert [400, 400, 400, 400, 400, 429, 429] == statuses
        assert "600" == response.headers["Retry-After"]
        assert (
            200
            == requests.post(
                f"{emulator.url}/connect/token",
                timeout=5,
                data={
                    "grant_type": "client_credentials",
                    "client_id": CLIENT_ID,
                    "client_secret": SECRET,
                },
            ).status_code
        )

    def test_wrong_grant_type(self, emulator):
        """Only client_credentials is supported."""
        response = requests.post(
            f"{emulator.url}/connect/token", timeout=5, data={"grant_type": "password"}
        )

        assert (400, {"error": "unsupported_grant_type"}) == (
            response.status_code,
            response.json(),
        )


class TestRecognizeImage:
    def test_success_is_bare_guid_as_text_plain(self, emulator):
        """200 text/plain; charset=utf-8 with the bare GUID, no quotes, no JSON."""
        response = post_image(
            emulator,
            {"image": PNG_B64, "settings": {"language": "English"}},
            token(emulator),
        )

        assert (200, "text/plain; charset=utf-8") == (
            response.status_code,
            response.headers["Content-Type"],
        )
        assert 36 == len(response.text)
        assert response.text.count("-") == 4

    def test_missing_or_expired_token_is_401(self, emulator):
        """No bearer token, or a revoked one, gets 401 ProblemDetails with a Bearer challenge."""
        bearer = token(emulator)
        emulator.expire_tokens()

        without = post_image(emulator, {"image": PNG_B64, "settings": {}}, None)
        revoked = post_image(emulator, {"image": PNG_B64, "settings": {}}, bearer)

        assert [401, 401] == [without.status_code, revoked.status_code]
        assert revoked.headers["WWW-Authenticate"].startswith("Bearer")
        assert 401 == revoked.json()["status"]

    @pytest.mark.parametrize(
        ("body", "key"),
        [
            pytest.param({"settings": {}}, "image", id="no-image"),
            pytest.param({"image": PNG_B64}, "settings", id="no-settings"),
            pytest.param(
                {"image": "not base64!!", "settings": {}}, "image", id="bad-base64"
            ),
            pytest.param(
                {"image": PNG_B64, "settings": {"language": "english"}},
                "settings.language",
                id="enum-case",
            ),
            pytest.param(
                {"image": PNG_B64, "settings": {"makeSpellCheck": "yes"}},
                "settings.makeSpellCheck",
                id="bool",
            ),
            pytest.param(
                {"image": PNG_B64, "settings": {"Rotate": "90"}},
                "settings.Rotate",
                id="int",
            ),
        ],
    )
    def test_invalid_bodies_get_validation_problem_details(self, emulator, body, key):
        """Malformed bodies get 400 with ASP.NET's ValidationProblemDetails naming the field."""
        response = post_image(emulator, body, token(emulator))

        assert 400 == response.status_code
        assert key in response.json()["errors"]
        assert "One or more validation errors occurred." == response.json()["title"]

    def test_keys_match_case_insensitively(self, emulator):
        """`rotate`, `Rotate`, `IMAGE` and `Settings` are all understood."""
        response = post_image(
            emulator,
            {"IMAGE": PNG_B64, "Settings": {"rotate": 90, "LANGUAGE": "German"}},
            token(emulator),
        )

        assert 200 == response.status_code

    def test_non_image_rejected_or_task_error_by_option(self):
        """A corrupt image is a 400 by default, or an accepted task ending in Error."""
        garbage = base64.b64encode(b"not an image").decode()
        with (
            Emulator(client_id=CLIENT_ID, client_secret=SECRET) as strict,
            Emulator(
                client_id=CLIENT_ID, client_secret=SECRET, bad_image="task-error"
            ) as lax,
        ):
            rejected = post_image(
                strict, {"image": garbage, "settings": {}}, token(strict)
            )
            accepted = post_image(lax, {"image": garbage, "settings": {}}, token(lax))
            task = requests.get(
                f"{lax.url}/v5.0/ocr/RecognizeImage?id={accepted.text}",
                headers={"Authorization": f"Bearer {token(lax)}"},
                timeout=5,
            ).json()

        assert (400, 200) == (rejected.status_code, accepted.status_code)
        assert ("Error", "Error", ["The image could not be decoded."]) == (
            task["taskStatus"],
            task["responseStatusCode"],
            task["error"]["messages"],
        )


class TestTasks:
    def test_pending_processing_completed_with_exact_keys(self):
        """A task goes Pending -> Processing -> Completed; results are base64 per output format."""
        with Emulator(
            client_id=CLIENT_ID, client_secret=SECRET, pending_s=0.2, processing_s=0.2
        ) as emu:
            bearer = token(emu)
            guid = post_image(
                emu,
                {"image": PNG_B64, "settings": {"resultType": "TextAndPdf"}},
                bearer,
            ).text
            seen: list[str] = []
            deadline = time.monotonic() + 5
            while (not seen or seen[-1] != "Completed") and time.monotonic() < deadline:
                body = requests.get(
                    f"{emu.url}/v5.0/ocr/RecognizeImage?id={guid}",
                    headers={"Authorization": f"Bearer {bearer}"},
                    timeout=5,
                ).json()
                if not seen or seen[-1] != body["taskStatus"]:
                    seen.append(body["taskStatus"])
                time.sleep(0.02)

        assert ["Pending", "Processing", "Completed"] == seen
        assert ["id", "taskStatus", "responseStatusCode", "results", "error"] == list(
            body
        )
        assert ["Text", "Pdf"] == [r["type"] for r in body["results"]]
        assert base64.b64decode(body["results"][1]["data"]).startswith(b"%PDF")

    def test_unknown_id_is_not_exist_and_delete_removes(self, emulator):
        """Unknown or deleted tasks read as NotExist/TaskNotFound."""
        bearer = token(emulator)
        auth = {"Authorization": f"Bearer {bearer}"}
        guid = post_image(emulator, {"image": PNG_B64, "settings": {}}, bearer).text

        deleted = requests.delete(
            f"{emulator.url}/v5.0/ocr/RecognizeImage?id={guid}", headers=auth, timeout=5
        )
        after = requests.get(
            f"{emulator.url}/v5.0/ocr/RecognizeImage?id={guid}", headers=auth, timeout=5
        ).json()

        assert (200, b"") == (deleted.status_code, deleted.content)
        assert ("NotExist", "TaskNotFound") == (
            after["taskStatus"],
            after["responseStatusCode"],
        )

    def test_get_task_status_has_no_results(self, emulator):
        """Utilities/GetTaskStatus reports the state without the results payload."""
        bearer = token(emulator)
        guid = post_image(emulator, {"image": PNG_B64, "settings": {}}, bearer).text

        body = requests.get(
            f"{emulator.url}/v5.0/ocr/Utilities/GetTaskStatus?id={guid}",
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=5,
        ).json()

        assert ("Completed", None) == (body["taskStatus"], body["results"])

    def test_trial_needs_no_token_and_masks_words(self, emulator):
        """RecognizeImageTrial ignores Authorization and masks about one word in ten with `*`."""
        guid = post_image(
            emulator, {"image": PNG_B64, "settings": {}}, None, "RecognizeImageTrial"
        ).text

        body = requests.get(
            f"{emulator.url}/v5.0/ocr/RecognizeImageTrial?id={guid}", timeout=5
        ).json()

        text = base64.b64decode(body["results"][0]["data"]).decode()
        assert "Completed" == body["taskStatus"]
        assert "***" in text

    def test_request_log_is_json_lines_without_image_bytes(self, tmp_path):
        """The JSON-lines log records settings and the image hash, never the image itself."""
        log = tmp_path / "emu.jsonl"
        with Emulator(client_id=CLIENT_ID, client_secret=SECRET, log_path=log) as emu:
            post_image(
                emu, {"image": PNG_B64, "settings": {"language": "German"}}, token(emu)
            )

        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert ["/connect/token", "/v5.0/ocr/RecognizeImage"] == [
            entry["path"] for entry in lines
        ]
        assert {"language": "German"} == lines[1]["settings"]
        assert PNG_B64 not in log.read_text()
        assert SECRET not in log.read_text()
