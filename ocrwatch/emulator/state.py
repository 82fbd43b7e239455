"""The emulator's state: issued tokens, tasks, scripted faults, and what it received.

The enum values are written here from docs/aspose-api.md §3.1, not imported from ocrwatch: a
misreading of the spec must not cancel out on both sides.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

# docs/aspose-api.md §3.1 (the SDK's enums and the supported-languages page), in the spec's
# order and spelling, as words, so that they can be compared with it by eye (hence the noqa).
LANGUAGES: Final = tuple(
    """English German French Italian Spanish Portuguese Polish Slovene Slovak Netherlands
    Lithuanian Latvian Danish Norwegian Finnish Serbian Croatian Czech Swedish Estonian Romanian
    Chinese Russian Arabic Hindi Ukrainan Bengali Tibetan Thai Urdu Turkish Korean Indonesian
    Hebrew Javanese Greek Japanese Persian Albanian Latin Vietnamese Uzbek Georgian Bulgarian
    Azerbaijani Kazah Macedonian Belorussian Malay Hausa Sundanese Swahili Tagalog Yoruba Oromo
    Cebuano Dutch Kurdish Serbo_Croatian Malagasy Zhuang Turkmen Somali Hungarian Chichewa Rwanda
    Min_Bei Zulu Ilocano Min_Dong Quechua Hiligaynon Hmong Shona Xhosa Betawi Catalan Afrikaans
    Minangkabau Sotho_Southern Bikol Makua Kanuri Tswana Kikongo Luo Sukuma Tsonga Bosnian Bemba
    Nandi Palembang Umbundu Sotho_Northern Waray_Waray Lamani Low_German Gilaki Musi HWT_ENG
    Pu_Xian Kapampangan Bouyei Galician Ndebele Yao Sasak Swati Gusii Meru Wolaytta Dong
    Pangasinan Dimli Makassar Tumbuka Serer_Sine Occitan Tonga Muong Kiche Luguru Wu Cantonese
    Min_Nan Xiang Hakka Gan Chechen Kabardian Marathi Bhojpuri Maithili Awadhi Nepali Marwari
    Magahi Haryanvi Chattisgarhi Dhundari Konkani Kanauji Mewati Rajbanshi Garhwali Kumauni Wagdi
    Malvi Mewari Uyghur Telugu Kannada Tamil Devanagari""".split()  # noqa: SIM905
)
RESULT_TYPES: Final = tuple(
    "Text Pdf TextAndPdf Hocr TextAndHocr PdfAndHocr TextAndPdfAndHocr ImagePNG JSON".split()  # noqa: SIM905
)
DSR_MODES: Final = tuple(
    "Regions DsrNoFilter DsrAndFilter NoDsrNoFilter TextDetector DsrPlusDetector PolygonalTextDetector LineDetector".split()  # noqa: SIM905
)
DSR_CONFIDENCES: Final = tuple("Default Low LowMid Mid MidHigh High Ultra All".split())  # noqa: SIM905
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
PDF_MAGIC: Final = b"%PDF-"
TASK_OUTCOMES: Final = ("Completed", "Error", "NotExist")
TASK_ERROR_MESSAGE: Final = "The emulator was told to fail this task."


@dataclass
class Faults:
    """Random fault rates (0..1) for the RecognizeImage endpoints, and the Retry-After to send.

    `token_rate_429` is the token endpoint's own rate limiting (not the lock-out after refused
    credentials, which the emulator does anyway). `rate_task_error` and `rate_task_lost` are
    accepted tasks that end in `Error` (with `error.messages`) or read as `NotExist`;
    `task_warning`, when set, goes in every finished task's `error.warnings`.
    """

    rate_503: float = 0.0
    rate_429: float = 0.0
    retry_after: str = "1"
    rate_drop: float = 0.0
    rate_accept_drop: float = 0.0
    token_rate_429: float = 0.0
    rate_task_error: float = 0.0
    rate_task_lost: float = 0.0
    task_warning: str = ""


@dataclass(frozen=True)
class TaskScript:
    """How one accepted task ends: `outcome` is Completed, Error or NotExist, after its own
    Pending and Processing times (None: the emulator's)."""

    outcome: str = "Completed"
    messages: tuple[str, ...] = (TASK_ERROR_MESSAGE,)
    warnings: tuple[str, ...] = ()
    pending_s: float | None = None
    processing_s: float | None = None

    def __post_init__(self) -> None:
        if self.outcome not in TASK_OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(TASK_OUTCOMES)}")


@dataclass
class Task:
    guid: str
    created: float
    settings: dict[str, Any]
    image_sha256: str
    image_bytes: int
    valid_image: bool
    trial: bool
    pending_s: float = 0.0
    processing_s: float = 0.0
    outcome: str = "Completed"  # Error, or NotExist: the service lost it
    messages: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    endpoint: str = "RecognizeImage"


@dataclass
class Scripted:
    kind: str  # "status", "drop", "accept_drop"
    status: int = 0
    retry_after: str | None = None
    detail: str = ""  # ProblemDetails.detail of a scripted status


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
    token_scripted: deque[Scripted] = field(default_factory=deque)
    task_scripts: deque[TaskScript] = field(default_factory=deque)
    received: list[dict[str, Any]] = field(default_factory=list)
    token_calls: int = 0
    # Requests whose body has arrived, answered or not: "in flight" for tests.
    bodies_read: int = 0
    in_flight: int = 0  # requests being answered right now
    peak_in_flight: int = 0

    def task_script(self) -> TaskScript:
        """How the task being accepted ends: scripted first, else by the fault rates."""
        with self.lock:
            if self.task_scripts:
                return self.task_scripts.popleft()
            f, roll = self.faults, self.rng.random()
        warnings = (f.task_warning,) if f.task_warning else ()
        if roll < f.rate_task_error:
            return TaskScript("Error", warnings=warnings)
        if roll < f.rate_task_error + f.rate_task_lost:
            return TaskScript("NotExist")
        return TaskScript(warnings=warnings)

    def record(self, entry: dict[str, Any]) -> None:
        entry = {"ts": time.time(), **entry}
        with self.lock:
            self.received.append(entry)
            if self.log_stream is not None:
                self.log_stream.write(json.dumps(entry) + "\n")
                self.log_stream.flush()
