"""API client: one HTTP call to ``POST {base}/v2/recordings/start`` (or ``/end``), classified.

Also ``GET {base}/v2/recordings?roomId=`` for reconciliation (:meth:`ApiClient.list_recordings`).

The client makes exactly one attempt per call; retrying is the runner's job. Every outcome that is
not a 2xx becomes an :class:`~tasks.errors.ApiError` subclass saying whether it is retryable and
whether the recording may have started all the same.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from tasks.errors import (
    AlreadyRecording,
    ApiError,
    CallTimedOut,
    ConnectionFailed,
    NotLive,
    NotRecording,
    PreviousSessionProcessing,
    RateLimited,
    RecordingLimitReached,
    RequestRefused,
    ServerFailed,
    TokenRejected,
)
from tasks.job import Kind
from tasks.videosdk.retry import parse_retry_after
from tasks.videosdk.tokens import TokenMinter
from tasks.window import NOT_LIVE_PATTERNS

START_PATH = "/v2/recordings/start"
END_PATH = "/v2/recordings/end"
LIST_PATH = "/v2/recordings"
PATHS = {Kind.START: START_PATH, Kind.STOP: END_PATH}
#: response bodies longer than this are cut before they are stored in a job record.
RESPONSE_MAX_CHARS = 1000
_ALREADY = re.compile(
    r"already\s+(started|in\s+progress|running|recording|being\s+recorded)", re.IGNORECASE
)
#: a stop refused because the room is not being recorded (the contract's phrases)
_NOT_RECORDING = re.compile(
    r"recording\s+not\s+started|no\s+active\s+recording|not\s+recording|no\s+recording", re.I
)
#: VideoSDK's account-wide refusals (its error tables, codes 4018 and 4028), by their text.
_SESSION_PROCESSING = re.compile(r"previous\s+recording\s+session\s+is\s+being\s+processed", re.I)
_RECORDING_LIMIT = re.compile(r"max(imum)?\s+limit\s+of\s+recording", re.I)


@dataclass(frozen=True, slots=True)
class ApiResponse:
    """A 2xx answer: its status, parsed body and how long the call took."""

    http_status: int
    body: Any
    latency_s: float


class ApiClient:
    """Calls the VideoSDK API with one pooled ``requests.Session`` per thread.

    A session per thread (not one shared) because ``requests.Session`` is not documented as
    thread-safe; each keeps its connections alive, so no call pays for a new TCP/TLS handshake.
    """

    def __init__(
        self,
        *,
        base_url: str,
        minter: TokenMinter,
        connect_timeout_s: float,
        read_timeout_s: float,
        not_live_patterns: tuple[str, ...] = NOT_LIVE_PATTERNS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``not_live_patterns``: case-insensitive phrases of a "no live session" refusal."""
        self._base = base_url.rstrip("/")
        self._not_live = tuple(p.lower() for p in not_live_patterns if p.strip())
        self.minter = minter
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._clock = clock
        self._local = threading.local()

    def start_recording(self, body: dict[str, Any]) -> ApiResponse:
        """Make one start call; returns on 2xx, else raises the ApiError that fits."""
        return self.call(Kind.START, body)

    def list_recordings(self, room_id: str, *, per_page: int = 20) -> ApiResponse:
        """``GET /v2/recordings?roomId=`` (newest first): the body has ``data``, a list of
        ``{"roomId", "sessionId", "status"?, "file": {"fileUrl", "filePath"}?, ...}``."""
        return self._send(
            "GET",
            f"{self._base}{LIST_PATH}",
            None,
            Kind.START,
            params={"roomId": room_id, "page": 1, "perPage": per_page},
        )

    def call(self, kind: Kind, body: dict[str, Any]) -> ApiResponse:
        """Make one call of a job of ``kind`` (start or stop); returns on 2xx, else raises the
        ApiError that fits."""
        return self._send("POST", f"{self._base}{PATHS[kind]}", body, kind)

    def _send(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        kind: Kind,
        params: dict[str, Any] | None = None,
    ) -> ApiResponse:
        session = self._session()
        headers = {
            **session.headers,
            "Authorization": self.minter.token(),
            "Content-Type": "application/json",
        }
        # A prepared request sent as it is (requests' documented lower-level path): no cookie
        # jar merging or per-call settings merge, a sixth of a call's CPU. A redirect is not
        # followed: the API has none, and following would turn the POST into a GET.
        data = None if body is None else json.dumps(body)
        request = requests.Request(method, url, headers=headers, data=data, params=params)
        started = self._clock()
        try:
            resp = session.send(request.prepare(), timeout=self._timeout, allow_redirects=False)
        except requests.exceptions.ConnectTimeout:
            raise ConnectionFailed(
                f"no connection within {self._timeout[0]}s", latency_s=self._clock() - started
            ) from None
        except requests.exceptions.Timeout:
            raise CallTimedOut(
                f"no answer within {self._timeout[1]}s",
                may_have_started=True,
                latency_s=self._clock() - started,
            ) from None
        except requests.exceptions.ConnectionError as exc:
            raise ConnectionFailed(
                _describe(exc),
                may_have_started=_request_may_have_been_sent(exc),
                latency_s=self._clock() - started,
            ) from None
        latency_s = self._clock() - started
        parsed = _parse_body(resp)
        if 200 <= resp.status_code < 300:
            return ApiResponse(resp.status_code, parsed, latency_s)
        raise _classify(resp, parsed, latency_s, self._not_live, kind)

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # requests would retry nothing by default either; the point is to say so.
            session.mount("http://", HTTPAdapter(pool_maxsize=4, max_retries=0))
            session.mount("https://", HTTPAdapter(pool_maxsize=4, max_retries=0))
            # The environment (HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE) is read once, for
            # the one URL we call, instead of requests scanning all of os.environ on every call
            # (a tenth of a job's CPU); without trust_env a ~/.netrc entry cannot replace our
            # Authorization header either.
            found = session.merge_environment_settings(self._base, {}, None, None, None)
            session.trust_env = False
            session.proxies, session.verify = found["proxies"], found["verify"]
            self._local.session = session
        return session


