"""The emulator's state: issued tokens, tasks, scripted faults, and what it received."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

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
    bodies_read: int = (
        0  # requests whose body has arrived, answered or not: "in flight" for tests
    )

    def record(self, entry: dict[str, Any]) -> None:
        entry = {"ts": time.time(), **entry}
        with self.lock:
            self.received.append(entry)
            if self.log_stream is not None:
                self.log_stream.write(json.dumps(entry) + "\n")
                self.log_stream.flush()
