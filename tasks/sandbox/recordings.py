"""``RecordingsApi``: the sandbox's VideoSDK answers to recording calls, on its state.

It answers ``POST /v2/recordings/start`` and ``/end`` and ``GET /v2/recordings`` as the real API
does, with the ``Faults`` and scripted answers described in the package docstring, the state of
``tasks.sandbox.state`` and the account's refusals. ``SandboxServer`` serves it over HTTP.
Every method is thread-safe: one lock guards all mutable state, and no answer waits holding it.

A start that passes auth and the body checks, and no scripted answer or random fault answers,
is refused (400, in this order) when the room has no live session and ``require_live`` is on
(``NOT_LIVE``), when the room is recording (``ALREADY_STARTED``), while ``refuse_as_processing``
is on (``PROCESSING``), or while ``max_recordings`` recordings run (``RECORDING_LIMIT``).
An end of a room that is not recording is refused (400, ``NOT_STARTED``); an end stops the
recording but not the room's session (the meeting goes on): ``end_session()`` ends both.
A successful start records in the room's session and, like a scripted answer that starts it,
sends the webhooks of ``tasks.sandbox.lifecycle`` (a scripted start of a room that records
already adds neither a recording nor a webhook); an end stops it, with its file.

``GET /v2/recordings?roomId=R[&sessionId=S][&page=P][&perPage=N]`` (token checked as for the
other calls; no fault applies) lists R's recordings newest first (``tasks.sandbox.history``):
``{"pageInfo": {currentPage, perPage, lastPage, total}, "data": [...]}``; ``page`` from 1,
``perPage`` 1 to 100 (default 20); a missing ``roomId`` or a bad number is 400, a ``missing-*``
room 404. It is logged in ``calls()`` as the others are, with path ``/v2/recordings``.

``GET /v2/public/rsa-public-key`` (no token needed) answers the key that verifies the webhooks:
``{"publicKey": PEM}``, or ``{"data": {"publicKey": PEM}}`` or the PEM as text/plain, as
``Faults.public_key_format`` says (``json``, ``data``, ``text``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from tasks.sandbox.auth import authorize
from tasks.sandbox.faults import (
    ALREADY_STARTED,
    ERROR_STATUSES,
    NOT_LIVE,
    NOT_STARTED,
    PROCESSING,
    RECORDING_LIMIT,
    STARTED,
    STOPPED,
    Refused,
    Reply,
    default_body,
    retry_after,
)
from tasks.sandbox.state import SandboxState

PATHS = ("/v2/recordings/start", "/v2/recordings/end")
LIST_PATH = "/v2/recordings"
PUBLIC_KEY_PATH = "/v2/public/rsa-public-key"
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 20

_from_body: Callable[[dict[str, Any]], object] | None
try:  # the request model is optional: without it only roomId is checked
    from tasks.request import RecordingRequest

    _from_body = RecordingRequest.from_body
except ImportError:
    _from_body = None


class RecordingsApi(SandboxState):
    """The recordings API's answers; see the module docstring."""

    def answer(self, path: str, headers: Any, raw: bytes) -> Reply:
        """The answer to a POST of ``raw`` to ``path``, one of ``PATHS``; the call is logged."""
        record: dict[str, Any] = {"t": time.time(), "path": path, "room_id": None, "status": None}
        with self._lock:
            self._calls.append(record)
        try:
            reply = self._recording_call(path, headers, raw, record)
        except Refused as refused:
            reply = refused.reply
        record["status"] = reply[0]  # a single dict store is atomic; calls() copies under lock
        return reply

    def public_key(self) -> Reply:
        """The answer to ``GET /v2/public/rsa-public-key``, as ``Faults.public_key_format`` says."""
        pem = self.public_key_pem
        if self.faults.public_key_format == "text":
            return 200, pem.encode("ascii"), None
        if self.faults.public_key_format == "data":
            return 200, {"data": {"publicKey": pem}}, None
        return 200, {"publicKey": pem}, None

    def listing(self, query: str, headers: Any) -> Reply:
        """The answer to ``GET /v2/recordings?{query}``; the call is logged."""
        record: dict[str, Any] = {
            "t": time.time(),
            "path": LIST_PATH,
            "room_id": None,
            "status": None,
        }
        with self._lock:
            self._calls.append(record)
        try:
            reply = self._list(query, headers, record)
        except Refused as refused:
            reply = refused.reply
        record["status"] = reply[0]
        return reply

    def _list(self, query: str, headers: Any, record: dict[str, Any]) -> Reply:
        self._authorize(headers)
        try:
            params = {k: v[-1] for k, v in parse_qs(query, errors="strict").items()}
        except ValueError:
            raise Refused(400, "Query string is not valid UTF-8") from None
        room = params.get("roomId")
        if not room:
            raise Refused(400, "roomId is required")
        record["room_id"] = room
        if room.startswith("missing-"):
            raise Refused(404, "Room not found")
        page = _whole(params, "page", 1, None)
        per_page = _whole(params, "perPage", DEFAULT_PER_PAGE, MAX_PER_PAGE)
        with self._lock:
            found = self._life.history.page(
                room, session_id=params.get("sessionId"), page=page, per_page=per_page
            )
        return 200, found, None

    def _authorize(self, headers: Any) -> None:
        token = headers.get("Authorization") or ""
        now = time.time() + self.faults.clock_offset_s
        authorize(token, api_key=self._api_key, secret=self._secret, now=now)

    def _recording_call(self, path: str, headers: Any, raw: bytes, record: dict[str, Any]) -> Reply:
        self._authorize(headers)
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
                if room not in self._rooms.recording:
                    raise Refused(400, NOT_STARTED)
                self._rooms.recording.discard(room)  # the meeting, and its session, go on
                self._life.stopped(room, now=time.time())
            return 200, STOPPED, None
        webhook_url = body.get("webhookUrl")
        with self._lock:  # the URL first: the room may go live at once, and tell it
            self._life.note_webhook_url(room, webhook_url)
            self._rooms.first_start(room, now=time.time(), live_after_s=self.faults.live_after_s)
            self._wake_when_due(room)
        if _from_body is not None:
            try:
                _from_body(body)
            except ValueError as exc:  # tasks.errors.ValidationError is a ValueError
                raise Refused(422, str(exc)) from None
        with self._lock:
            scripted = self._scripts.popleft() if self._scripts else None
        if scripted is not None:
            return self._scripted(scripted, room, webhook_url, record)
        return self._start(room, webhook_url, record)

    def _scripted(
        self, scripted: dict[str, Any], room: str, webhook_url: object, record: dict[str, Any]
    ) -> Reply:
        status = int(scripted.get("status", 200))
        if scripted.get("start", 200 <= status < 300):
            with self._lock:
                self._start_recording(room, webhook_url)
        body = scripted.get("body", default_body(status))
        record["status"] = status
        self._stopping.wait(float(scripted.get("delay_s", 0)))
        return status, body.encode() if isinstance(body, str) else body, scripted.get("headers")

    def _start(self, room: str, webhook_url: object, record: dict[str, Any]) -> Reply:
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
            refusal = self._refusal(room)
            if refusal is None:
                self._start_recording(room, webhook_url)
        reply: Reply = (200, STARTED, None)
        if refusal is not None:
            reply = (400, {"message": refusal}, None)
        if hang:
            record["status"] = reply[0]
            self._stopping.wait(faults.hang_s)
        return reply

    def _refusal(self, room: str) -> str | None:
        """Why a start of ``room`` is refused now (see the module docstring), or None; locked."""
        faults = self.faults
        if faults.require_live and self._rooms.session(room, now=time.time()) is None:
            return NOT_LIVE
        if room in self._rooms.recording:
            return ALREADY_STARTED
        if self._processing.take(time.monotonic()):
            return PROCESSING
        limit = faults.max_recordings
        if limit is not None and len(self._rooms.recording) >= limit:
            return RECORDING_LIMIT
        return None


def _whole(params: dict[str, str], name: str, default: int, most: int | None) -> int:
    """Query parameter ``name`` as a whole number from 1 (to ``most``), else Refused (400)."""
    text = params.get(name)
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= (most or int(text)):
        limit = "" if most is None else f" to {most}"
        raise Refused(400, f"{name} must be a whole number from 1{limit}")
    return int(text)
