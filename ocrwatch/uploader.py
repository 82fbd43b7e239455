"""Where an upload runs: in the calling thread, or in a child process of its own.

One upload costs about a millisecond of Python (base64, hashing, `requests`) plus a dozen system
calls for the sidecar. In one process every upload shares the daemon's GIL with the watcher, the
settle loop and the journal, and each system call hands the GIL back and forth. The daemon
therefore runs each upload slot as a single-threaded child process that does `client.submit` and
writes the `.guid`, while the parent keeps everything that needs one owner: the journal, the
profile cache, the token cache and the log stream.

A child never sees the credentials. It gets a token with each job and asks the parent for a fresh
one over its pipe after a 401, so the whole daemon still makes one token call at a time. It has no
log stream either: its log events travel up the same pipe and are logged, and redacted, by the parent.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import threading
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from ocrwatch.auth import TokenSource
from ocrwatch.client import OcrClient, Submission
from ocrwatch.config import ApiConfig
from ocrwatch.errors import (
    ApiError,
    AuthError,
    FileChangedError,
    RejectedError,
    SidecarError,
    TransientApiError,
)
from ocrwatch.log import register_secret
from ocrwatch.settings import Settings
from ocrwatch.sidecar import Kind, write_sidecar

log = structlog.get_logger()

CHILD_STOP_S: Final = 2.0
# Errors that cross the pipe by name; anything else arrives as an internal error.
_ERRORS: Final[dict[str, type[Exception]]] = {
    cls.__name__: cls
    for cls in (AuthError, TransientApiError, RejectedError, FileChangedError)
}


@dataclass(frozen=True, slots=True)
class Upload:
    """A submitted file; `sidecar_error` says why its `.guid` could not be written, if it could not."""

    submission: Submission
    sidecar_error: str | None = None


class Uploader(Protocol):
    def upload(self, path: Path, settings: Settings) -> Upload:
        """Submit the file and write its `.guid`; raises what `OcrClient.submit` raises."""
        ...

    def close(self) -> None: ...


def publish(path: Path, submission: Submission, staging: Path | None) -> Upload:
    """Write the `.guid` for a file the service has accepted; a failure is reported, not raised."""
    try:
        write_sidecar(path, Kind.GUID, submission.guid, staging=staging)
    except SidecarError as exc:
        return Upload(submission, str(exc))
    return Upload(submission)


class LocalUploader:
    """Uploads in the calling thread, at most `slots` at a time (the one-shot `submit` uses this)."""

    def __init__(
        self,
        client: OcrClient,
        slots: int | None = None,
        *,
        staging: Path | None = None,
    ) -> None:
        self.client = client
        self._staging = staging
        # Caps uploads in flight while more threads than that write sidecars and journal
        # entries, so an fsync never leaves an upload slot idle.
        self._slots: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext()
            if slots is None
            else threading.BoundedSemaphore(slots)
        )

    def upload(self, path: Path, settings: Settings) -> Upload:
        with self._slots:
            submission = self.client.submit(path, settings)
        return publish(path, submission, self._staging)

    def close(self) -> None:
        pass


def describe(exc: BaseException) -> tuple[str, str, int | None, float | None, int]:
    """An error as plain values, for the pipe (custom exceptions do not all unpickle)."""
    if isinstance(exc, ApiError):
        return type(exc).__name__, str(exc), exc.status, exc.retry_after_s, exc.attempts
    return type(exc).__name__, str(exc), None, None, 1


def rebuild(
    name: str,
    message: str,
    status: int | None,
    retry_after_s: float | None,
    attempts: int,
) -> Exception:
    cls = _ERRORS.get(name)
    if cls is None:
        return RuntimeError(f"{name} in an upload process: {message}")
    if issubclass(cls, ApiError):
        exc = cls(message, status=status, retry_after_s=retry_after_s)
        exc.attempts = attempts
        return exc
    return cls(message)


@dataclass(slots=True)
class _Child:
    process: multiprocessing.process.BaseProcess
    conn: Connection


class ProcessUploader:
    """`slots` single-threaded child processes, each running one upload at a time.

    The children start in the background, so that the catch-up scan does not wait for them; an
    upload waits for a free child. If they cannot be started at all (a process limit, a sandbox
    without fork), uploads go through `fallback` instead.
    """

    def __init__(
        self,
        api: ApiConfig,
        tokens: TokenSource | None,
        slots: int,
        *,
        fallback: Uploader,
        staging: Path | None = None,
    ) -> None:
        self._api = api
        self._staging = staging
        self._tokens = tokens
        self._fallback = fallback
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["ocrwatch.uploader"])
        # None in the queue means "no child will come: use the fallback".
        self._idle: queue.SimpleQueue[_Child | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._children: list[_Child] = []
        self._closed = False
        self._starter = threading.Thread(
            target=self._start, args=(slots,), name="uploader-start", daemon=True
        )
        self._starter.start()

    def _start(self, slots: int) -> None:
        started = 0
        try:
            for _ in range(slots):
                self._release(self._spawn())
                started += 1
        except Exception as exc:  # noqa: BLE001 -- any failure here means "use threads"
            log.warning(
                "uploader.processes_unavailable",
                error=f"{type(exc).__name__}: {exc}",
                fallback="threads",
            )
            for _ in range(slots - started):
                self._idle.put(None)

    def _spawn(self) -> _Child:
        parent_end, child_end = self._ctx.Pipe()
        process = self._ctx.Process(
            target=child_main,
            args=(child_end, self._api, self._tokens is None, self._staging),
            name="ocrwatch-upload",
            daemon=True,
        )
        process.start()
        child_end.close()
        child = _Child(process, parent_end)
        with self._lock:
            self._children.append(child)
        return child

    def upload(self, path: Path, settings: Settings) -> Upload:
        # A refusal is raised here, before a slot is taken: nothing is sent.
        token = self._tokens.get() if self._tokens else None
        child = self._idle.get()
        if child is None:
            self._idle.put(None)
            return self._fallback.upload(path, settings)
        try:
            answer = self._exchange(child, (path, settings, token))
        except (EOFError, OSError):
            # Killed (the OOM killer, an operator): this file is retried later, the slot replaced.
            log.error("uploader.child_died", pid=child.process.pid, path=str(path))
            child = self._replace(child)
            raise TransientApiError("the upload process stopped unexpectedly") from None
        except BaseException:
            # Cut off mid-conversation (a bug): the child may still be waiting for a reply, so
            # its next job would be read as that reply. It is not reused.
            child = self._replace(child)
            raise
        finally:
            self._release(child)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _exchange(
        self, child: _Child, job: tuple[Path, Settings, str | None]
    ) -> Upload | Exception:
        """Send a job, then serve the child's token requests and log events until it answers."""
        child.conn.send(job)
        while True:
            kind, *payload = child.conn.recv()
            if kind == "done":
                upload: Upload = payload[0]
                return upload
            if kind == "error":
                return rebuild(*payload)
            if kind == "log":
                method, event, fields = payload
                getattr(log, method)(event, **fields)
            elif kind == "token":
                child.conn.send(self._fresh_token(payload[0]))

    def _replace(self, child: _Child) -> _Child:
        self._discard(child)
        child.process.kill()
        child.process.join(CHILD_STOP_S)
        return self._spawn()

    def _fresh_token(self, stale: str | None) -> tuple[Any, ...]:
        assert self._tokens is not None, "a trial child never asks for a token"
        if stale is not None:
            self._tokens.invalidate(stale)
        try:
            return ("token", self._tokens.get())
        except ApiError as exc:
            return ("error", *describe(exc))

    def wait_started(self, timeout_s: float) -> bool:
        """For tests: True once every child has been started (or given up on)."""
        self._starter.join(timeout_s)
        return not self._starter.is_alive()

    def _release(self, child: _Child) -> None:
        with self._lock:
            closed = self._closed
        if closed:
            self._stop(child)
        else:
            self._idle.put(child)

    def _discard(self, child: _Child) -> None:
        with self._lock:
            if child in self._children:
                self._children.remove(child)
        with contextlib.suppress(OSError):
            child.conn.close()

    def _stop(self, child: _Child) -> None:
        self._discard(child)  # the child sees end-of-file and exits
        child.process.join(CHILD_STOP_S)
        if child.process.is_alive():
            child.process.kill()
            child.process.join(CHILD_STOP_S)

    def close(self) -> None:
        """Stop the idle children now and the busy ones as soon as their upload is done."""
        with self._lock:
            self._closed = True
        self._starter.join()  # a child it starts from now on is stopped at once
        while True:
            try:
                child = self._idle.get_nowait()
            except queue.Empty:
                break
            if child is not None:
                self._stop(child)
        self._fallback.close()


