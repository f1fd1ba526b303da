"""A local VideoSDK-compatible recordings API for demos, tests and benchmarks.

``SandboxServer`` answers ``POST /v2/recordings/start`` and ``/v2/recordings/end`` as the real
API does (raw-JWT auth, crawler role, roomId checks, "already started" refusals, ``missing-*``
rooms are 404) and can misbehave on purpose: latency, 5xx, its own 429 limit with
``Retry-After``, answers delayed past the client's timeout after the recording started.
``script()`` queues exact answers for the next start calls, used in order before any random
fault. Every start/end call is logged on arrival (the last ``max_calls`` are kept).

Control endpoints, without auth, for tests in other processes and the demo: ``GET
/_sandbox/health``, ``GET /_sandbox/calls``, ``GET /_sandbox/rooms``, ``POST /_sandbox/script``
(a list of scripted answers, appended), ``POST /_sandbox/faults`` (Faults fields to update),
``POST /_sandbox/reset``. A fractional ``retry_after_s`` is sent as a decimal, which the RFC
does not allow but which keeps tests fast. A stopped server cannot be started again.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import random
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)

_from_body: Callable[[dict[str, Any]], object] | None
try:  # the request model is optional: without it only roomId is checked
    from tasks.request import RecordingRequest

    _from_body = RecordingRequest.from_body
except ImportError:
    _from_body = None

DEMO_API_KEY = "sandbox-key"
DEMO_SECRET = "sandbox-secret-not-for-production-use"
STARTED = "Recording started successfully"
STOPPED = "Recording stopped successfully"
_ERROR_STATUSES = (500, 502, 503)
_POLL_S = 0.05  # how long stop() may wait for the serving loop to notice
Reply = tuple[int, Any, dict[str, str] | None]  # status, body (bytes: sent as text), headers


@dataclass
class Faults:
    """Misbehaviour of start calls that have no scripted answer; mutable at run time."""

    latency_s: float = 0.0
    latency_jitter_s: float = 0.0  # plus uniform(0, jitter) on every start
    error_rate: float = 0.0  # answered 500/502/503, not started
    rate_limit_per_s: float | None = None  # excess answered 429
    too_many_rate: float = 0.0  # answered 429 at random, whatever the rate
    retry_after_s: float | None = 1.0  # None: 429s carry no Retry-After
    timeout_rate: float = 0.0  # started, but answered only after hang_s
    hang_s: float = 30.0


class _Refused(Exception):
    """Raised inside a call to answer it at once with ``reply``."""

    def __init__(self, status: int, message: str) -> None:
        self.reply: Reply = (status, {"message": message}, None)


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _verify_hs256(token: str, secret: bytes, now: float) -> dict[str, Any] | None:
    """Claims of a well-signed, unexpired HS256 token, else None.

    Checked with hmac rather than PyJWT: this is the hot path, and PyJWT warns on every decode
    with a secret under 32 bytes (the demo one), which pytest turns into errors.
    """
    try:
        head, body, sig = token.split(".")
        expected = hmac.new(secret, f"{head}.{body}".encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _b64(sig)):
            return None
        header, claims = json.loads(_b64(head)), json.loads(_b64(body))
    except (ValueError, UnicodeError):
        return None
    if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
        return None
    exp, nbf = claims.get("exp", math.inf), claims.get("nbf", 0)
    if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
        return None
    return claims if nbf <= now < exp else None


def _default_body(status: int) -> Any:
    if status < 300:
        return STARTED
    if status == 429:
        return {"message": "Too many requests"}
    try:
        return {"message": HTTPStatus(status).phrase}
    except ValueError:
        return {"message": "Error"}


def _seconds(value_s: float) -> str:
    """Retry-After text: whole seconds as the RFC has them, else a decimal."""
    return str(int(value_s)) if value_s == int(value_s) else f"{value_s:.3f}".rstrip("0")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so pooled sessions reuse connections
    wbufsize = 65536  # headers and body leave in one send (handle_one_request flushes)
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are dropped eventually
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a stderr line per request would cost more than the answer itself

    def setup(self) -> None:
        super().setup()
        self.server.sandbox._track(self.request, open_=True)

    def finish(self) -> None:
        self.server.sandbox._track(self.request, open_=False)
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
        sandbox, path = self.server.sandbox, self.path.split("?", 1)[0]
        if path == "/_sandbox/health":
            self.send(200, {"ok": True})
        elif path == "/_sandbox/calls":
            self.send(200, sandbox.calls())
        elif path == "/_sandbox/rooms":
            self.send(200, sorted(sandbox.recording_rooms()))
        else:
            self.send(404, {"message": "Not found"})

    def do_POST(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True  # its body cannot be skipped without parsing chunks
            self.send(411, {"message": "Content-Length required"})
            return
        # Read the body even when refusing, or its bytes would poison the kept-alive connection.
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send(*self.server.sandbox._dispatch(self.path.split("?", 1)[0], self.headers, raw))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # benchmarks open many connections at once
    sandbox: SandboxServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that timed out hang up before their answer: expected, not worth a traceback.
        logger.debug("sandbox connection error from %s", client_address, exc_info=True)


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
        self._tokens, self._refill_t = math.inf, time.monotonic()
        self._stopping = threading.Event()  # wakes delayed answers on stop()
        self._thread: threading.Thread | None = None
        self._serving = False
        self._httpd = _HTTPServer((host, port), _Handler)  # bound now, so url is known at once
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
        """Serve in the calling thread until stop() is called from another thread."""
        self._serving = True
        self._httpd.serve_forever(poll_interval=_POLL_S)

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
            self._tokens = math.inf

    def update_faults(self, changes: dict[str, Any]) -> None:
        """Set Faults fields by name; ValueError (and nothing set) for a bad name or value."""
        nullable = {"rate_limit_per_s", "retry_after_s"}
        for name, value in changes.items():
            if name not in {f.name for f in fields(Faults)}:
                raise ValueError(f"unknown fault {name!r}")
            if isinstance(value, bool) or not (
                isinstance(value, int | float) or (value is None and name in nullable)
            ):
                raise ValueError(f"bad value for {name}: {value!r}")
        for name, value in changes.items():
            setattr(self.faults, name, value)

    def _track(self, conn: socket.socket, *, open_: bool) -> None:
        with self._lock:
            (self._conns.add if open_ else self._conns.discard)(conn)

    def _dispatch(self, path: str, headers: Any, raw: bytes) -> Reply:
        if path.startswith("/_sandbox/"):
            return self._control(path, raw)
        if path not in ("/v2/recordings/start", "/v2/recordings/end"):
            return 404, {"message": "Not found"}, None
        record: dict[str, Any] = {"t": time.time(), "path": path, "room_id": None, "status": None}
        with self._lock:
            self._calls.append(record)
        try:
            reply = self._recording_call(path, headers, raw, record)
        except _Refused as refused:
            reply = refused.reply
        record["status"] = reply[0]  # a single dict store is atomic; calls() copies under lock
        return reply

    def _recording_call(self, path: str, headers: Any, raw: bytes, record: dict[str, Any]) -> Reply:
        claims = _verify_hs256(headers.get("Authorization") or "", self._secret, time.time())
        if claims is None or claims.get("apikey") != self._api_key:
            raise _Refused(401, "Token is invalid or expired")
        if claims.get("version") != 2:
            raise _Refused(403, "Token version must be 2 for v2 APIs")
        if "crawler" not in (claims.get("roles") or ()):
            raise _Refused(403, "Your role must be a CRAWLER")
        if "allow_join" not in (claims.get("permissions") or ()):
            raise _Refused(403, "Token lacks the allow_join permission")
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            raise _Refused(400, "Request body is not valid JSON") from None
        room = body.get("roomId") if isinstance(body, dict) else None
        if not isinstance(room, str) or not room:
            raise _Refused(400, "roomId is required")
        record["room_id"] = room
        if room.startswith("missing-"):
            raise _Refused(404, "Room not found")
        if path.endswith("/end"):
            with self._lock:
                if room not in self._rooms:
                    raise _Refused(400, "No recording in progress for this room")
                self._rooms.discard(room)
            return 200, STOPPED, None
        if _from_body is not None:
            try:
                _from_body(body)
            except ValueError as exc:  # tasks.errors.ValidationError is a ValueError
                raise _Refused(422, str(exc)) from None
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
        body = scripted.get("body", _default_body(status))
        record["status"] = status
        self._stopping.wait(float(scripted.get("delay_s", 0)))
        return status, body.encode() if isinstance(body, str) else body, scripted.get("headers")

    def _start(self, room: str, record: dict[str, Any]) -> Reply:
        faults, rng = self.faults, self._rng
        with self._lock:  # one acquisition for all draws keeps a seeded run repeatable
            limited = not self._take_token(faults.rate_limit_per_s)
            limited = limited or rng.random() < faults.too_many_rate
            error_status = rng.choice(_ERROR_STATUSES) if rng.random() < faults.error_rate else 0
            hang = rng.random() < faults.timeout_rate
            delay_s = faults.latency_s + rng.uniform(0, faults.latency_jitter_s)
        if delay_s > 0:
            self._stopping.wait(delay_s)
        if limited:
            retry_s = faults.retry_after_s
            headers = None if retry_s is None else {"Retry-After": _seconds(retry_s)}
            return 429, _default_body(429), headers
        if error_status:
            return error_status, _default_body(error_status), None
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

    def _take_token(self, rate_per_s: float | None) -> bool:
        """Token bucket holding up to max(1, rate) tokens; call with the lock held."""
        now = time.monotonic()
        elapsed_s, self._refill_t = now - self._refill_t, now
        if rate_per_s is None:
            self._tokens = math.inf  # a limit set later starts with a full bucket
            return True
        self._tokens = min(max(1.0, rate_per_s), self._tokens + elapsed_s * rate_per_s)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

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


def _rate(text: str) -> float:
    count, _, unit = text.partition("/")
    per = {"": 1, "s": 1, "m": 60, "h": 3600}.get(unit.strip().lower())
    try:
        if per is None:
            raise ValueError(text)
        return float(count) / per
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N/s, N/m or N/h, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """The ``recorder sandbox`` command: serve until SIGINT or SIGTERM, then return 0."""
    secret, secret_file = os.environ.get("VIDEOSDK_SECRET"), os.environ.get("VIDEOSDK_SECRET_FILE")
    if not secret and secret_file:
        with open(secret_file, encoding="utf-8") as fh:
            secret = fh.read().strip()
    parser = argparse.ArgumentParser(prog="recorder sandbox", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--api-key", default=os.environ.get("VIDEOSDK_API_KEY") or DEMO_API_KEY)
    parser.add_argument("--secret", default=secret or DEMO_SECRET, help="HS256 signing secret")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction answered 5xx")
    parser.add_argument("--rate-limit", type=_rate, default=None, help="e.g. 20/s; excess: 429")
    parser.add_argument("--too-many-rate", type=float, default=0.0, help="fraction answered 429")
    parser.add_argument("--retry-after", type=float, default=1.0, help="s; negative: no header")
    parser.add_argument("--timeout-rate", type=float, default=0.0, help="fraction answered late")
    parser.add_argument("--hang-s", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    faults = Faults(
        latency_s=args.latency_ms / 1000,
        latency_jitter_s=args.jitter_ms / 1000,
        error_rate=args.error_rate,
        rate_limit_per_s=args.rate_limit,
        too_many_rate=args.too_many_rate,
        retry_after_s=None if args.retry_after < 0 else args.retry_after,
        timeout_rate=args.timeout_rate,
        hang_s=args.hang_s,
    )
    server = SandboxServer(
        args.host,
        args.port,
        api_key=args.api_key,
        secret=args.secret,
        faults=faults,
        seed=args.seed,
    )

    def on_signal(signum: int, frame: object) -> None:
        # shutdown() waits for the serving loop, which runs in this very thread: ask from another.
        threading.Thread(target=server._httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"sandbox listening on {server.url}", flush=True)
    server.serve_forever()
    server.stop()
    return 0
