"""A service that misbehaves on purpose: it hands out tokens like Aspose, then answers uploads with
a drip, header lines that take their time, a huge body, HTML or nonsense, and counts the uploads
it got."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mode: str
    uploads: int
    drip_s: float  # "drip-headers": the pause before each header line
    drip_lines: int


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/connect/token":
            body = json.dumps({"access_token": "t.o.k", "expires_in": 3600}).encode()
            self._answer(200, "application/json", body)
            return
        self.server.uploads += 1
        mode = self.server.mode
        if mode == "drip":  # a GUID's worth of bytes, one every second
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "36")
            self.end_headers()
            with contextlib.suppress(OSError):
                for byte in b"a197aade-bba9-4c7a-92c7-46851b3dceaa":
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(1.0)
        elif (
            mode == "drip-headers"
        ):  # each line well within any read timeout, the whole not
            with contextlib.suppress(OSError):
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self.wfile.flush()
                for i in range(self.server.drip_lines):
                    time.sleep(self.server.drip_s)
                    self.wfile.write(f"X-Still-Thinking-{i}: yes\r\n".encode())
                    self.wfile.flush()
                guid = b"a197aade-bba9-4c7a-92c7-46851b3dceaa"
                self.wfile.write(b"Content-Type: text/plain\r\n")
                self.wfile.write(b"Content-Length: %d\r\n\r\n%s" % (len(guid), guid))
                self.wfile.flush()
            self.close_connection = True
        elif mode in ("stall", "cut", "bad-gzip"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "36")
            if mode == "bad-gzip":
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            with contextlib.suppress(OSError):
                if mode == "bad-gzip":
                    self.wfile.write(b"this is not gzip, 36 bytes of it...")
                self.wfile.write(b"a197aade-b")  # then silence, or the end of the line
                self.wfile.flush()
                if mode == "stall":
                    time.sleep(8.0)
            self.close_connection = True
        elif mode == "big":
            with contextlib.suppress(OSError):
                self._answer(200, "text/plain", b"x" * (10 << 20))
        elif mode in ("ok", "odd-charset"):
            kind = "text/plain" + ("; charset=x-nope" if mode == "odd-charset" else "")
            self._answer(200, kind, b"a197aade-bba9-4c7a-92c7-46851b3dceaa")
        elif mode == "html":
            self._answer(
                200, "text/html", b"<html><body>Sign in to the proxy</body></html>"
            )
        else:
            self._answer(200, "text/plain", b"not-a-guid")

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def hostile_service(
    mode: str, *, drip_s: float = 1.0, drip_lines: int = 90
) -> Iterator[_Server]:
    """The server (its `.uploads` counts what it was sent) at `http://127.0.0.1:<port>`."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.mode, server.uploads = mode, 0
    server.drip_s, server.drip_lines = drip_s, drip_lines
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def url_of(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"
