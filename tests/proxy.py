"""A small forwarding proxy on loopback, as an office's would be: absolute-form HTTP requests are
forwarded, CONNECT opens a tunnel. It records what it carried, and can require Basic credentials."""

from __future__ import annotations

import base64
import contextlib
import http.client
import select
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str]]
    credentials: str | None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _allowed(self) -> bool:
        expected = self.server.credentials
        if expected is None:
            return True
        given = self.headers.get("Proxy-Authorization", "")
        if given == "Basic " + base64.b64encode(expected.encode()).decode():
            return True
        self.send_response(407)
        self.send_header("Proxy-Authenticate", 'Basic realm="office"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_CONNECT(self) -> None:
        if not self._allowed():
            return
        self.server.seen.append(("CONNECT", self.path))
        host, _, port = self.path.rpartition(":")
        upstream = socket.create_connection((host, int(port)), timeout=10)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        sockets = [self.connection, upstream]
        with contextlib.suppress(OSError), upstream:
            while True:
                readable, _, _ = select.select(sockets, [], [], 10)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.connection else self.connection).sendall(
                        data
                    )

    def _forward(self) -> None:
        if not self._allowed():
            return
        self.server.seen.append((self.command, self.path))
        target = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower()
            not in ("proxy-authorization", "proxy-connection", "connection")
        }
        upstream = http.client.HTTPConnection(
            target.hostname or "", target.port, timeout=30
        )
        try:
            path = target.path + (f"?{target.query}" if target.query else "")
            upstream.request(self.command, path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _forward  # noqa: N815 -- http.server's names


@contextlib.contextmanager
def forwarding_proxy(
    credentials: str | None = None,
) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """(the proxy's URL, what it carried as (method, target)); `credentials` is "user:pass"."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.seen = []
    server.credentials = credentials
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.seen
    finally:
        server.shutdown()
        server.server_close()
