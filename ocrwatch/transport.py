"""One HTTP call with bounds: a socket timeout on every read, a deadline for the whole answer, and
a size limit, with requests' errors turned into one sentence.

requests' own read timeout is per read, so a server that sends one byte every two seconds would
hold an upload thread for ever, and a 10 MB "answer" would be read to the end. Here the body is
streamed: it must be complete within the read timeout from when its headers arrived, and no
larger than the caller allows. What is not bounded as a whole: the headers (each line must come
within the read timeout, and http.client allows at most 100 of them, so a few minutes at worst)
and the sending of the body (each send must progress within the connect timeout).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import requests
import urllib3

from ocrwatch.errors import TransientApiError

CHUNK: Final = 64 * 1024
SMALL_ANSWER: Final = 1 << 20  # a token, a GUID, an error: never near a megabyte


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole HTTP answer, read within its bounds."""

    status: int
    headers: Mapping[str, str]
    text: str


def call(
    session: requests.Session,
    method: str,
    url: str,
    *,
    what: str,
    timeout: tuple[float, float],
    max_bytes: int = SMALL_ANSWER,
    **kwargs: Any,
) -> Answer:
    """Send and read the whole answer; raises TransientApiError naming `what` and the host."""
    try:
        with session.request(
            method, url, timeout=timeout, stream=True, **kwargs
        ) as response:
            deadline = time.monotonic() + timeout[1]
            body = _read(response, deadline, max_bytes, what, url)
            return Answer(response.status_code, response.headers, body)
    except requests.RequestException as exc:
        raise TransientApiError(unreachable(exc, what, url)) from None
    except urllib3.exceptions.HTTPError as exc:
        # Reading the streamed body raises urllib3's own errors, not requests' wrappers.
        host = urlsplit(url).netloc
        raise TransientApiError(
            f"{what} at {host}: the answer broke off ({type(exc).__name__})"
        ) from None


def _read(
    response: requests.Response, deadline: float, max_bytes: int, what: str, url: str
) -> str:
    host = urlsplit(url).netloc
    data = bytearray()
    while chunk := response.raw.read1(CHUNK, decode_content=True):
        data += chunk
        if len(data) > max_bytes:
            raise TransientApiError(
                f"{what} at {host} sent an answer larger than {max_bytes // 1024} KiB; "
                "it was not read to the end"
            )
        if time.monotonic() > deadline:
            raise TransientApiError(
                f"{what} at {host} did not finish its answer in time "
                f"({len(data)} bytes so far)"
            )
    try:
        return data.decode(response.encoding or "utf-8", errors="replace")
    except (
        LookupError
    ):  # a charset no codec knows: the GUIDs and JSON we want are ASCII
        return data.decode("utf-8", errors="replace")


def unreachable(exc: requests.RequestException, what: str, url: str) -> str:
    """One sentence for a request that got no answer: what failed, where, and what to check."""
    host = urlsplit(url).netloc
    if isinstance(exc, requests.exceptions.SSLError):
        return (
            f"{what} at {host}: its TLS certificate could not be verified; if a proxy "
            "inspects TLS, set api.ca_bundle (or REQUESTS_CA_BUNDLE) to its CA file"
        )
    if isinstance(exc, requests.exceptions.ProxyError):
        return f"{what} at {host}: the proxy failed; check api.proxy (or HTTPS_PROXY/HTTP_PROXY)"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"{what} at {host} did not answer in time ({type(exc).__name__})"
    key = "api.token_url (or api.base_url)" if "token" in what else "api.base_url"
    return (
        f"{what} at {url} cannot be reached ({type(exc).__name__}); check {key}, "
        "the network and any proxy"
    )
