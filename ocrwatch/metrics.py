"""Prometheus metrics and `/healthz` for `ocrwatch run`, in a registry of the daemon's own.

Counters are bumped where outcomes are decided (intake, job loop, recorder, token cache, retry
policy), never from log events, so a quieter log level loses nothing; the gauges that read the
journal are computed when scraped. Accepted risk: the listener has neither TLS nor a password, so
it binds to loopback unless a host is written out in the config.
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ocrwatch.errors import ListenError

log = structlog.get_logger()

# Service calls take 0.3-3 s; retries within one submission and big scans take minutes.
UPLOAD_BUCKETS_S: Final = (
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
TOKEN_RESULTS: Final = ("ok", "refused", "failed")
HEALTH_PATH: Final = "/healthz"
METRICS_PATH: Final = "/metrics"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True, slots=True)
class Gauges:
    """What the daemon looks like at one scrape; None: the journal could not be read."""

    queue_depth: int | None
    oldest_queued_age_s: float | None
    held: int | None
    observers: int
    observers_alive: int
    workers_alive: int
    in_flight: int
    paused: bool
    fetching: int | None = None  # files waiting for their results


class Metrics:
    """The daemon's counters and upload histogram; each named for what happened, not for a log line.

    Cheap enough to build for a `submit` or a test that never serves it.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._seen = Counter(
            "ocrwatch_files_seen",
            "Files that settled and were queued in the journal.",
            registry=r,
        )
        self._submitted = Counter(
            "ocrwatch_files_submitted",
            "Uploads the service accepted (each one is a billed task).",
            registry=r,
        )
        self._deduplicated = Counter(
            "ocrwatch_files_deduplicated",
            "Files given the GUID of the same content accepted lately, without an upload.",
            registry=r,
        )
        self._rejected = Counter(
            "ocrwatch_files_rejected",
            "Files that got an .error sidecar (not an image, empty, refused with a 4xx).",
            registry=r,
        )
        self._retries = Counter(
            "ocrwatch_retries",
            "Attempts of one submission retried at once after transient trouble.",
            registry=r,
        )
        self._retry_later = Counter(
            "ocrwatch_retry_later",
            "Submissions handed back to the journal to be tried again later.",
            registry=r,
        )
        self._tokens = Counter(
            "ocrwatch_token_fetches",
            "Calls to the token endpoint, by result.",
            ["result"],
            registry=r,
        )
        for result in TOKEN_RESULTS:
            self._tokens.labels(result)  # present at 0 before the first fetch
        self._polls = Counter(
            "ocrwatch_result_polls",
            "Questions to the service about a task's result.",
            registry=r,
        )
        self._fetched = Counter(
            "ocrwatch_results_fetched",
            "Files whose result files were written (they are then completed).",
            registry=r,
        )
        self._fetch_failed = Counter(
            "ocrwatch_fetch_failed",
            "Files that got an .error instead of a result (task Error, lost, timed out).",
            registry=r,
        )
        self._resubmitted = Counter(
            "ocrwatch_resubmitted",
            "Files uploaded once more because the service lost their task (NotExist).",
            registry=r,
        )
        self._upload_s = Histogram(
            "ocrwatch_upload_seconds",
            "Time from the start of an upload to the service's acceptance, retries included.",
            buckets=UPLOAD_BUCKETS_S,
            registry=r,
        )

    def files_seen(self, count: int) -> None:
        if count:
            self._seen.inc(count)

    def upload_accepted(self, seconds: float) -> None:
        self._submitted.inc()
        self._upload_s.observe(seconds)

    def deduplicated(self) -> None:
        self._deduplicated.inc()

    def rejected(self) -> None:
        self._rejected.inc()

    def retried(self) -> None:
        self._retries.inc()

    def retry_later(self) -> None:
        self._retry_later.inc()

    def polled(self) -> None:
        self._polls.inc()

    def result_fetched(self) -> None:
        self._fetched.inc()

    def fetch_failed(self) -> None:
        self._fetch_failed.inc()

    def resubmitted(self) -> None:
        self._resubmitted.inc()

    def token_fetched(self, result: str) -> None:
        self._tokens.labels(result).inc()

    def watch(self, gauges: Callable[[], Gauges]) -> None:
        """Serve the gauges `gauges()` computes at each scrape (it is called in the server's thread)."""
        self.registry.register(_GaugeCollector(gauges))


