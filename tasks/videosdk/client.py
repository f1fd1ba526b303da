"""API client: one HTTP call to ``POST {base}/v2/recordings/start``, classified.

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

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from tasks.errors import (
    AlreadyRecording,
    ApiError,
    CallTimedOut,
    ConnectionFailed,
    NotLive,
    PreviousSessionProcessing,
    RateLimited,
    RecordingLimitReached,
    RequestRefused,
    ServerFailed,
    TokenRejected,
)
from tasks.videosdk.retry import parse_retry_after
from tasks.videosdk.tokens import TokenMinter
from tasks.window import NOT_LIVE_PATTERNS

START_PATH = "/v2/recordings/start"
#: response bodies longer than this are cut before they are stored in a job record.
RESPONSE_MAX_CHARS = 1000
_ALREADY = re.compile(
    r"already\s+(started|in\s+progress|running|recording|being\s+recorded)", re.IGNORECASE
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
        self._url = base_url.rstrip("/") + START_PATH
        self._not_live = tuple(p.lower() for p in not_live_patterns if p.strip())
        self._minter = minter
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._clock = clock
        self._local = threading.local()

    def start_recording(self, body: dict[str, Any]) -> ApiResponse:
        """Make one start call; returns on 2xx, else raises the ApiError that fits."""
        session = self._session()
        headers = {
            **session.headers,
            "Authorization": self._minter.token(),
            "Content-Type": "application/json",
        }
        # A prepared request sent as it is (requests' documented lower-level path): no cookie
        # jar merging or per-call settings merge, a sixth of a call's CPU. A redirect is not
        # followed: the API has none, and following would turn the POST into a GET.
        request = requests.Request("POST", self._url, headers=headers, data=json.dumps(body))
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
        raise _classify(resp, parsed, latency_s, self._not_live)

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
            found = session.merge_environment_settings(self._url, {}, None, None, None)
            session.trust_env = False
            session.proxies, session.verify = found["proxies"], found["verify"]
            self._local.session = session
        return session


def _classify(
    resp: requests.Response, parsed: Any, latency_s: float, not_live: tuple[str, ...]
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
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    # urllib3's messages name the host and port but never the headers, so no token leaks here.
    return f"connection failed: {type(reason or exc).__name__}"
