"""The Aspose.OCR Cloud API as ocrwatch uses it: stream one image (or PDF) up, get its task GUID
back, and read the task's results.

The request body is built around a base64 encoding done chunk by chunk, with the Content-Length
computed up front, so memory does not grow with image size; the same bytes are hashed as sent.
Nothing above this module imports `requests`.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Final, NamedTuple
from urllib.parse import urlsplit

import requests

from ocrwatch import __version__
from ocrwatch.auth import TokenCache, fetch_token
from ocrwatch.completeness import tiff_pages
from ocrwatch.config import ApiConfig, Credentials
from ocrwatch.errors import (
    ApiError,
    AuthError,
    ConfigError,
    FileChangedError,
    ProtocolError,
    RejectedError,
    TransientApiError,
)
from ocrwatch.log import redact_text, register_secret
from ocrwatch.metrics import Metrics
from ocrwatch.progress import Progress, call_bound_s
from ocrwatch.retry import RetryPolicy, parse_retry_after
from ocrwatch.settings import Settings
from ocrwatch.transport import SMALL_ANSWER, Answer, call

GUID_RE: Final = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
# A multiple of 3, so chunks base64-encode independently.
CHUNK_BYTES: Final = 3 * 256 * 1024
USER_AGENT: Final = f"ocrwatch/{__version__}"
RESULT_MAX_BYTES: Final = 256 << 20  # a searchable PDF of a long scan, base64
IMAGE_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"%PDF-", "PDF"),
)
# PDFs have their own endpoint with the same body (docs/aspose-api.md §7), and no trial one.
PDF_ENDPOINT: Final = "RecognizePdf"
AUTH_STATUSES: Final = (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)


def detect_image_type(head: bytes) -> str | None:
    """The image format (or "PDF") from its first bytes; the extension is not trusted."""
    for magic, kind in IMAGE_MAGIC:
        if head.startswith(magic):
            return kind
    return None


def base64_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


def payload_frame(settings: Settings) -> tuple[bytes, bytes]:
    """The JSON body around the base64 image: what goes before it and what goes after."""
    prefix = b'{"image": "'
    suffix = b'", "settings": ' + json.dumps(settings.to_wire()).encode() + b"}"
    return prefix, suffix


def parse_task_id(body: str) -> str:
    """The task GUID from a RecognizeImage answer: plain text, maybe quoted, maybe JSON."""
    text = body.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    if not GUID_RE.match(text):
        shown = " ".join(redact_text(text[:80]).split()) or "an empty body"
        raise ProtocolError(f"the service answered 200 with no task id: {shown!r}")
    return text.lower()


def problem_detail(body: str) -> str:
    """A short human reason from a ProblemDetails body, or the start of a plain one."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        parts = [str(data[k]) for k in ("title", "detail") if data.get(k)]
        errors = data.get("errors")
        if isinstance(errors, dict):
            parts += [
                f"{k}: {'; '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in errors.items()
            ]
        if parts:
            return redact_text(" ".join(" - ".join(parts).split())[:300])
    return redact_text(" ".join(body.split())[:300]) or "no detail given"


def error_for_status(
    status: int, detail: str, retry_after_s: float | None = None
) -> ApiError | RejectedError | None:
    """Map an Aspose HTTP status to what it means for this file; None means success."""
    if 200 <= status < 300:
        return None
    if status in AUTH_STATUSES:
        return AuthError(
            f"the service refused a freshly issued token (HTTP {status}); check the account and its subscription",
            status=status,
        )
    if (
        status in (HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS)
        or status >= 500
    ):
        return TransientApiError(
            f"the service answered HTTP {status}",
            status=status,
            retry_after_s=retry_after_s,
        )
    if 400 <= status < 500:
        return RejectedError(f"rejected by the service (HTTP {status}): {detail}")
    return TransientApiError(
        f"unexpected HTTP {status} from the service", status=status
    )


@dataclass(slots=True)
class ImageBody:
    """A request body that streams `{"image": "<base64>", "settings": {...}}` from an open file."""

    fd: int
    size: int
    prefix: bytes
    suffix: bytes
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    short_read: bool = False
    # Called before each chunk is read: a body sent chunk by chunk is progress, a read
    # that hangs on a dead share is not.
    progress: Callable[[], None] = field(default=lambda: None)

    def __len__(self) -> int:
        return len(self.prefix) + base64_length(self.size) + len(self.suffix)

    def payload(self) -> bytes | ImageBody:
        """One buffer for an image that fits in one chunk (one send, no per-chunk work in
        `requests`); a bigger one streams, so memory does not grow with it."""
        return b"".join(self) if self.size <= CHUNK_BYTES else self

    def __iter__(self) -> Iterator[bytes]:
        self.sha256 = hashlib.sha256()
        yield self.prefix
        offset = 0
        while offset < self.size:
            self.progress()
            chunk = os.pread(self.fd, min(CHUNK_BYTES, self.size - offset), offset)
            if not chunk:
                # The file shrank under us: what was promised in Content-Length can't be sent.
                self.short_read = True
                raise FileChangedError("the file got shorter while it was being sent")
            self.sha256.update(chunk)
            offset += len(chunk)
            yield base64.b64encode(chunk)
        yield self.suffix


