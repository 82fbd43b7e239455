"""The emulator follows aspose-api.md, so that the official SDK (and ocrwatch) get faithful answers."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from typing import Any

import pytest
import requests

from ocrwatch.emulator import Emulator, Faults, TaskScript

from .conftest import CLIENT_ID, SECRET, fetch_token
from .images import pdf_bytes, pdf_xref_is_right, png_bytes

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


def get_task(
    emulator: Emulator, guid: str, bearer: str | None, path: str = "RecognizeImage"
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    response = requests.get(
        f"{emulator.url}/v5.0/ocr/{path}?id={guid}", headers=headers, timeout=5
    )
    assert 200 == response.status_code
    task: dict[str, Any] = response.json()
    return task


def expected_text(image: bytes, language: str = "English") -> str:
    """The emulator's text for an image, written out here from its documented shape."""
    sha = hashlib.sha256(image).hexdigest()
    return f"Recognized by the ocrwatch emulator: {len(image)} bytes, sha256 {sha}, language {language}."


def decoded(task: dict[str, Any]) -> dict[str, bytes]:
    return {r["type"]: base64.b64decode(r["data"]) for r in task["results"]}


class TestResultTypes:
    @pytest.mark.parametrize(
        ("result_type", "parts"),
        [
            pytest.param("Text", ["Text"], id="Text"),
            pytest.param("Pdf", ["Pdf"], id="Pdf"),
            pytest.param("TextAndPdf", ["Text", "Pdf"], id="TextAndPdf"),
            pytest.param("Hocr", ["Hocr"], id="Hocr"),
            pytest.param("TextAndHocr", ["Text", "Hocr"], id="TextAndHocr"),
            pytest.param("PdfAndHocr", ["Pdf", "Hocr"], id="PdfAndHocr"),
            pytest.param(
                "TextAndPdfAndHocr", ["Text", "Pdf", "Hocr"], id="TextAndPdfAndHocr"
            ),
            pytest.param("ImagePNG", ["ImagePNG"], id="ImagePNG"),
            pytest.param("JSON", ["JSON"], id="JSON"),
        ],
    )
    def test_every_result_type_gives_one_entry_per_part(
        self, emulator, result_type, parts
    ):
        """Each of the spec's nine resultType values gives its parts, in order, base64."""
        bearer = token(emulator)
        guid = post_image(
            emulator,
            {"image": PNG_B64, "settings": {"resultType": result_type}},
            bearer,
        ).text

        task = get_task(emulator, guid, bearer)

        assert parts == [r["type"] for r in task["results"]]
        assert all(base64.b64decode(r["data"], validate=True) for r in task["results"])

    def test_text_is_exact_and_deterministic_per_image(self, emulator):
        """The text names the image's size and sha256 and the language, and nothing else."""
        bearer = token(emulator)
        settings = {"language": "German", "resultType": "Text"}
        guids = [
            post_image(emulator, {"image": PNG_B64, "settings": settings}, bearer).text
            for _ in range(2)
        ]

        texts = [decoded(get_task(emulator, g, bearer))["Text"] for g in guids]

        assert [expected_text(png_bytes(1), "German").encode()] * 2 == texts

    def test_pdf_is_a_valid_pdf_showing_the_text(self, emulator):
        """The Pdf result starts with %PDF-, ends with %%EOF, its xref points at its objects,
        and its page shows the recognised text."""
        bearer = token(emulator)
        guid = post_image(
            emulator,
            {"image": PNG_B64, "settings": {"resultType": "TextAndPdf"}},
            bearer,
        ).text

        files = decoded(get_task(emulator, guid, bearer))

        pdf = files["Pdf"]
        assert pdf.startswith(b"%PDF-1.")
        assert pdf.rstrip().endswith(b"%%EOF")
        assert pdf_xref_is_right(pdf)
        shown = b"".join(re.findall(rb"\((.*?)\) Tj", pdf)).replace(b"\\", b"")
        assert files["Text"].replace(b" ", b"") == shown.replace(b" ", b"")

    def test_hocr_is_xhtml_with_a_page_and_lines(self, emulator):
        """The Hocr result parses as XML, with an ocr_page holding ocr_line spans whose words
        are the text."""
        import xml.etree.ElementTree as ET  # our own emulator's output, not untrusted

        bearer = token(emulator)
        guid = post_image(
            emulator,
            {"image": PNG_B64, "settings": {"resultType": "TextAndHocr"}},
            bearer,
        ).text

        files = decoded(get_task(emulator, guid, bearer))

        root = ET.fromstring(files["Hocr"])  # noqa: S314
        ns = "{http://www.w3.org/1999/xhtml}"
        pages = [e for e in root.iter(f"{ns}div") if e.get("class") == "ocr_page"]
        lines = [e for e in root.iter(f"{ns}span") if e.get("class") == "ocr_line"]
        words = [
            e.text for e in root.iter(f"{ns}span") if e.get("class") == "ocrx_word"
        ]
        assert (1, True) == (len(pages), len(lines) >= 1)
        assert files["Text"].decode() == " ".join(w or "" for w in words)

    def test_json_and_png_are_what_they_say(self, emulator):
        """The JSON result parses and holds the text; the ImagePNG one is a whole PNG."""
        from ocrwatch.completeness import why_incomplete

        bearer = token(emulator)
        json_guid, png_guid = (
            post_image(
                emulator, {"image": PNG_B64, "settings": {"resultType": kind}}, bearer
            ).text
            for kind in ("JSON", "ImagePNG")
        )

        data = json.loads(decoded(get_task(emulator, json_guid, bearer))["JSON"])
        png = decoded(get_task(emulator, png_guid, bearer))["ImagePNG"]

        assert expected_text(png_bytes(1)) == data["text"]
        assert data["blocks"][0]["text"]
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert why_incomplete(lambda o, n: png[o : o + n], len(png)) is None


