"""The sandbox's HTTP layer: a keep-alive request handler and the threading server it runs in.

The handler only reads requests and writes answers; what to answer comes from a ``Backend``
(``SandboxServer``), reached as ``server.sandbox``.
"""

from __future__ import annotations

import json
import logging
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from tasks.sandbox.faults import Reply

logger = logging.getLogger(__name__)


class Backend(Protocol):
    """What the handler asks of the sandbox."""

    def track_connection(self, conn: socket.socket, *, open_: bool) -> None: ...

    def query(self, path: str, query: str, headers: Any) -> Reply: ...

    def dispatch(self, path: str, headers: Any, raw: bytes) -> Reply: ...


class Handler(BaseHTTPRequestHandler):
    """Hands every GET (its path, query string and headers) and POST to the backend."""

    protocol_version = "HTTP/1.1"  # keep-alive, so pooled sessions reuse connections
    wbufsize = 65536  # headers and body leave in one send (handle_one_request flushes)
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are dropped eventually
    server: HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a stderr line per request would cost more than the answer itself

    def setup(self) -> None:
        super().setup()
        self.server.sandbox.track_connection(self.request, open_=True)

    def finish(self) -> None:
        self.server.sandbox.track_connection(self.request, open_=False)
        super().finish()

    def send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        is_text = isinstance(body, bytes)
        data = body if is_text else json.dumps(body).encode()
        self.send_response(status)
        if not any(name.lower() == "content-type" for name in headers or {}):
            self.send_header("Content-Type", "text/plain" if is_text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        self.send(*self.server.sandbox.query(path, query, self.headers))

    def do_POST(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True  # its body cannot be skipped without parsing chunks
            self.send(411, {"message": "Content-Length required"})
            return
        # Read the body even when refusing, or its bytes would poison the kept-alive connection.
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send(*self.server.sandbox.dispatch(self.path.split("?", 1)[0], self.headers, raw))


class HTTPServer(ThreadingHTTPServer):
    """A thread per connection; ``sandbox`` must be set before serving."""

    daemon_threads = True
    request_queue_size = 256  # benchmarks open many connections at once
    sandbox: Backend

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that timed out hang up before their answer: expected, not worth a traceback.
        logger.debug("sandbox connection error from %s", client_address, exc_info=True)
