"""Structured logging, and the redaction step that keeps secrets and tokens out of every line.

Only `cli` configures logging; other modules call `structlog.get_logger()`. Secrets are registered
here as soon as they are known (the client secret at config load, each token when issued) and
masked wherever they would appear, including inside exception text and tracebacks.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import structlog

MASK: Final = "**********"
_BEARER = re.compile(r"((?i:bearer)\s+)[A-Za-z0-9._~+/=-]+")
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
# Any bearer token and every registered secret (longest first) in one pattern: one pass per value.
_pattern: re.Pattern[str] = _BEARER


def register_secret(value: str) -> None:
    """Mask `value` in every log line from now on."""
    global _pattern
    if len(value) >= 4:
        with _secrets_lock:
            if value not in _secrets:
                _secrets.add(value)
                ordered = sorted(_secrets, key=len, reverse=True)
                secrets = "|".join(map(re.escape, ordered))
                _pattern = re.compile(f"{_BEARER.pattern}|{secrets}")


def _mask(match: re.Match[str]) -> str:
    bearer = match.group(1)  # the "Bearer " before a token, when that branch matched
    return MASK if bearer is None else bearer + MASK


def redact_text(text: str) -> str:
    return _pattern.sub(_mask, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    return value


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the last step before rendering, so nothing reaches output unmasked."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact_value(value)
    return event_dict


def configure_logging(
    *, json: bool | None = None, level: str = "info", stream: TextIO | None = None
) -> None:
    """JSON lines when the stream is not a terminal (journald), readable console output when it is."""
    out = stream or sys.stderr
    if json is None:
        json = not out.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # Resolve stderr per call, not once: tests and daemons may swap sys.stderr later.
        logger_factory=(lambda *_: structlog.PrintLogger(stream or sys.stderr)),
        cache_logger_on_first_use=False,
    )
