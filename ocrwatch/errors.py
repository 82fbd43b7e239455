"""
Every error ocrwatch raises on purpose.

OcrwatchError                  fatal unless caught per file; exit 1
├── ConfigError                bad config, profile or usage; exit 2, one sentence, no traceback
├── JournalError               state_dir unusable (locked, corrupt, unwritable)
├── ApiError                   talking to Aspose failed
│   ├── AuthError              credentials refused -- don't hammer the token endpoint
│   ├── TransientApiError      timeout, connection, 408/429/5xx -- retry, then "retry later"
│   │   └── TokenRateLimitError  the token endpoint's 429 -- wait (up to retry.max_delay), retry
│   └── ProtocolError          a 200 that makes no sense (no task id) -- not retried at once:
│                              each POST may be billed; every upload waits 10 min to 1 h
├── ListenError                the metrics listener cannot bind (a port in use); exit 1
├── SidecarError               a sidecar could not be written (read-only share, disk full)
├── FileChangedError           the file changed while it was read -- settle again, then resubmit
└── RejectedError              this file can never succeed as it is -> `.error` sidecar
                               (empty, not an image, unreadable, or a 4xx other than 401/403/408/429)

Messages are one sentence and never contain a secret: no headers, token bodies or config reprs.
"""

from __future__ import annotations

from typing import ClassVar


class OcrwatchError(Exception):
    """Base for every error ocrwatch raises on purpose."""

    exit_code: ClassVar[int] = 1


class ConfigError(OcrwatchError):
    """The config, a profile or the command line is invalid; the message says which key and how to fix it."""

    exit_code = 2


class JournalError(OcrwatchError):
    """The journal in state_dir cannot be opened or written."""


class ApiError(OcrwatchError):
    """Talking to the Aspose service failed.

    `retry_after_s` is the server's own word on when to come back, if it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
        self.attempts = 1


class AuthError(ApiError):
    """The token endpoint refused the credentials; retrying soon only earns a 10-minute lockout."""


class TransientApiError(ApiError):
    """A timeout, a dropped connection, 408, 429 or 5xx: worth trying again later."""


class ProtocolError(ApiError):
    """The service answered, but not with what the API promises (a 200 with no task id)."""


class TokenRateLimitError(TransientApiError):
    """The token endpoint asked us to slow down: wait its Retry-After (capped), then retry."""


class ListenError(OcrwatchError):
    """`metrics.listen` cannot be bound: something else holds the port, or the host is not ours."""


class SidecarError(OcrwatchError):
    """A sidecar could not be written next to the original (read-only share, disk full)."""


class FileChangedError(OcrwatchError):
    """The file changed while it was being read and sent, so what was sent is not what is on disk."""


class RejectedError(OcrwatchError):
    """This file can never succeed as it is; the message goes into its `.error` sidecar."""
