"""A local Aspose.OCR Cloud v5.0 server for trying ocrwatch offline, for tests and for benchmarks.

It follows aspose-api.md (token flow, exact JSON keys and enum strings, text/plain GUIDs, the
token-endpoint lockout) and injects faults on request. It never imports ocrwatch's client or auth,
so a misreading of the spec cannot cancel out on both sides.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.parser
import email.policy
import hashlib
import json
import random
import secrets
import socket
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import parse_qs, unquote, urlsplit

from ocrwatch.settings import DSR_CONFIDENCES, DSR_MODES, LANGUAGES, RESULT_TYPES

TASK_TTL_S: Final = 24 * 3600.0
LOCKOUT_FAILURES: Final = 5
LOCKOUT_S: Final = 600.0
SETTING_TYPES: Final[dict[str, tuple[str, object]]] = {
    # lower-cased key -> (canonical key, enum tuple or bool/int type)
    "language": ("language", LANGUAGES),
    "makeskewcorrect": ("makeSkewCorrect", bool),
    "rotate": ("Rotate", int),
    "makebinarization": ("makeBinarization", bool),
    "makecontrastcorrection": ("makeContrastCorrection", bool),
    "makeupsampling": ("makeUpsampling", bool),
    "makespellcheck": ("makeSpellCheck", bool),
    "dsrmode": ("dsrMode", DSR_MODES),
    "dsrconfidence": ("dsrConfidence", DSR_CONFIDENCES),
    "resulttype": ("resultType", RESULT_TYPES),
}
MAGIC: Final = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"GIF87a",
    b"GIF89a",
)


@dataclass
class Faults:
    """Random fault rates (0..1) for the RecognizeImage endpoints, and the Retry-After to send."""

    rate_503: float = 0.0
    rate_429: float = 0.0
    retry_after: str = "1"
    rate_drop: float = 0.0
    rate_accept_drop: float = 0.0


@dataclass
class Task:
    guid: str
    created: float
    settings: dict[str, Any]
    image_sha256: str
    image_bytes: int
    valid_image: bool
    trial: bool


@dataclass
class Scripted:
    kind: str  # "status", "drop", "accept_drop"
    status: int = 0
    retry_after: str | None = None


@dataclass
class EmulatorState:
    client_id: str
    client_secret: str
    token_ttl_s: float
    latency_s: float
    pending_s: float
    processing_s: float
    faults: Faults
    bad_image: str
    empty_401: bool
    rng: random.Random
    log_stream: TextIO | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    tokens: dict[str, float] = field(default_factory=dict)
    token_failures: dict[tuple[str, str], int] = field(default_factory=dict)
    locked_until: dict[tuple[str, str], float] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    scripted: deque[Scripted] = field(default_factory=deque)
    received: list[dict[str, Any]] = field(default_factory=list)
    token_calls: int = 0

    def record(self, entry: dict[str, Any]) -> None:
        entry = {"ts": time.time(), **entry}
        with self.lock:
            self.received.append(entry)
            if self.log_stream is not None:
                self.log_stream.write(json.dumps(entry) + "\n")
                self.log_stream.flush()


class Emulator:
    """The server, run in a background thread; tests steer it through its methods."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = "emulator",
        client_secret: str = "emulator-secret",
        token_ttl_s: float = 3600.0,
        latency_s: float = 0.0,
        pending_s: float = 0.0,
        processing_s: float = 0.0,
        faults: Faults | None = None,
        bad_image: str = "reject",
        empty_401: bool = False,
        seed: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.state = EmulatorState(
            client_id=client_id,
            client_secret=client_secret,
            token_ttl_s=token_ttl_s,
            latency_s=latency_s,
            pending_s=pending_s,
            processing_s=processing_s,
            faults=faults or Faults(),
            bad_image=bad_image,
            empty_401=empty_401,
            rng=random.Random(seed),
            log_stream=log_path.open("a", encoding="utf-8") if log_path else None,
        )
        self._server = _Server((host, port), _Handler)
        self._server.state = self.state
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Emulator:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name="emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self.state.log_stream is not None:
            self.state.log_stream.close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(
        self, status: int, times: int = 1, retry_after: str | None = None
    ) -> None:
        """The next `times` RecognizeImage calls answer `status` (after reading the body)."""
        with self.state.lock:
            self.state.scripted.extend(
                Scripted("status", status, retry_after) for _ in range(times)
            )

    def drop_next(self, times: int = 1, *, after_accept: bool = False) -> None:
        """Close the next connections without an answer; `after_accept` creates the task first."""
        kind = "accept_drop" if after_accept else "drop"
        with self.state.lock:
            self.state.scripted.extend(Scripted(kind) for _ in range(times))

    def expire_tokens(self) -> None:
        """Revoke every issued token, as if they all expired early."""
        with self.state.lock:
            self.state.tokens.clear()

    def set_credentials(self, client_id: str, client_secret: str) -> None:
        with self.state.lock:
            self.state.client_id, self.state.client_secret = client_id, client_secret

    @property
    def received(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return list(self.state.received)

    def submissions(self) -> list[dict[str, Any]]:
        """Accepted RecognizeImage(Trial) POSTs: the ones that created a task."""
        return [r for r in self.received if r.get("guid") and r["method"] == "POST"]

    @property
    def token_calls(self) -> int:
        with self.state.lock:
            return self.state.token_calls

    def issued_tokens(self) -> list[str]:
        with self.state.lock:
            return list(self.state.tokens)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True
    state: EmulatorState

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up mid-request (a killed ocrwatch, say) is routine, not a traceback."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


def _problem(
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = (
        True  # without it every response stalls ~40 ms on delayed ACK
    )
    server: _Server
    server_version = "Kestrel"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the JSON-lines request log replaces stderr chatter

    @property
    def st(self) -> EmulatorState:
        return self.server.state

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        route = parts.path.rstrip("/").lower()
        query = parse_qs(parts.query)
        body = self._read_body()
        if body is None:
            return
        if self.st.latency_s:
            time.sleep(self.st.latency_s)
        if route == "/connect/token" and method == "POST":
            self._token(body)
        elif route in ("/v5.0/ocr/recognizeimage", "/v5.0/ocr/recognizeimagetrial"):
            trial = route.endswith("trial")
            if method == "POST":
                self._recognize(body, trial)
            else:
                self._task(method, query, trial, with_results=True)
        elif route == "/v5.0/ocr/utilities/gettaskstatus" and method == "GET":
            self._task(method, query, False, with_results=False)
        else:
            self._json(
                404,
                _problem(404, "Not Found"),
                record={"method": method, "path": parts.path},
            )

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._json(400, _problem(400, "Bad Request", "invalid Content-Length"))
            return None
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(
        self,
        status: int,
        data: Any,
        *,
        record: dict[str, Any] | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        content_type = (
            "application/problem+json; charset=utf-8"
            if status >= 400
            else "application/json; charset=utf-8"
        )
        if record is not None:
            self.st.record({**record, "status": status})
        self._send(status, json.dumps(data).encode(), content_type, extra)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _token(self, body: bytes) -> None:
        form = self._form(body)
        client_id, client_secret = (
            form.get("client_id", ""),
            form.get("client_secret", ""),
        )
        basic = self.headers.get("Authorization", "")
        if basic.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
                client_id, client_secret = unquote(user), unquote(password)
            except (binascii.Error, UnicodeDecodeError):
                pass
        record = {"method": "POST", "path": "/connect/token", "client_id": client_id}
        now = time.monotonic()
        pair = (client_id, client_secret)
        with self.st.lock:
            self.st.token_calls += 1
            locked = self.st.locked_until.get(pair, 0.0) > now
        if locked:
            self.st.record({**record, "status": 429})
            self._send(429, b"", None, {"Retry-After": str(int(LOCKOUT_S))})
            return
        if form.get("grant_type") != "client_credentials":
            self._json(400, {"error": "unsupported_grant_type"}, record=record)
            return
        if pair != (self.st.client_id, self.st.client_secret):
            with self.st.lock:
                failures = self.st.token_failures.get(pair, 0) + 1
                self.st.token_failures[pair] = failures
                if failures >= LOCKOUT_FAILURES:
                    self.st.locked_until[pair] = now + LOCKOUT_S
            self._json(400, {"error": "invalid_client"}, record=record)
            return
        token = _make_jwt(self.st.token_ttl_s)
        with self.st.lock:
            self.st.tokens[token] = now + self.st.token_ttl_s
        self._json(
            200,
            {
                "access_token": token,
                "expires_in": int(self.st.token_ttl_s) or 1,
                "token_type": "Bearer",
            },
            record=record,
        )

    def _form(self, body: bytes) -> dict[str, str]:
        content_type = self.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {content_type}\r\n\r\n".encode() + body
            )
            form = {}
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if isinstance(name, str):
                    payload = part.get_payload(decode=True)
                    form[name] = payload.decode() if isinstance(payload, bytes) else ""
            return form
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            return False
        token = header[7:].strip()
        with self.st.lock:
            expires = self.st.tokens.get(token)
        return expires is not None and expires > time.monotonic()

    def _unauthorized(self, record: dict[str, Any]) -> None:
        self.st.record({**record, "status": 401})
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        if self.st.empty_401:
            self._send(401, b"", None, challenge)
        else:
            self._json(401, _problem(401, "Unauthorized"), extra=challenge)

    def _next_fault(self) -> Scripted | None:
        with self.st.lock:
            if self.st.scripted:
                return self.st.scripted.popleft()
            f, roll = self.st.faults, self.st.rng.random()
        for kind, rate in (
            ("503", f.rate_503),
            ("429", f.rate_429),
            ("drop", f.rate_drop),
            ("accept_drop", f.rate_accept_drop),
        ):
            if roll < rate:
                if kind in ("503", "429"):
                    return Scripted(
                        "status", int(kind), f.retry_after if kind == "429" else None
                    )
                return Scripted(kind)
            roll -= rate
        return None

    def _recognize(self, body: bytes, trial: bool) -> None:
        path = "/v5.0/ocr/RecognizeImage" + ("Trial" if trial else "")
        record: dict[str, Any] = {
            "method": "POST",
            "path": path,
            "bytes": len(body),
            "auth": "bearer" if "Authorization" in self.headers else "none",
        }
        if not trial and not self._authorized():
            self._unauthorized(record)
            return
        fault = self._next_fault()
        if fault is not None and fault.kind == "status":
            record["fault"] = fault.status
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else None
            self._json(
                fault.status,
                _problem(fault.status, "Injected fault"),
                record=record,
                extra=extra,
            )
            return
        if fault is not None and fault.kind == "drop":
            self.st.record({**record, "status": None, "fault": "drop"})
            self._drop()
            return
        parsed = _parse_recognize_body(body)
        if isinstance(parsed, Invalid):
            record["error"] = parsed.problem["errors"]
            self._json(400, parsed.problem, record=record)
            return
        image, settings = parsed
        valid = image.startswith(MAGIC)
        sha = hashlib.sha256(image).hexdigest()
        record.update(image_sha256=sha, image_bytes=len(image), settings=settings)
        if not valid and self.st.bad_image == "reject":
            self._json(
                400,
                _problem(400, "Bad Request", "Unsupported image format"),
                record=record,
            )
            return
        guid = str(uuid.uuid4())
        with self.st.lock:
            self.st.tasks[guid] = Task(
                guid, time.monotonic(), settings, sha, len(image), valid, trial
            )
        record["guid"] = guid
        if fault is not None and fault.kind == "accept_drop":
            self.st.record({**record, "status": None, "fault": "accept_drop"})
            self._drop()
            return
        self.st.record({**record, "status": 200})
        self._send(200, guid.encode(), "text/plain; charset=utf-8")

    def _task(
        self,
        method: str,
        query: dict[str, list[str]],
        trial: bool,
        *,
        with_results: bool,
    ) -> None:
        guid = (query.get("id") or [""])[0]
        record = {"method": method, "path": self.path.split("?")[0], "id": guid}
        if not trial and not self._authorized():
            self._unauthorized(record)
            return
        if not guid:
            self._json(
                400,
                _problem(
                    400,
                    "One or more validation errors occurred.",
                    errors={"id": ["The id field is required."]},
                ),
                record=record,
            )
            return
        with self.st.lock:
            task = self.st.tasks.get(guid.lower())
            if task is not None and (
                method == "DELETE" or time.monotonic() - task.created > TASK_TTL_S
            ):
                del self.st.tasks[guid.lower()]
                task = None
        if method == "DELETE":
            self.st.record({**record, "status": 200})
            self._send(200, b"", None)
            return
        self._json(
            200, _task_response(guid, task, self.st, with_results), record=record
        )


def _task_response(
    guid: str, task: Task | None, st: EmulatorState, with_results: bool
) -> dict[str, Any]:
    if task is None:
        return {
            "id": guid,
            "taskStatus": "NotExist",
            "responseStatusCode": "TaskNotFound",
            "results": None,
            "error": None,
        }
    age = time.monotonic() - task.created
    if age < st.pending_s:
        status, code = "Pending", "NotReady"
    elif age < st.pending_s + st.processing_s:
        status, code = "Processing", "NotReady"
    elif not task.valid_image:
        return {
            "id": guid,
            "taskStatus": "Error",
            "responseStatusCode": "Error",
            "results": None,
            "error": {"messages": ["The image could not be decoded."], "warnings": []},
        }
    else:
        status, code = "Completed", "Ok"
    results = _results(task) if status == "Completed" and with_results else None
    return {
        "id": guid,
        "taskStatus": status,
        "responseStatusCode": code,
        "results": results,
        "error": None,
    }


def _results(task: Task) -> list[dict[str, str]]:
    text = (
        f"Recognized by the ocrwatch emulator: {task.image_bytes} bytes, sha256 {task.image_sha256}, "
        f"language {task.settings.get('language', 'English')}."
    )
    if task.trial:
        words = text.split(" ")
        text = " ".join("*" * len(w) if i % 10 == 3 else w for i, w in enumerate(words))
    kinds = task.settings.get("resultType", "Text")
    out = []
    for kind, data in (
        ("Text", text.encode()),
        ("Pdf", b"%PDF-1.4\n% ocrwatch emulator\n%%EOF\n"),
        ("Hocr", f"<html><body><p class='ocr_par'>{text}</p></body></html>".encode()),
        ("JSON", json.dumps({"blocks": [{"text": text}]}).encode()),
        ("ImagePNG", MAGIC[0]),
    ):
        if kind in kinds:  # combined values name their parts: "TextAndPdf" -> Text, Pdf
            out.append({"type": kind, "data": base64.b64encode(data).decode()})
    return out


@dataclass(frozen=True)
class Invalid:
    problem: dict[str, Any]


def _parse_recognize_body(body: bytes) -> tuple[bytes, dict[str, Any]] | Invalid:
    """(image, settings as received) or a 400 ValidationProblemDetails, as ASP.NET would answer."""

    def invalid(key: str, message: str) -> Invalid:
        return Invalid(
            _problem(
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


def _make_jwt(ttl_s: float) -> str:
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
