"""The HTTP handler: routing, the token endpoint, RecognizeImage and RecognizePdf, task reads,
fault injection."""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.parser
import email.policy
import hashlib
import json
import socket
import ssl
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ocrwatch.emulator.state import (
    LOCKOUT_FAILURES,
    LOCKOUT_S,
    MAGIC,
    PDF_MAGIC,
    TASK_TTL_S,
    EmulatorState,
    Scripted,
    Task,
)
from ocrwatch.emulator.wire import (
    Invalid,
    make_jwt,
    parse_recognize_body,
    problem,
    task_response,
)

# Lower-cased route -> the endpoint's name as the spec spells it (§1, §7).
ENDPOINTS = {
    f"/v5.0/ocr/{name.lower()}": name
    for name in ("RecognizeImage", "RecognizeImageTrial", "RecognizePdf")
}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True
    state: EmulatorState

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up mid-request (a killed ocrwatch, say) is routine, not a traceback."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError | ssl.SSLError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without it every response stalls about 40 ms on a delayed ACK.
    disable_nagle_algorithm = True
    server: Server
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
        with self.st.lock:
            self.st.bodies_read += 1
            self.st.in_flight += 1
            self.st.peak_in_flight = max(self.st.peak_in_flight, self.st.in_flight)
        try:
            self._route(method, route, query, body)
        finally:
            with self.st.lock:
                self.st.in_flight -= 1

    def _route(
        self, method: str, route: str, query: dict[str, list[str]], body: bytes
    ) -> None:
        if self.st.latency_s:
            time.sleep(self.st.latency_s)
        if route == "/connect/token" and method == "POST":
            self._token(body)
        elif route in ENDPOINTS:
            endpoint = ENDPOINTS[route]
            trial = endpoint.endswith("Trial")
            if method == "POST":
                self._recognize(body, endpoint)
            else:
                self._task(method, query, trial, with_results=True)
        elif route == "/v5.0/ocr/utilities/gettaskstatus" and method == "GET":
            self._task(method, query, False, with_results=False)
        else:
            self._json(
                404,
                problem(404, "Not Found"),
                record={"method": method, "path": self.path.split("?")[0]},
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
            self._json(400, problem(400, "Bad Request", "invalid Content-Length"))
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
            scripted = (
                self.st.token_scripted.popleft() if self.st.token_scripted else None
            )
            limited = self.st.rng.random() < self.st.faults.token_rate_429
        if locked:
            self.st.record({**record, "status": 429})
            self._send(429, b"", None, {"Retry-After": str(int(LOCKOUT_S))})
            return
        if scripted is not None or limited:
            status = scripted.status if scripted else 429
            retry_after = (
                scripted.retry_after if scripted else None
            ) or self.st.faults.retry_after
            self.st.record({**record, "status": status, "fault": status})
            self._send(status, b"", None, {"Retry-After": retry_after})
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
        token = make_jwt(self.st.token_ttl_s)
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
            self._json(401, problem(401, "Unauthorized"), extra=challenge)

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

    def _recognize(self, body: bytes, endpoint: str) -> None:
        """RecognizeImage, its trial twin, and RecognizePdf: one body shape (§3, §7); a PDF
        is valid only at RecognizePdf, and an image only at the others."""
        trial = endpoint.endswith("Trial")
        path = f"/v5.0/ocr/{endpoint}"
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
                problem(fault.status, "Injected fault", fault.detail),
                record=record,
                extra=extra,
            )
            return
        if fault is not None and fault.kind == "drop":
            self.st.record({**record, "status": None, "fault": "drop"})
            self._drop()
            return
        parsed = parse_recognize_body(body)
        if isinstance(parsed, Invalid):
            record["error"] = parsed.problem["errors"]
            self._json(400, parsed.problem, record=record)
            return
        image, settings = parsed
        pdf = endpoint == "RecognizePdf"
        valid = image.startswith(PDF_MAGIC) if pdf else image.startswith(MAGIC)
        sha = hashlib.sha256(image).hexdigest()
        record.update(image_sha256=sha, image_bytes=len(image), settings=settings)
        if not valid and self.st.bad_image == "reject":
            detail = "The file is not a PDF" if pdf else "Unsupported image format"
            self._json(400, problem(400, "Bad Request", detail), record=record)
            return
        guid = str(uuid.uuid4())
        script = self.st.task_script()
        with self.st.lock:
            self.st.tasks[guid] = Task(
                guid,
                time.monotonic(),
                settings,
                sha,
                len(image),
                valid,
                trial,
                pending_s=self.st.pending_s
                if script.pending_s is None
                else script.pending_s,
                processing_s=self.st.processing_s
                if script.processing_s is None
                else script.processing_s,
                outcome=script.outcome,
                messages=script.messages,
                warnings=script.warnings,
                endpoint=endpoint,
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
                problem(
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
            200,
            task_response(guid, task, with_results, time.monotonic()),
            record=record,
        )