class TestRecognizePdf:
    def test_a_pdf_is_accepted_recorded_and_read_back(self, emulator):
        """POST RecognizePdf takes a base64 PDF (same body shape), the submission is recorded
        with its endpoint, and GET RecognizePdf?id= has its results."""
        pdf = pdf_bytes(seed=3)
        bearer = token(emulator)

        response = post_image(
            emulator,
            {"image": base64.b64encode(pdf).decode(), "settings": {}},
            bearer,
            "RecognizePdf",
        )
        task = get_task(emulator, response.text, bearer, "RecognizePdf")

        [sub] = emulator.submissions()
        assert (200, "text/plain; charset=utf-8") == (
            response.status_code,
            response.headers["Content-Type"],
        )
        assert ("/v5.0/ocr/RecognizePdf", response.text) == (sub["path"], sub["guid"])
        assert hashlib.sha256(pdf).hexdigest() == sub["image_sha256"]
        assert expected_text(pdf).encode() == decoded(task)["Text"]

    @pytest.mark.parametrize(
        ("path", "content"),
        [
            pytest.param("RecognizePdf", png_bytes(1), id="image-to-pdf-endpoint"),
            pytest.param("RecognizeImage", pdf_bytes(), id="pdf-to-image-endpoint"),
        ],
    )
    def test_each_endpoint_takes_only_its_own_kind(self, emulator, path, content):
        """A PNG sent to RecognizePdf, or a PDF to RecognizeImage, is a 400: a client that
        picks the wrong endpoint is caught."""
        response = post_image(
            emulator,
            {"image": base64.b64encode(content).decode(), "settings": {}},
            token(emulator),
            path,
        )

        assert 400 == response.status_code
        assert [] == emulator.submissions()

    def test_recognize_pdf_needs_a_token(self, emulator):
        """RecognizePdf is a paid endpoint: no bearer token, 401."""
        body = {"image": base64.b64encode(pdf_bytes()).decode(), "settings": {}}

        response = post_image(emulator, body, None, "RecognizePdf")

        assert 401 == response.status_code


