"""The sd_notify protocol: tell systemd we are ready, reloading, stopping, alive, and how we are.

`NOTIFY_SOCKET` is read once; without it every call is a no-op, so `ocrwatch run` behaves the
same outside systemd. A datagram that cannot be sent is logged once and never raised: systemd
being away must not take the daemon down. Accepted risk: a send that fails for good (the socket
is gone) is not retried; under a watchdog, systemd then restarts the service.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger()


def parse_address(value: str | None) -> str | None:
    """The socket address from `NOTIFY_SOCKET`: a path, or `@name` in the abstract namespace.

    Anything else (unset, empty, a relative path, `vsock:`) gives None: nothing is sent.
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def parse_watchdog_s(usec: str | None, pid: str | None, own_pid: int) -> float | None:
    """The watchdog interval systemd expects pings within, in seconds; None for no watchdog.

    `WATCHDOG_PID`, when set, names the process the watchdog is for: a child that inherited the
    environment must not ping on its parent's behalf.
    """
    if pid is not None and pid.strip() != str(own_pid):
        return None
    try:
        interval = int(usec or "")
    except ValueError:
        return None
    return interval / 1_000_000 if interval > 0 else None


class Notifier:
    """Sends sd_notify datagrams (`READY=1`, `WATCHDOG=1`, ...) to the socket systemd gave us."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.address = address
        # Pings are only wanted when systemd also passed an interval.
        self.watchdog_s = watchdog_s if address is not None else None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str], pid: int | None = None) -> Notifier:
        pid = os.getpid() if pid is None else pid
        return cls(
            parse_address(env.get("NOTIFY_SOCKET")),
            parse_watchdog_s(env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"), pid),
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def ping_every_s(self) -> float | None:
        """Half the watchdog interval, as sd_watchdog_enabled(3) recommends."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """Since systemd 253 a reload is only believed with the time it started."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.send(*_status(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def send(self, *fields: str) -> bool:
        """One datagram of `KEY=value` lines; False if it was not sent (or nothing listens)."""
        if self.address is None or not fields:
            return False
        data = "\n".join(fields).encode("utf-8", errors="replace")
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                # Never blocks: a receiver that does not read must not stall the main loop.
                self._socket.sendto(data, socket.MSG_DONTWAIT, self.address)
            except OSError as exc:
                if not self._failed:
                    self._failed = True
                    log.warning(
                        "notify.failed",
                        socket=self.address.replace("\0", "@"),
                        error=exc.strerror or type(exc).__name__,
                        note="systemd is not told about this daemon; said once",
                    )
                return False
        return True

    def close(self) -> None:
        with self._lock:
            sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()


def _status(text: str | None) -> tuple[str, ...]:
    """A STATUS= field is one line: a newline would start another field."""
    return () if text is None else ("STATUS=" + " ".join(text.splitlines()),)
