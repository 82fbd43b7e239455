"""An upload pause as the journal keeps it, so that `status` can tell why nothing is sent.

The pause itself lives in the running daemon (the job loop, the token cache); this is its note
in the journal's `meta` table, written when one starts and removed when it ends or a reload
ends it. A note left by a daemon that was killed says nothing about now: `status` shows it
as such.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from ocrwatch.log import redact_text

PAUSE_KEY: Final = "uploads.paused"


class Why(StrEnum):
    CREDENTIALS_REFUSED = "credentials_refused"
    BAD_ANSWERS = "bad_answers"  # answers that made no sense (no task id in a 200)
    RATE_LIMITED = "rate_limited"  # the token endpoint's 429


@dataclass(frozen=True, slots=True)
class Pause:
    why: Why
    error: str
    since: float
    until: float

    def encode(self) -> str:
        return json.dumps(
            {
                "why": self.why.value,
                "error": redact_text(self.error),
                "since": self.since,
                "until": self.until,
            }
        )

    @classmethod
    def decode(cls, text: str | None) -> Pause | None:
        """None for no note, or one this version cannot read (it is only a note)."""
        if text is None:
            return None
        try:
            data = json.loads(text)
            return cls(
                Why(data["why"]),
                str(data["error"]),
                float(data["since"]),
                float(data["until"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
