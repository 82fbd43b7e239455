"""The OAuth client-credentials token: fetch it, cache it until shortly before expiry, drop it on 401.

The token endpoint locks a credential pair for 10 minutes after 5 refusals, so a refusal is
remembered and re-raised without another call until its wait is over. A 429 is that lock-out
only when it follows a refusal; otherwise it is rate limiting, to be waited out and retried. New
credentials (a reload) come with a new cache.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from typing import Final

import requests

from ocrwatch.config import Credentials
from ocrwatch.errors import ApiError, AuthError, TokenRateLimitError, TransientApiError
from ocrwatch.log import register_secret
from ocrwatch.metrics import Metrics
from ocrwatch.retry import parse_retry_after
from ocrwatch.transport import Answer, call

REFRESH_MARGIN_S: Final = 60.0
LOCKOUT_S: Final = 600.0
WAIT_SLICE_S: Final = 1.0  # how long the token endpoint locks out refused credentials


class TokenCache:
    """Hands out an access token; one fetch at a time however many workers ask."""

    def __init__(
        self,
        fetch: Callable[[], tuple[str, float]],
        *,
        clock: Callable[[], float] = time.monotonic,
        refresh_margin_s: float = REFRESH_MARGIN_S,
        auth_retry_s: float = math.inf,
        max_wait_s: float = math.inf,
        metrics: Metrics | None = None,
    ) -> None:
        self._fetch = fetch
        self._metrics = metrics or Metrics()
        self._clock = clock
        self._margin_s = refresh_margin_s
        self._auth_retry_s = auth_retry_s
        self._max_wait_s = max_wait_s  # retry.max_delay: the cap on a rate-limit wait
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._refusal: str | None = None
        self._refused_until = 0.0
        self._limited_until = 0.0  # the endpoint's Retry-After, for every caller

    def get(self, on_wait: Callable[[], None] | None = None) -> str:
        """The token; `on_wait` is called every WAIT_SLICE_S while another caller fetches
        one (a worker waiting its turn is alive, not wedged: the watchdog hears of it)."""
        while not self._lock.acquire(timeout=WAIT_SLICE_S):
            if on_wait is not None:
                on_wait()
        try:
            return self._get()
        finally:
            self._lock.release()

    def _get(self) -> str:
        """`get` with the lock held."""
        now = self._clock()
        if self._refusal is not None and now < self._refused_until:
            raise AuthError(self._refusal, retry_after_s=self._refused_until - now)
        if self._token is not None and now < self._refresh_at:
            return self._token
        if now < self._limited_until:
            raise TokenRateLimitError(
                "the token endpoint is rate-limiting (HTTP 429)",
                status=429,
                retry_after_s=self._limited_until - now,
            )
        try:
            token, lifetime_s = self._counted_fetch()
        except TokenRateLimitError as exc:
            if self._refusal is None:
                # Retry-After counts from the answer, not from the question.
                wait = min(exc.retry_after_s or 1.0, self._max_wait_s)
                self._limited_until = self._clock() + wait
                raise
            lockout = AuthError(
                f"{self._refusal}; the token endpoint now locks these credentials out "
                "(HTTP 429): fix them, then wait",
                status=429,
                retry_after_s=exc.retry_after_s or LOCKOUT_S,
            )
            self._refused_until = now + (lockout.retry_after_s or LOCKOUT_S)
            raise lockout from None
        except AuthError as exc:
            self._refusal = str(exc)
            wait = (
                exc.retry_after_s
                if exc.retry_after_s is not None
                else self._auth_retry_s
            )
            self._refused_until = now + wait
            raise
        self._refusal = None
        self._token = token
        # A short-lived token (tests use 1 s) still gets half its life before a refresh.
        self._refresh_at = now + lifetime_s - min(self._margin_s, lifetime_s / 2)
        return token

    def _counted_fetch(self) -> tuple[str, float]:
        try:
            fetched = self._fetch()
        except AuthError:
            self._metrics.token_fetched("refused")
            raise
        except Exception:
            self._metrics.token_fetched("failed")
            raise
        self._metrics.token_fetched("ok")
        return fetched

    def invalidate(self, token: str) -> None:
        """Forget `token` (the API answered 401/403 to it), unless another worker already replaced it."""
        with self._lock:
            if self._token == token:
                self._token = None


def fetch_token(
    session: requests.Session,
    url: str,
    credentials: Credentials,
    timeout: tuple[float, float],
    proxies: dict[str, str] | None = None,
) -> tuple[str, float]:
    """POST client_credentials as a form and return (access_token, lifetime in seconds)."""
    form = {
        "grant_type": "client_credentials",
        "client_id": credentials.client_id,
        "client_secret": credentials.client_secret.get_secret_value(),
    }
    answer = call(
        session,
        "POST",
        url,
        what="the token endpoint",
        timeout=timeout,
        data=form,
        headers={"Accept": "application/json"},
        proxies=proxies,
    )
    if answer.status == 200:
        return _parse_token(answer)
    raise error_for_token_status(
        answer.status,
        answer.headers.get("Retry-After"),
        credentials.client_id,
        _oauth_error(answer),
    )


def _parse_token(answer: Answer) -> tuple[str, float]:
    try:
        body = json.loads(answer.text)
        token = body["access_token"]
        lifetime = float(body.get("expires_in", 3600))
    except (ValueError, KeyError, TypeError):
        raise TransientApiError(
            "token endpoint sent a malformed token response"
        ) from None
    if not isinstance(token, str) or not token:
        raise TransientApiError("token endpoint sent an empty access_token")
    register_secret(token)
    return token, lifetime


def _oauth_error(answer: Answer) -> str | None:
    """The RFC 6749 `error` code of a token response, if it has one."""
    try:
        body = json.loads(answer.text)
    except ValueError:
        return None
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def error_for_token_status(
    status: int, retry_after: str | None, client_id: str, oauth_error: str | None = None
) -> ApiError:
    """What a non-200 from the token endpoint means; it never echoes the response body.

    Only `invalid_client` (and `unauthorized_client`) are refused credentials; anything else
    (a proxy's 403 page, an outage) is trouble to wait out, not a reason to pause uploads.
    """
    wait = parse_retry_after(retry_after, time.time())
    if oauth_error in ("invalid_client", "unauthorized_client"):
        return AuthError(
            f"the token endpoint refused client_id `{client_id}` (HTTP {status}, "
            f"{oauth_error}); check api.client_id and the client secret",
            status=status,
        )
    if status == 429:
        return TokenRateLimitError(
            "the token endpoint is rate-limiting (HTTP 429)",
            status=status,
            retry_after_s=wait,
        )
    detail = f", {oauth_error}" if oauth_error else ""
    return TransientApiError(
        f"the token endpoint answered HTTP {status}{detail}",
        status=status,
        retry_after_s=wait,
    )
