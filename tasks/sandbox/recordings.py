"""``RecordingsApi``: the sandbox's VideoSDK, its state and its answers to recording calls.

It answers ``POST /v2/recordings/start`` and ``/end`` as the real API does, with the ``Faults``
and scripted answers described in the package docstring, the rooms' live sessions of
``tasks.sandbox.sessions`` and the account's refusals. ``SandboxServer`` serves it over HTTP.
Every method is thread-safe: one lock guards all mutable state, and no answer waits holding it.

A start that passes auth and the body checks, and no scripted answer or random fault answers,
is refused (400, in this order) when the room has no live session and ``require_live`` is on
(``NOT_LIVE``), when the room is recording (``ALREADY_STARTED``), while ``refuse_as_processing``
is on (``PROCESSING``), or while ``max_recordings`` recordings run (``RECORDING_LIMIT``).
An end of a room that is not recording is refused (400, ``NOT_STARTED``); an end stops the
recording but not the room's session (the meeting goes on): ``end_session()`` ends both.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

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
    Faults,
    Processing,
    Refused,
    Reply,
    default_body,
    retry_after,
)
from tasks.sandbox.limiter import TokenBucket
from tasks.sandbox.sessions import Rooms, Session

PATHS = ("/v2/recordings/start", "/v2/recordings/end")

_from_body: Callable[[dict[str, Any]], object] | None
try:  # the request model is optional: without it only roomId is checked
    from tasks.request import RecordingRequest

    _from_body = RecordingRequest.from_body
except ImportError:
    _from_body = None


def _session_id(session: Session | None) -> str | None:
    return None if session is None else session.session_id


class RecordingsApi:
    """The recordings API's behaviour and state; see the module docstring."""

    def __init__(
        self,
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
        self._rooms = Rooms()
        self._processing = Processing()
        self._bucket = TokenBucket()
        self._stopping = threading.Event()  # set on stop: wakes delayed answers

    def script(self, *responses: dict[str, Any]) -> None:
        """Queue answers for the next start calls, after auth and body checks pass.

        Keys: ``status`` (200), ``body`` (a str is sent verbatim as text/plain, anything else
        as JSON; default per status), ``headers``, ``delay_s`` (wait before answering),
        ``start`` (mark the room recording first, in a session opened if it has none; default:
        status is 2xx). A scripted answer skips every fault and every refusal.
        """
        with self._lock:
            self._scripts.extend(dict(r) for r in responses)

    def calls(self) -> list[dict[str, Any]]:
        """Start/end calls in arrival order: ``t`` (epoch s), ``path``, ``room_id``, ``status``."""
        with self._lock:
            return [dict(call) for call in self._calls]

    def recording_rooms(self) -> set[str]:
        with self._lock:
            return set(self._rooms.recording)

    def go_live(self, room: str, after_s: float = 0.0) -> str | None:
        """Give ``room`` a live session now (its session id) or ``after_s`` later (None)."""
        with self._lock:
            session = self._rooms.go_live(room, now=time.time(), after_s=after_s)
        return _session_id(session)

    def never_live(self, room: str) -> str | None:
        """Keep ``room`` from going live unless go_live() is called; ends its session (its id)."""
        with self._lock:
            session = self._rooms.never_live(room)
        return _session_id(session)

    def end_session(self, room: str) -> str | None:
        """End ``room``'s live session and its recording; the ended session's id, or None."""
        with self._lock:
            session = self._rooms.end(room)
        return _session_id(session)

    def sessions(self) -> dict[str, dict[str, Any]]:
        """Live sessions by room: ``session_id``, ``started_at`` (epoch s), ``recording``."""
        with self._lock:
            return self._rooms.sessions(now=time.time())

    def room_state(self, room: str) -> dict[str, Any]:
        """One room: ``room_id``, ``live``, ``session_id``, ``started_at``, ``live_at``, ..."""
        with self._lock:
            return self._rooms.describe(room, now=time.time())

    def refuse_as_processing(
        self, *, duration_s: float | None = None, count: int | None = None
    ) -> dict[str, Any]:
        """Refuse starts as PROCESSING for ``duration_s`` or ``count`` starts (0: off).

        Whichever bound ends first ends it; ValueError for neither or a bad one. Returns
        processing().
        """
        with self._lock:
            now_s = time.monotonic()
            self._processing.refuse(duration_s=duration_s, count=count, now_s=now_s)
            return self._processing.state(now_s)

    def processing(self) -> dict[str, Any]:
        """The PROCESSING refusal: ``remaining_s``, ``count`` (None: unbounded; 0s: off)."""
        with self._lock:
            return self._processing.state(time.monotonic())

    def reset(self) -> None:
        """Forget calls, scripts, rooms, sessions, the PROCESSING refusal and the 429 bucket."""
        with self._lock:
            self._calls.clear()
            self._scripts.clear()
            self._rooms.clear()
            self._processing = Processing()
            self._bucket.reset()

    def update_faults(self, changes: dict[str, Any]) -> None:
        """Set Faults fields by name; ValueError (and nothing set) for a bad name or value."""
        self.faults.update(changes)

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
                if room not in self._rooms.recording:
                    raise Refused(400, NOT_STARTED)
                self._rooms.recording.discard(room)  # the meeting, and its session, go on
            return 200, STOPPED, None
        with self._lock:
            self._rooms.first_start(room, now=time.time(), live_after_s=self.faults.live_after_s)
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
                self._rooms.start_recording(room, now=time.time())
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
            refusal = self._refusal(room)
            if refusal is None:
                self._rooms.start_recording(room, now=time.time())
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
