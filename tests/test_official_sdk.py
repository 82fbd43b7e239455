"""The official Aspose SDK (aspose-ocr-cloud 24.11.0), pointed at the emulator, gets well-formed answers.

The SDK deserialises strictly (exact enum strings, declared content types), so this is the
emulator's fidelity check that does not depend on our own reading of the spec.
"""

from __future__ import annotations

import base64

import pytest

from .conftest import fetch_token
from .images import png_bytes

sdk = pytest.importorskip("aspose_ocr_cloud")


def api(emulator, cls):
    config = sdk.Configuration(
        host=emulator.url, access_token=fetch_token(emulator.url)
    )
    return cls(sdk.ApiClient(config))


def body(**settings):
    return sdk.OCRRecognizeImageBody(
        image=base64.b64encode(png_bytes(3)).decode(),
        settings=sdk.OCRSettingsRecognizeImage(**settings),
    )


def test_sdk_recognize_and_fetch(emulator):
    """post_recognize_image returns the GUID; get_recognize_image parses as a Completed OCRResponse."""
    recognize = api(emulator, sdk.RecognizeImageApi)

    guid = recognize.post_recognize_image(
        body(
            language=sdk.Language("German"),
            Rotate=90,
            resultType=sdk.ResultType("TextAndPdf"),
        )
    )
    result = recognize.get_recognize_image(guid)

    assert guid == emulator.submissions()[0]["guid"]
    assert {
        "language": "German",
        "Rotate": 90,
        "resultType": "TextAndPdf",
    }.items() <= emulator.submissions()[0]["settings"].items()
    assert (sdk.OCRTaskStatus.COMPLETED, sdk.ResponseStatusCode.OK) == (
        result.task_status,
        result.response_status_code,
    )
    assert ["Text", "Pdf"] == [r.type for r in result.results]
    assert "language German" in base64.b64decode(result.results[0].data).decode()


def test_sdk_task_status_and_unknown_id(emulator):
    """GetTaskStatus and an unknown id deserialise with the SDK's exact enums."""
    recognize = api(emulator, sdk.RecognizeImageApi)
    utilities = api(emulator, sdk.UtilitiesApi)
    guid = recognize.post_recognize_image(body())

    status = utilities.get_task_status(guid)
    missing = recognize.get_recognize_image("00000000-0000-0000-0000-000000000000")

    assert sdk.OCRTaskStatus.COMPLETED == status.task_status
    assert (sdk.OCRTaskStatus.NOTEXIST, sdk.ResponseStatusCode.TASKNOTFOUND) == (
        missing.task_status,
        missing.response_status_code,
    )


def test_sdk_trial_endpoint(emulator):
    """The trial API works with no token at all."""
    trial = sdk.RecognizeImageTrialApi(
        sdk.ApiClient(sdk.Configuration(host=emulator.url))
    )

    guid = trial.post_recognize_image_trial(body())
    result = trial.get_recognize_image_trial(guid)

    assert sdk.OCRTaskStatus.COMPLETED == result.task_status


def test_sdk_sees_401_as_unauthorized(emulator):
    """A revoked token reaches the SDK as its UnauthorizedException."""
    recognize = api(emulator, sdk.RecognizeImageApi)
    emulator.expire_tokens()

    with pytest.raises(sdk.exceptions.UnauthorizedException):
        recognize.post_recognize_image(body())
