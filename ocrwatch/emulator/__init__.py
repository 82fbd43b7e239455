"""A local Aspose.OCR Cloud v5.0 server for trying ocrwatch offline, for tests and for benchmarks.

It follows docs/aspose-api.md (token flow, exact JSON keys and enum strings, text/plain GUIDs, the
token-endpoint lockout), serves RecognizeImage, RecognizeImageTrial and RecognizePdf, returns a
valid file for every result type, and injects faults on request (HTTP errors, dropped
connections, tasks that end in Error or read as NotExist, warnings). It never imports ocrwatch's client or auth,
so a misreading of the spec cannot cancel out on both sides.
"""

from __future__ import annotations

import random
import ssl
import threading
from pathlib import Path
from typing import Any

from ocrwatch.emulator.handler import Handler, Server
from ocrwatch.emulator.state import (
    TASK_ERROR_MESSAGE,
    EmulatorState,
    Faults,
    Scripted,
    TaskScript,
)

__all__ = ["Emulator", "Faults", "TaskScript"]


class Emulator:
    """The server, run in a background thread; tests steer it through its methods."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = "emulator",
        client_secret: str = "emulator-secret",
        token_ttl_s: float = 3600.0,
        latency_s: float = 0.0,
        pending_s: float = 0.0,
        processing_s: float = 0.0,
        faults: Faults | None = None,
        bad_image: str = "reject",
        empty_401: bool = False,
        seed: int | None = None,
        log_path: Path | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """`tls`: (certificate chain, key) files to serve HTTPS instead of HTTP."""
        self.state = EmulatorState(
            client_id=client_id,
            client_secret=client_secret,
            token_ttl_s=token_ttl_s,
            latency_s=latency_s,
            pending_s=pending_s,
            processing_s=processing_s,
            faults=faults or Faults(),
            bad_image=bad_image,
            empty_401=empty_401,
            rng=random.Random(seed),
            log_stream=log_path.open("a", encoding="utf-8") if log_path else None,
        )
        self._server = Server((host, port), Handler)
        self._server.state = self.state
        self._scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            # The handshake happens in each request's thread, not in the accepting one.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self._scheme = "https"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host!s}:{port}"

    def start(self) -> Emulator:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name="emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self.state.log_stream is not None:
            self.state.log_stream.close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(
        self,
        status: int,
        times: int = 1,
        retry_after: str | None = None,
        *,
        detail: str = "",
    ) -> None:
        """The next `times` RecognizeImage calls answer `status` (after reading the body),
        with `detail` as the ProblemDetails' detail."""
        with self.state.lock:
            self.state.scripted.extend(
                Scripted("status", status, retry_after, detail) for _ in range(times)
            )

    def fail_token_next(
        self, status: int = 429, times: int = 1, retry_after: str | None = None
    ) -> None:
        """The next `times` token calls answer `status` (rate limiting, an outage)."""
        with self.state.lock:
            self.state.token_scripted.extend(
                Scripted("status", status, retry_after) for _ in range(times)
            )

    def drop_next(self, times: int = 1, *, after_accept: bool = False) -> None:
        """Close the next connections without an answer; `after_accept` creates the task first."""
        kind = "accept_drop" if after_accept else "drop"
        with self.state.lock:
            self.state.scripted.extend(Scripted(kind) for _ in range(times))

    def script_next_tasks(self, script: TaskScript, times: int = 1) -> None:
        """The next `times` accepted tasks (any endpoint) end as `script` says."""
        with self.state.lock:
            self.state.task_scripts.extend(script for _ in range(times))

    def fail_next_task(
        self, times: int = 1, *, messages: tuple[str, ...] = (TASK_ERROR_MESSAGE,)
    ) -> None:
        """The next `times` accepted tasks end in `taskStatus: Error` with `messages`."""
        self.script_next_tasks(TaskScript("Error", messages=messages), times)

    def lose_next_task(self, times: int = 1) -> None:
        """The next `times` accepted tasks read as NotExist (TaskNotFound), as if expired."""
        self.script_next_tasks(TaskScript("NotExist"), times)

    def warn_next_task(self, *warnings: str, times: int = 1) -> None:
        """The next `times` accepted tasks complete with `warnings` in `error.warnings`."""
        self.script_next_tasks(TaskScript(warnings=warnings), times)

    def fail_task(
        self, guid: str, *, messages: tuple[str, ...] = (TASK_ERROR_MESSAGE,)
    ) -> None:
        """An accepted task ends in Error from now on (KeyError if there is no such task)."""
        with self.state.lock:
            task = self.state.tasks[guid.lower()]
            task.outcome, task.messages = "Error", messages

    def lose_task(self, guid: str) -> None:
        """An accepted task reads as NotExist from now on, as after the service's 24 hours."""
        with self.state.lock:
            self.state.tasks.pop(guid.lower(), None)

    def set_delays(
        self, pending_s: float | None = None, processing_s: float | None = None
    ) -> None:
        """How long tasks accepted from now on stay Pending and Processing."""
        with self.state.lock:
            if pending_s is not None:
                self.state.pending_s = pending_s
            if processing_s is not None:
                self.state.processing_s = processing_s

    def finish_tasks(self) -> None:
        """Every task accepted so far is done now: Pending and Processing end at once."""
        with self.state.lock:
            for task in self.state.tasks.values():
                task.pending_s = task.processing_s = 0.0

    def expire_tokens(self) -> None:
        """Revoke every issued token, as if they all expired early."""
        with self.state.lock:
            self.state.tokens.clear()

    def set_credentials(self, client_id: str, client_secret: str) -> None:
        with self.state.lock:
            self.state.client_id, self.state.client_secret = client_id, client_secret

    @property
    def received(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return list(self.state.received)

    def submissions(self) -> list[dict[str, Any]]:
        """Accepted RecognizeImage(Trial) and RecognizePdf POSTs: the ones that created a task;
        `path` says which endpoint."""
        return [r for r in self.received if r.get("guid") and r["method"] == "POST"]

    @property
    def bodies_read(self) -> int:
        with self.state.lock:
            return self.state.bodies_read

    @property
    def peak_in_flight(self) -> int:
        """The most requests it answered at once since the start (or `reset_peak`)."""
        with self.state.lock:
            return self.state.peak_in_flight

    def reset_peak(self) -> None:
        with self.state.lock:
            self.state.peak_in_flight = self.state.in_flight

    @property
    def token_calls(self) -> int:
        with self.state.lock:
            return self.state.token_calls

    def issued_tokens(self) -> list[str]:
        with self.state.lock:
            return list(self.state.tokens)