def _classify(
    resp: requests.Response,
    parsed: Any,
    latency_s: float,
    not_live: tuple[str, ...],
    kind: Kind = Kind.START,
) -> ApiError:
    """The ApiError of a non-2xx answer; a 4xx is told apart by its message's text."""
    status = resp.status_code
    message = f"HTTP {status}: {error_message(parsed) or resp.reason}"
    common: dict[str, Any] = {"http_status": status, "response": parsed, "latency_s": latency_s}
    if status == 429:
        retry_after = parse_retry_after(resp.headers.get("Retry-After"), now_s=time.time())
        return RateLimited(message, retry_after_s=retry_after, **common)
    if status == 401:
        return TokenRejected(message, **common)
    if status >= 500:
        return ServerFailed(message, may_have_started=True, **common)
    text = error_message(parsed)
    if kind is Kind.STOP:
        # nothing to stop: no recording, or no session at all
        if _NOT_RECORDING.search(text) or any(phrase in text.lower() for phrase in not_live):
            return NotRecording(message, **common)
        return RequestRefused(message, **common)
    if _ALREADY.search(text):
        return AlreadyRecording(message, **common)
    if _SESSION_PROCESSING.search(text):
        return PreviousSessionProcessing(message, **common)
    if _RECORDING_LIMIT.search(text):
        return RecordingLimitReached(message, **common)
    if any(phrase in text.lower() for phrase in not_live):
        return NotLive(message, **common)
    return RequestRefused(message, **common)


def error_message(parsed: Any) -> str:
    """The human text of an error body: its ``message`` or ``error`` field, or the text itself."""
    if isinstance(parsed, dict):
        for key in ("message", "error", "msg", "detail"):
            value = parsed.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, dict):
                return error_message(value)
        return json.dumps(parsed)[:200]
    if isinstance(parsed, str):
        return parsed[:200]
    return ""


def _parse_body(resp: requests.Response) -> Any:
    text = resp.text
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    if isinstance(parsed, str) and len(parsed) > RESPONSE_MAX_CHARS:
        return parsed[:RESPONSE_MAX_CHARS] + "…"
    if not isinstance(parsed, str) and len(text) > RESPONSE_MAX_CHARS:
        return text[:RESPONSE_MAX_CHARS] + "…"
    return parsed


def _request_may_have_been_sent(exc: requests.exceptions.ConnectionError) -> bool:
    """False only when the connection was never made (refused, no route, DNS failure)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return not isinstance(reason, NewConnectionError | ConnectTimeoutError)


def _describe(exc: requests.exceptions.ConnectionError) -> str:
    """``connection failed: NewConnectionError (api.videosdk.live:443)``: the kind of failure and
    the host and port tried, never the path, query, headers or any userinfo of the URL."""

    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    where = ""
    try:
        parts = urlsplit(str(getattr(getattr(exc, "request", None), "url", None) or ""))
        if parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            where = f" ({parts.hostname}:{port})"
    except ValueError:  # a malformed port: say nothing rather than guess
        pass
    return f"connection failed: {type(reason or exc).__name__}{where}"