@dataclass(frozen=True, slots=True)
class Submission:
    """A task the service accepted (and bills).

    `changed` says why the task no longer describes the file as it is on disk (it changed or
    went away while it was sent), so that no sidecar claims it does.
    """

    guid: str
    sha256: str
    size: int
    mtime_ns: int
    attempts: int
    image_type: str
    changed: str | None = None


class ResultEntry(NamedTuple):
    """One `results[]` entry: its type as the service named it, and its decoded bytes."""

    kind: str
    data: bytes


@dataclass(frozen=True, slots=True)
class TaskResult:
    """A task as the service reported it: every result in its order, and what it said."""

    guid: str
    status: str
    results: tuple[ResultEntry, ...] = ()
    messages: tuple[str, ...] = ()  # error.messages: why a task ended in Error
    warnings: tuple[str, ...] = ()  # error.warnings: possible even when Completed
    code: str = ""  # responseStatusCode

    def data(self, kind: str) -> bytes | None:
        return next((e.data for e in self.results if e.kind == kind), None)

    @property
    def text(self) -> str | None:
        data = self.data("Text")
        return None if data is None else data.decode("utf-8", errors="replace")


class OcrClient:
    """Submits images; safe to share between worker threads (each gets its own Session)."""

    def __init__(
        self,
        api: ApiConfig,
        credentials: Credentials | None,
        *,
        policy: RetryPolicy | None = None,
        auth_retry_s: float = math.inf,
        metrics: Metrics | None = None,
    ) -> None:
        self._timeout = (api.timeout.connect, api.timeout.read)
        self._policy = policy or RetryPolicy(
            max_attempts=api.retry.max_attempts, max_delay_s=api.retry.max_delay
        )
        if metrics is not None:
            self._policy = dataclasses.replace(self._policy, on_retry=metrics.retried)
        self._local = threading.local()
        # One token fetch; a worker waiting for another's fetch beats every second.
        self._call_bound_s = call_bound_s(*self._timeout)
        self.trial = api.trial or credentials is None
        endpoint = "RecognizeImageTrial" if self.trial else "RecognizeImage"
        self._url = f"{api.base_url}/v5.0/ocr/{endpoint}"
        self._pdf_url = f"{api.base_url}/v5.0/ocr/{PDF_ENDPOINT}"
        self._proxies = proxies_for(self._url, api)
        self._verify = ca_bundle(api)
        self.tokens: TokenCache | None = None
        if credentials is not None and not self.trial:
            creds = credentials
            token_url = api.resolved_token_url
            token_proxies = proxies_for(token_url, api)
            self.tokens = TokenCache(
                lambda: fetch_token(
                    self._session(), token_url, creds, self._timeout, token_proxies
                ),
                auth_retry_s=auth_retry_s,
                max_wait_s=api.retry.max_delay,
                metrics=metrics,
            )

    def check_credentials(self) -> bool:
        """Fetch one token, and nothing else (`check --online`); False in trial mode, which
        has no credentials. Raises AuthError or TransientApiError as an upload would."""
        if self.tokens is None:
            return False
        self.tokens.get()
        return True

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            # The environment's proxies and CA bundle were read once, in `__init__`: requests
            # would otherwise look them up again on every request.
            session.trust_env = False
            session.verify = self._verify
            self._local.session = session
        return session

    def submit(
        self,
        path: Path,
        settings: Settings,
        *,
        fd: int | None = None,
        progress: Progress | None = None,
    ) -> Submission:
        """Send one image (a PDF to RecognizePdf) and return its task; raises RejectedError,
        ApiError or FileChangedError (the file changed before the service accepted it).

        `fd`: the file as the caller opened and checked it; it stays open. Without it, `path`
        is opened here. `progress` is told of every step (a call, a chunk, a backoff wait).
        """
        own = fd is None
        fd = open_image(path) if fd is None else fd
        beat = progress or _no_progress
        try:
            before = os.fstat(fd)
            image_type = _check_image(fd, before, path)
            url = self._endpoint(image_type)
            prefix, suffix = payload_frame(settings)
            body = ImageBody(
                fd,
                before.st_size,
                prefix,
                suffix,
                progress=lambda: beat(f"sending {path}", 0.0),
            )
            guid, attempts = self._policy.call(
                lambda: self._post_image(url, body, beat), path=str(path), progress=beat
            )
            return Submission(
                guid,
                body.sha256.hexdigest(),
                before.st_size,
                before.st_mtime_ns,
                attempts,
                image_type,
                changed=_why_changed(path, fd, before),
            )
        finally:
            if own:
                os.close(fd)

    def _endpoint(self, image_type: str) -> str:
        if image_type != "PDF":
            return self._url
        if self.trial:
            raise RejectedError(
                "a PDF needs the paid API: RecognizePdf has no trial endpoint; "
                "set api.trial: false and give credentials, or convert the PDF to images"
            )
        return self._pdf_url

    def _post_image(self, url: str, body: ImageBody, progress: Progress) -> str:
        answer = self._request("POST", url, body, progress=progress)
        error = error_for_status(
            answer.status,
            problem_detail(answer.text),
            parse_retry_after(answer.headers.get("Retry-After"), time.time()),
        )
        if error is not None:
            raise error
        return parse_task_id(answer.text)

    def _request(
        self,
        method: str,
        url: str,
        body: ImageBody | None = None,
        max_bytes: int = SMALL_ANSWER,
        progress: Progress | None = None,
    ) -> Answer:
        """Send with the current token; after a 401/403, once more with a fresh one.

        A token can be revoked or expire early; a second refusal is the service's real answer
        (as the Java SDK does it).
        """
        beat = progress or _no_progress

        def waiting() -> None:  # another worker is fetching the token: we wait our turn
            beat("waiting for a token another worker fetches", self._call_bound_s)

        beat("getting a token", self._call_bound_s)
        token = self.tokens.get(waiting) if self.tokens else None
        beat(f"calling {urlsplit(url).netloc}", 0.0)
        answer = self._send(method, url, token, body, max_bytes)
        if answer.status in AUTH_STATUSES and self.tokens and token:
            self.tokens.invalidate(token)
            beat("getting a fresh token", self._call_bound_s)
            fresh = self.tokens.get(waiting)
            beat(f"calling {urlsplit(url).netloc} again", 0.0)
            answer = self._send(method, url, fresh, body, max_bytes)
        return answer

    def _send(
        self,
        method: str,
        url: str,
        token: str | None,
        body: ImageBody | None,
        max_bytes: int,
    ) -> Answer:
        headers = {"Accept": "text/plain" if body is not None else "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            return call(
                self._session(),
                method,
                url,
                what="the service",
                timeout=self._timeout,
                max_bytes=max_bytes,
                data=None if body is None else body.payload(),
                headers=headers,
                proxies=self._proxies,
            )
        except TransientApiError:
            if body is not None and body.short_read:
                raise FileChangedError(
                    "the file got shorter while it was being sent"
                ) from None
            raise

    def fetch_result(
        self, guid: str, *, pdf: bool = False, progress: Progress | None = None
    ) -> TaskResult:
        """One GET of a task's state and, once Completed, its decoded results.

        `pdf`: the task was created by RecognizePdf, and is read from there.
        """
        url = self._pdf_url if pdf and not self.trial else self._url
        answer = self._request(
            "GET", f"{url}?id={guid}", max_bytes=RESULT_MAX_BYTES, progress=progress
        )
        error = error_for_status(answer.status, problem_detail(answer.text))
        if error is not None:
            raise error
        return parse_task_result(answer.text)

    def wait_for_result(
        self,
        guid: str,
        *,
        deadline_s: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        pdf: bool = False,
    ) -> TaskResult:
        """Poll until the task is Completed, Error or NotExist, backing off from 2 s to 10 s."""
        waited, delay = 0.0, 2.0
        while True:
            result = self.fetch_result(guid, pdf=pdf)
            if result.status not in ("Pending", "Processing") or waited >= deadline_s:
                return result
            sleep(delay)
            waited += delay
            delay = min(10.0, delay * 1.5)


