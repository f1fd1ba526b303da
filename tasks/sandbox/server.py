"""``SandboxServer``: the sandbox's recordings API (``RecordingsApi``) served on a local port.

It serves through ``tasks.sandbox.handler``: recording calls go to ``RecordingsApi`` (``answer``,
``listing``, ``public_key``), control endpoints to ``tasks.sandbox.control``. A stopped server
cannot be started again; stopping it also stops its webhooks (those queued are not sent).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from tasks.sandbox import control
from tasks.sandbox.faults import STARTED, STOPPED, Faults, Reply
from tasks.sandbox.handler import Handler, HTTPServer
from tasks.sandbox.recordings import LIST_PATH, PATHS, PUBLIC_KEY_PATH, RecordingsApi

__all__ = ["STARTED", "STOPPED", "Faults", "SandboxServer"]

_POLL_S = 0.05  # how long stop() may wait for the serving loop to notice


class SandboxServer(RecordingsApi):
    """A VideoSDK-compatible recordings API on a local port; see the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str,
        secret: str,
        faults: Faults | None = None,
        seed: int | None = None,
        max_calls: int = 100_000,
        private_key_pem: str | bytes | None = None,
    ) -> None:
        """Bind ``host``:``port`` (0: any free port); ``private_key_pem``: the webhooks' RSA key
        (PEM, unencrypted; default: a new 2048-bit key for this run, made when first needed)."""
        super().__init__(
            api_key=api_key,
            secret=secret,
            faults=faults,
            seed=seed,
            max_calls=max_calls,
            private_key_pem=private_key_pem,
        )
        self._conns: set[socket.socket] = set()  # guarded by self._lock
        self._thread: threading.Thread | None = None
        self._serving = False
        self._httpd = HTTPServer((host, port), Handler)  # bound now, so url is known at once
        self._httpd.sandbox = self
        bound_host, bound_port = self._httpd.server_address[:2]
        self.url = f"http://{bound_host!s}:{bound_port}"

    def start(self) -> SandboxServer:
        """Serve in a background daemon thread; returns self."""
        if self._thread is None:
            self._serving = True
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, args=(_POLL_S,), name="sandbox", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until stop() or interrupt() is called."""
        self._serving = True
        self._httpd.serve_forever(poll_interval=_POLL_S)

    def interrupt(self) -> None:
        """Make serve_forever() return; safe in a signal handler of the serving thread."""
        # shutdown() waits for the serving loop, maybe running in this thread: ask from another one.
        threading.Thread(target=self._httpd.shutdown, daemon=True).start()

    def stop(self) -> None:
        """Stop serving; close the socket and open connections; wake delayed answers."""
        if self._serving:  # shutdown() would wait forever for a loop that never ran
            self._httpd.shutdown()
            self._serving = False
        self._httpd.server_close()
        self._stopping.set()
        self._sender.stop()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # frees handler threads blocked reading an idle keep-alive socket
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def track_connection(self, conn: socket.socket, *, open_: bool) -> None:
        """Note a connection the handler opened or finished, so stop() can close it."""
        with self._lock:
            (self._conns.add if open_ else self._conns.discard)(conn)

    def query(self, path: str, query: str = "", headers: Any = None) -> Reply:
        """The answer to a GET of ``path`` with ``query`` (the text after ``?``)."""
        if path == LIST_PATH:
            return self.listing(query, headers or {})
        if path == PUBLIC_KEY_PATH:
            return self.public_key()
        return control.query(self, path)

    def dispatch(self, path: str, headers: Any, raw: bytes) -> Reply:
        """The answer to a POST of ``raw`` to ``path``."""
        if path.startswith("/_sandbox/"):
            return control.command(self, path, raw)
        if path not in PATHS:
            return 404, {"message": "Not found"}, None
        return self.answer(path, headers, raw)
