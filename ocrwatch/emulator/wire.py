"""Pure pieces of the wire format: ProblemDetails, task responses, body validation, JWTs."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ocrwatch.emulator.outputs import recognized_text, render, result_parts
from ocrwatch.emulator.state import SETTING_TYPES, Task


def task_response(
    guid: str, task: Task | None, with_results: bool, now: float
) -> dict[str, Any]:
    """The OCRResponse for a task at `now` (monotonic), with the spec's exact keys and enums."""
    if task is None or (task.outcome == "NotExist" and now >= task.created):
        return {
            "id": guid,
            "taskStatus": "NotExist",
            "responseStatusCode": "TaskNotFound",
            "results": None,
            "error": None,
        }
    age = now - task.created
    error: dict[str, list[str]] | None = None
    results = None
    if age < task.pending_s:
        status, code = "Pending", "NotReady"
    elif age < task.pending_s + task.processing_s:
        status, code = "Processing", "NotReady"
    elif not task.valid_image or task.outcome == "Error":
        status, code = "Error", "Error"
        messages = (
            task.messages if task.valid_image else ("The image could not be decoded.",)
        )
        error = {"messages": list(messages), "warnings": list(task.warnings)}
    else:
        status, code = "Completed", "Ok"
        results = results_for(task) if with_results else None
        if task.warnings:
            error = {"messages": [], "warnings": list(task.warnings)}
    return {
        "id": guid,
        "taskStatus": status,
        "responseStatusCode": code,
        "results": results,
        "error": error,
    }


def results_for(task: Task) -> list[dict[str, str]]:
    """One entry per part of the requested resultType, each base64 as the spec says (§5)."""
    settings = {k.lower(): v for k, v in task.settings.items()}  # keys as received
    text = recognized_text(
        task.image_bytes,
        task.image_sha256,
        str(settings.get("language") or "English"),
        task.trial,
    )
    return [
        {"type": part, "data": base64.b64encode(render(part, text)).decode()}
        for part in result_parts(str(settings.get("resulttype") or "Text"))
    ]


@dataclass(frozen=True)
class Invalid:
    problem: dict[str, Any]


def parse_recognize_body(body: bytes) -> tuple[bytes, dict[str, Any]] | Invalid:
    """(image, settings as received) or a 400 ValidationProblemDetails, as ASP.NET would answer."""

    def invalid(key: str, message: str) -> Invalid:
        return Invalid(
            problem(
                400, "One or more validation errors occurred.", errors={key: [message]}
            )
        )

    try:
        data = json.loads(body)
    except ValueError:
        return invalid(
            "$", "The JSON value could not be converted to OCRRecognizeImageBody."
        )
    if not isinstance(data, dict):
        return invalid("$", "The request body must be a JSON object.")
    lowered = {k.lower(): v for k, v in data.items()}
    image_b64, settings = lowered.get("image"), lowered.get("settings")
    if not isinstance(image_b64, str) or not image_b64:
        return invalid("image", "The Image field is required.")
    if not isinstance(settings, dict):
        return invalid("settings", "The Settings field is required.")
    try:
        image = base64.b64decode(image_b64, validate=True)
    except (binascii.Error, ValueError):
        return invalid("image", "The image is not valid base64.")
    if not image:
        return invalid("image", "The image is empty.")
    for key, value in settings.items():
        spec = SETTING_TYPES.get(key.lower())
        if spec is None or value is None:
            continue
        canonical, kind = spec
        if kind is bool and not isinstance(value, bool):
            return invalid(f"settings.{canonical}", "The value must be true or false.")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            return invalid(f"settings.{canonical}", "The value must be an integer.")
        if isinstance(kind, tuple) and value not in kind:
            return invalid(
                f"settings.{canonical}",
                f"The value '{value}' is not valid for {canonical}.",
            )
    return image, settings


def make_jwt(ttl_s: float) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    payload = b64(
        json.dumps(
            {
                "exp": int(time.time() + ttl_s),
                "jti": secrets.token_hex(8),
                "iss": "ocrwatch-emulator",
            }
        ).encode()
    )
    return f"{header}.{payload}.{b64(secrets.token_bytes(32))}"


def problem(
    status: int,
    title: str,
    detail: str = "",
    errors: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"https://tools.ietf.org/html/rfc9110#section-15.{5 if status < 500 else 6}",
        "title": title,
        "status": status,
        "traceId": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00",
    }
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = errors
    return body