def _no_progress(doing: str, wait_s: float) -> None:
    """Nobody watches this call (`submit`, `fetch`, tests)."""


def proxies_for(url: str, api: ApiConfig) -> dict[str, str]:
    """The proxy for `url`: `api.proxy`, else HTTPS_PROXY/HTTP_PROXY unless NO_PROXY exempts it.

    A password in a proxy URL is masked in all output from now on.
    """
    if api.proxy is not None:
        proxy = api.proxy.get_secret_value()
        proxies = {"http": proxy, "https": proxy}
    else:
        proxies = dict(requests.utils.get_environ_proxies(url))
    for proxy in proxies.values():
        parts = urlsplit(proxy)
        if parts.password:
            register_secret(parts.password)
        if parts.scheme not in ("http", "https"):
            raise ConfigError(
                f"the environment's proxy for {urlsplit(url).netloc} is {parts.scheme}://, "
                "which is not supported; use an HTTP(S) proxy, or set api.proxy"
            )
    return proxies


def ca_bundle(api: ApiConfig) -> str | bool:
    """The CA certificates to trust: `api.ca_bundle`, else REQUESTS_CA_BUNDLE or SSL_CERT_FILE,
    else requests' own (certifi)."""
    if api.ca_bundle is not None:
        return str(api.ca_bundle)
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if value := os.environ.get(name):
            if not Path(value).is_file():
                raise ConfigError(
                    f"{name}: {value} is not a file; give the path of a PEM CA bundle"
                )
            return value
    return True