class TestTaskOutcomes:
    def test_a_task_told_to_fail_ends_in_error_with_its_messages(self, emulator):
        """fail_next_task: the next task reads Error/Error with error.messages, the one after
        completes."""
        bearer = token(emulator)
        emulator.fail_next_task(messages=("The page is blank.",))
        body = {"image": PNG_B64, "settings": {}}
        failed, fine = (post_image(emulator, body, bearer).text for _ in range(2))

        task, other = (
            get_task(emulator, failed, bearer),
            get_task(emulator, fine, bearer),
        )

        assert ("Error", "Error", ["The page is blank."], None) == (
            task["taskStatus"],
            task["responseStatusCode"],
            task["error"]["messages"],
            task["results"],
        )
        assert "Completed" == other["taskStatus"]

    def test_a_lost_task_reads_as_not_exist(self, emulator):
        """lose_next_task and lose_task: the id is accepted, then reads NotExist/TaskNotFound."""
        bearer = token(emulator)
        emulator.lose_next_task()
        body = {"image": PNG_B64, "settings": {}}
        lost = post_image(emulator, body, bearer).text
        later = post_image(emulator, body, bearer).text
        emulator.lose_task(later)

        states = [
            (t["taskStatus"], t["responseStatusCode"])
            for t in (get_task(emulator, g, bearer) for g in (lost, later))
        ]

        assert [("NotExist", "TaskNotFound")] * 2 == states

    def test_fail_task_turns_an_accepted_task_into_error(self, emulator):
        """fail_task(guid) makes a task that was accepted end in Error."""
        bearer = token(emulator)
        guid = post_image(emulator, {"image": PNG_B64, "settings": {}}, bearer).text

        emulator.fail_task(guid, messages=("Too dark.",))

        assert ["Too dark."] == get_task(emulator, guid, bearer)["error"]["messages"]

    def test_warnings_come_with_a_completed_task(self, emulator):
        """warn_next_task: Completed, results present, and error.warnings filled, messages empty."""
        bearer = token(emulator)
        emulator.warn_next_task("Low resolution; results may be poor.")
        guid = post_image(emulator, {"image": PNG_B64, "settings": {}}, bearer).text

        task = get_task(emulator, guid, bearer)

        assert ("Completed", [], ["Low resolution; results may be poor."]) == (
            task["taskStatus"],
            task["error"]["messages"],
            task["error"]["warnings"],
        )
        assert ["Text"] == [r["type"] for r in task["results"]]

    def test_fault_rates_end_tasks_in_error_or_not_exist(self):
        """Faults.rate_task_error and rate_task_lost decide at acceptance, by the seeded dice."""
        with (
            Emulator(
                client_id=CLIENT_ID,
                client_secret=SECRET,
                faults=Faults(rate_task_error=1.0, task_warning="Skewed."),
            ) as failing,
            Emulator(
                client_id=CLIENT_ID,
                client_secret=SECRET,
                faults=Faults(rate_task_lost=0.5),
                seed=3,
            ) as losing,
        ):
            bearer = token(failing)
            failed = get_task(
                failing,
                post_image(failing, {"image": PNG_B64, "settings": {}}, bearer).text,
                bearer,
            )
            bearer = token(losing)
            statuses = [
                get_task(
                    losing,
                    post_image(losing, {"image": PNG_B64, "settings": {}}, bearer).text,
                    bearer,
                )["taskStatus"]
                for _ in range(40)
            ]

        assert ("Error", ["Skewed."]) == (
            failed["taskStatus"],
            failed["error"]["warnings"],
        )
        assert {"NotExist", "Completed"} == set(statuses)
        assert 10 < statuses.count("NotExist") < 30

    def test_a_scripted_task_has_its_own_delay(self, emulator):
        """A TaskScript's processing time holds for its task only; set_delays for later ones."""
        bearer = token(emulator)
        emulator.script_next_tasks(TaskScript(processing_s=60))
        body = {"image": PNG_B64, "settings": {}}
        slow = post_image(emulator, body, bearer).text
        quick = post_image(emulator, body, bearer).text
        emulator.set_delays(pending_s=60)
        waiting = post_image(emulator, body, bearer).text

        states = [
            get_task(emulator, g, bearer)["taskStatus"] for g in (slow, quick, waiting)
        ]

        assert ["Processing", "Completed", "Pending"] == states