class _GaugeCollector(Collector):
    def __init__(self, gauges: Callable[[], Gauges]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = self._gauges()
        values: list[tuple[str, str, float | None]] = [
            (
                "ocrwatch_queue_depth",
                "Files queued, failed (waiting to retry) or being sent, held ones included.",
                g.queue_depth,
            ),
            (
                "ocrwatch_oldest_queued_age_seconds",
                "Age of the oldest file waiting to be sent, held ones left out; 0 if none.",
                g.oldest_queued_age_s,
            ),
            (
                "ocrwatch_files_held",
                "Files held by an invalid .ocrwatch.yaml, a truncated image or an unwritable folder.",
                g.held,
            ),
            ("ocrwatch_observers", "Watched folders.", g.observers),
            (
                "ocrwatch_observers_alive",
                "Watched folders whose observer runs.",
                g.observers_alive,
            ),
            ("ocrwatch_workers_alive", "Upload threads alive.", g.workers_alive),
            ("ocrwatch_uploads_in_flight", "Files being processed now.", g.in_flight),
            (
                "ocrwatch_files_fetching",
                "Files submitted with fetch_results whose results are not written yet.",
                g.fetching,
            ),
            (
                "ocrwatch_paused",
                "1 while uploads wait out refused credentials or senseless answers.",
                float(g.paused),
            ),
        ]
        for name, doc, value in values:
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)


def health_answer(problems: list[str]) -> tuple[str, bytes]:
    """The `/healthz` status line and body for the problems found (none: healthy)."""
    if not problems:
        return "200 OK", b"ok\n"
    return "503 Service Unavailable", "".join(f"{p}\n" for p in problems).encode()


def make_app(metrics: Metrics, problems: Callable[[], list[str]]) -> App:
    """`/metrics` from prometheus-client, `/healthz` from `problems()`, 404 for anything else."""
    scrape: App = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == METRICS_PATH:
            return scrape(environ, start_response)
        if path == HEALTH_PATH and environ["REQUEST_METHOD"] in ("GET", "HEAD"):
            status, body = health_answer(problems())
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found; try /metrics or /healthz\n"]

    return app


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up a stop

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that hung up mid-answer: one log line, not a traceback on stderr."""
        error = sys.exc_info()[1]
        log.warning("metrics.request_failed", error=f"{type(error).__name__}: {error}")


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every 15 s would drown the log; nothing here is worth a line."""


class MetricsServer:
    """The HTTP listener for `/metrics` and `/healthz`, serving in a thread of its own."""

    def __init__(self, host: str, port: int, app: App) -> None:
        """Bind now, so that a port in use is known before the daemon says it started.

        Raises ListenError.
        """
        server = _Server6 if ":" in host else _Server
        try:
            self._httpd = make_server(
                host, port, app, server_class=server, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ListenError(
                f"metrics.listen: cannot listen on {_join(host, port)} ({exc.strerror or exc}); "
                "stop what uses it or choose another address or port"
            ) from None
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            args=(0.1,),
            name="metrics",
            daemon=True,
        )
        self._thread.start()

    @property
    def address(self) -> str:
        return _join(self.host, self.port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


Address = tuple[str, int]


class Endpoint:
    """The listener where the config wants it: opened at the start, moved by a reload whose
    `metrics.listen` changed, closed at the stop."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._server: MetricsServer | None = None
        self._wanted: Address | None = None

    @property
    def address(self) -> str | None:
        """Where it listens (the bound port, when 0 was asked for); None if it does not."""
        return None if self._server is None else self._server.address

    def start(self, wanted: Address | None) -> None:
        """Raises ListenError: at the start, a listener that cannot be had is fatal."""
        if wanted is not None:
            self._server = MetricsServer(*wanted, self._app)
        self._wanted = wanted

    def move(self, wanted: Address | None) -> None:
        """A reload: listen at `wanted` instead. Raises ListenError, and keeps the old
        listener, if it cannot."""
        if wanted == self._wanted:
            return
        old = self._server
        if old is not None and wanted is not None and old.port == wanted[1]:
            # The same port on another address (127.0.0.1 -> 0.0.0.0) is only free once
            # the old listener is closed.
            old.stop()
            self._server = None
            try:
                self._server = MetricsServer(*wanted, self._app)
            except ListenError:
                self._server = MetricsServer(old.host, old.port, self._app)
                raise
        else:
            self._server = None if wanted is None else MetricsServer(*wanted, self._app)
            if old is not None:
                old.stop()
        self._wanted = wanted

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._wanted = None