def parse_task_result(body: str) -> TaskResult:
    """The task's state and every `results[]` entry decoded, in the service's order."""
    try:
        data = json.loads(body)
        status = str(data["taskStatus"])
        results = tuple(
            ResultEntry(str(item["type"]), base64.b64decode(item["data"] or ""))
            for item in data.get("results") or []
        )
        error = data.get("error") or {}
    except (ValueError, KeyError, TypeError) as exc:
        raise TransientApiError(
            f"malformed task response ({type(exc).__name__})"
        ) from None
    return TaskResult(
        guid=str(data.get("id") or ""),
        status=status,
        results=results,
        messages=tuple(map(str, error.get("messages") or ())),
        warnings=tuple(map(str, error.get("warnings") or ())),
        code=str(data.get("responseStatusCode") or ""),
    )


def open_image(path: Path, *, nofollow: bool = False) -> int:
    """Open a file to read and send it, with one sentence for why it cannot be.

    `nofollow`: the path was not a link when it was looked at, and must not be one now.
    Raises FileChangedError if it is gone, RejectedError if it can never be read as it is.
    """
    # O_NONBLOCK: a FIFO dropped into a folder must not hang a worker on open.
    flags = os.O_RDONLY | os.O_NONBLOCK | (os.O_NOFOLLOW if nofollow else 0)
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        if not os.path.lexists(path):
            raise FileChangedError(
                "the file disappeared before it could be read"
            ) from None
        raise RejectedError(
            "cannot read the file: it is a dangling symbolic link"
        ) from None
    except IsADirectoryError:
        raise RejectedError("not a file: it is a directory") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RejectedError(
                "cannot read the file: it is a symbolic link loop"
            ) from None
        raise RejectedError(f"cannot read the file: {exc.strerror}") from None


def _check_image(fd: int, st: os.stat_result, path: Path) -> str:
    if stat.S_ISDIR(st.st_mode):
        raise RejectedError("not a file: it is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise RejectedError(
            "cannot read the file: it is not a regular file (a FIFO, socket or device)"
        )
    if st.st_size == 0:
        raise RejectedError("the file is empty")
    try:
        head = os.pread(fd, 16, 0)
    except OSError as exc:
        raise RejectedError(f"cannot read the file: {exc.strerror}") from None
    kind = detect_image_type(head)
    if kind is None:
        raise RejectedError(
            f"not a supported image: {path.name} is not PNG, JPEG, TIFF, BMP, GIF or PDF by its content"
        )
    if kind == "TIFF":
        try:
            pages = tiff_pages(lambda offset, n: os.pread(fd, n, offset), st.st_size)
        except OSError as exc:
            raise RejectedError(f"cannot read the file: {exc.strerror}") from None
        if pages > 1:
            raise RejectedError(
                f"a TIFF with {pages} pages; RecognizeImage reads single-page TIFF only; "
                "split it or convert it to PDF"
            )
    return kind


def _why_changed(path: Path, fd: int, before: os.stat_result) -> str | None:
    """A file that changed while it was sent must not get a .guid for content it no longer has."""
    try:
        now_fd = os.fstat(fd)
        now_path = path.stat()
    except OSError:
        return "the file disappeared while it was being sent"
    same = (
        now_fd.st_size == before.st_size
        and now_fd.st_mtime_ns == before.st_mtime_ns
        and now_path.st_ino == before.st_ino
        and now_path.st_size == before.st_size
        and now_path.st_mtime_ns == before.st_mtime_ns
    )
    return None if same else "the file changed while it was being sent"
