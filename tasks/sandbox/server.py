"""``SandboxServer``: the sandbox's state, lifecycle and control endpoints.

It answers start/end calls as the real API does, with the ``Faults`` and scripted answers
described in the package docstring, and serves through ``tasks.sandbox.handler``. A stopped
server cannot be started again.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from tasks.sandbox.auth import authorize
from tasks.sandbox.faults import (
    ERROR_STATUSES,
    STARTED,
    STOPPED,
    Faults,
    Refused,
    Reply,
    default_body,
    retry_after,
)
from tasks.sandbox.handler import Handler, HTTPServer
from tasks.sandbox.limiter import TokenBucket

__all__ = ["STARTED", "STOPPED", "Faults", "SandboxServer"]

_from_body: Callable[[dict[str, Any]], object] | None
try:  # the request model is optional: without it only roomId is checked
    from tasks.request import RecordingRequest

    _from_body = RecordingRequest.from_body
except ImportError:
    _from_body = None

_POLL_S = 0.05  # how long stop() may wait for the serving loop to notice


class SandboxServer:
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
    ) -> None:
        self.faults = faults or Faults()
        self._api_key, self._secret = api_key, secret.encode()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # guards all mutable state below
        self._calls: deque[dict[str, Any]] = deque(maxlen=max_calls)
        self._scripts: deque[dict[str, Any]] = deque()
        self._rooms: set[str] = set()
        self._conns: set[socket.socket] = set()
        self._bucket = TokenBucket()
        self._stopping = threading.Event()  # wakes delayed answers on stop()
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

    def script(self, *responses: dict[str, Any]) -> None:
        """Queue answers for the next start calls, after auth and body checks pass.

        Keys: ``status`` (200), ``body`` (a str is sent verbatim as text/plain, anything else
        as JSON; default per status), ``headers``, ``delay_s`` (wait before answering),
        ``start`` (mark the room recording first; default: status is 2xx). A scripted answer
        skips every fault and the "already started" check.
        """
        with self._lock:
            self._scripts.extend(dict(r) for r in responses)

    def calls(self) -> list[dict[str, Any]]:
        """Start/end calls in arrival order: ``t`` (epoch s), ``path``, ``room_id``, ``status``."""
        with self._lock:
            return [dict(call) for call in self._calls]

    def recording_rooms(self) -> set[str]:
        with self._lock:
            return set(self._rooms)

    def reset(self) -> None:
        """Forget calls, scripted answers, recording rooms and the rate limiter's state."""
        with self._lock:
            self._calls.clear()
            self._scripts.clear()
            self._rooms.clear()
            self._bucket.reset()

    def update_faults(self, changes: dict[str, Any]) -> None:
        """Set Faults fields by name; ValueError (and nothing set) for a bad name or value."""
        self.faults.update(changes)

    def track_connection(self, conn: socket.socket, *, open_: bool) -> None:
        """Note a connection the handler opened or finished, so stop() can close it."""
        with self._lock:
            (self._conns.add if open_ else self._conns.discard)(conn)

    def dispatch(self, path: str, headers: Any, raw: bytes) -> Reply:
        """The answer to a POST of ``raw`` to ``path``."""
        if path.startswith("/_sandbox/"):
            return self._control(path, raw)
        if path not in ("/v2/recordings/start", "/v2/recordings/end"):
            return 404, {"message": "Not found"}, None
        record: dict[str, Any] = {"t": time.time(), "path": path, "room_id": None, "status": None}
        with self._lock:
            self._calls.append(record)
        try:
            reply = self._recording_call(path, headers, raw, record)
        except Refused as refused:
            reply = refused.reply
        record["status"] = reply[0]  # a single dict store is atomic; calls() copies under lock
        return reply

    def _recording_call(self, path: str, headers: Any, raw: bytes, record: dict[str, Any]) -> Reply:
        token = headers.get("Authorization") or ""
        now = time.time() + self.faults.clock_offset_s
        authorize(token, api_key=self._api_key, secret=self._secret, now=now)
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            raise Refused(400, "Request body is not valid JSON") from None
        room = body.get("roomId") if isinstance(body, dict) else None
        if not isinstance(room, str) or not room:
            raise Refused(400, "roomId is required")
        record["room_id"] = room
        if room.startswith("missing-"):
            raise Refused(404, "Room not found")
        if path.endswith("/end"):
            with self._lock:
                if room not in self._rooms:
                    raise Refused(400, "No recording in progress for this room")
                self._rooms.discard(room)
            return 200, STOPPED, None
        if _from_body is not None:
            try:
                _from_body(body)
            except ValueError as exc:  # tasks.errors.ValidationError is a ValueError
                raise Refused(422, str(exc)) from None
        with self._lock:
            scripted = self._scripts.popleft() if self._scripts else None
        if scripted is not None:
            return self._scripted(scripted, room, record)
        return self._start(room, record)

    def _scripted(self, scripted: dict[str, Any], room: str, record: dict[str, Any]) -> Reply:
        status = int(scripted.get("status", 200))
        if scripted.get("start", 200 <= status < 300):
            with self._lock:
                self._rooms.add(room)
        body = scripted.get("body", default_body(status))
        record["status"] = status
        self._stopping.wait(float(scripted.get("delay_s", 0)))
        return status, body.encode() if isinstance(body, str) else body, scripted.get("headers")

    def _start(self, room: str, record: dict[str, Any]) -> Reply:
        faults, rng = self.faults, self._rng
        with self._lock:  # one acquisition for all draws keeps a seeded run repeatable
            limited = not self._bucket.take(faults.rate_limit_per_s)
            limited = limited or rng.random() < faults.too_many_rate
            error_status = rng.choice(ERROR_STATUSES) if rng.random() < faults.error_rate else 0
            hang = rng.random() < faults.timeout_rate
            delay_s = faults.latency_s + rng.uniform(0, faults.latency_jitter_s)
        if delay_s > 0:
            self._stopping.wait(delay_s)
        if limited:
            retry_s = faults.retry_after_s
            headers = None if retry_s is None else {"Retry-After": retry_after(retry_s)}
            return 429, default_body(429), headers
        if error_status:
            return error_status, default_body(error_status), None
        with self._lock:
            already = room in self._rooms
            self._rooms.add(room)
        reply: Reply = (200, STARTED, None)
        if already:
            reply = (400, {"message": "Recording already started for this room"}, None)
        if hang:
            record["status"] = reply[0]
            self._stopping.wait(faults.hang_s)
        return reply

    def _control(self, path: str, raw: bytes) -> Reply:
        try:
            payload = json.loads(raw or b"null")
            if path == "/_sandbox/script":
                items = payload if isinstance(payload, list) else [payload]
                if not all(isinstance(item, dict) for item in items):
                    raise ValueError("script takes a list of objects")
                self.script(*items)
                return 200, {"ok": True, "queued": len(items)}, None
            if path == "/_sandbox/faults":
                if not isinstance(payload, dict):
                    raise ValueError("faults takes an object of Faults fields")
                self.update_faults(payload)
                return 200, asdict(self.faults), None
        except ValueError as exc:
            return 400, {"message": str(exc)}, None
        if path == "/_sandbox/reset":
            self.reset()
            return 200, {"ok": True}, None
        return 404, {"message": "Not found"}, None
