"""The official Aspose SDK (aspose-ocr-cloud 24.11.0), pointed at the emulator, gets well-formed answers.

The SDK deserialises strictly (exact enum strings, declared content types), so this is the
emulator's fidelity check that does not depend on our own reading of the spec.
"""

from __future__ import annotations

import base64

import pytest

from .conftest import fetch_token
from .images import pdf_bytes, png_bytes

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


def test_sdk_recognize_pdf(emulator):
    """post_recognize_pdf returns the GUID; get_recognize_pdf parses, with a valid PDF result."""
    pdf_api = api(emulator, sdk.RecognizePdfApi)
    document = pdf_bytes(seed=7)

    guid = pdf_api.post_recognize_pdf(
        sdk.OCRRecognizePdfBody(
            image=base64.b64encode(document).decode(),
            settings=sdk.OCRSettingsRecognizePdf(
                resultType=sdk.ResultType("TextAndPdf")
            ),
        )
    )
    result = pdf_api.get_recognize_pdf(guid)

    assert "/v5.0/ocr/RecognizePdf" == emulator.submissions()[0]["path"]
    assert sdk.OCRTaskStatus.COMPLETED == result.task_status
    assert ["Text", "Pdf"] == [r.type for r in result.results]
    assert base64.b64decode(result.results[1].data).startswith(b"%PDF-")


@pytest.mark.parametrize(
    "result_type",
    [
        "Text",
        "Pdf",
        "TextAndPdf",
        "Hocr",
        "TextAndHocr",
        "PdfAndHocr",
        "TextAndPdfAndHocr",
        "ImagePNG",
        "JSON",
    ],
)
def test_sdk_reads_every_result_type(emulator, result_type):
    """The SDK deserialises the answer for each of its ResultType values."""
    recognize = api(emulator, sdk.RecognizeImageApi)

    guid = recognize.post_recognize_image(body(resultType=sdk.ResultType(result_type)))
    result = recognize.get_recognize_image(guid)

    assert sdk.OCRTaskStatus.COMPLETED == result.task_status
    assert len(result_type.split("And")) == len(result.results)


def test_sdk_reads_error_warnings_and_lost_tasks(emulator):
    """Error with messages, Completed with warnings, and a lost task parse with the SDK's enums."""
    recognize = api(emulator, sdk.RecognizeImageApi)
    emulator.fail_next_task(messages=("Blank page.",))
    emulator.warn_next_task("Low contrast.")
    emulator.lose_next_task()

    failed, warned, lost = (
        recognize.get_recognize_image(recognize.post_recognize_image(body()))
        for _ in range(3)
    )

    assert (sdk.OCRTaskStatus.ERROR, sdk.ResponseStatusCode.ERROR, ["Blank page."]) == (
        failed.task_status,
        failed.response_status_code,
        failed.error.messages,
    )
    assert (sdk.OCRTaskStatus.COMPLETED, ["Low contrast."]) == (
        warned.task_status,
        warned.error.warnings,
    )
    assert sdk.OCRTaskStatus.NOTEXIST == lost.task_status