class _RemoteTokens:
    """The child's view of the parent's TokenCache."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.current: str | None = None
        self._stale: str | None = None

    def get(self) -> str:
        if self.current is None:
            self._conn.send(("token", self._stale))
            kind, *payload = self._conn.recv()
            if kind == "error":
                raise rebuild(*payload)
            self.current, self._stale = payload[0], None
            register_secret(payload[0])
        return self.current

    def invalidate(self, token: str) -> None:
        if token == self.current:
            self.current, self._stale = None, token


def _forward_logs(
    conn: Connection,
) -> Callable[[Any, str, MutableMapping[str, Any]], Any]:
    def processor(
        _logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> Any:
        fields = dict(event_dict)
        event = str(fields.pop("event", ""))
        conn.send(("log", method, event, fields))
        raise structlog.DropEvent

    return processor


def child_main(
    conn: Connection, api: ApiConfig, trial: bool, staging: Path | None
) -> None:
    """An upload process: one job at a time from the pipe until the parent closes it."""
    # Ctrl-C reaches the whole process group; only the parent decides when uploads stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    structlog.configure(
        processors=[structlog.processors.format_exc_info, _forward_logs(conn)],
        cache_logger_on_first_use=False,
    )
    tokens = None if trial else _RemoteTokens(conn)
    client = OcrClient(api, None, tokens=tokens)
    while True:
        try:
            path, settings, token = conn.recv()
        except (EOFError, OSError):
            return
        if tokens is not None:
            tokens.current = token
            register_secret(token)
        reply: tuple[Any, ...]
        try:
            reply = ("done", publish(path, client.submit(path, settings), staging))
        except Exception as exc:  # noqa: BLE001 -- every failure is the parent's to judge and log
            reply = ("error", *describe(exc))
        try:
            conn.send(reply)
        except OSError:
            return
