"""``SandboxState``: the sandbox's VideoSDK state, and the methods tests and operators drive it by.

One lock guards all mutable state, and no method waits holding it. The rooms' live sessions are
``tasks.sandbox.sessions``; every change of a recording or session goes to
``tasks.sandbox.lifecycle`` (the history that ``GET /v2/recordings`` lists, and the signed
webhooks that ``tasks.sandbox.webhooks`` sends with the key pair of ``tasks.sandbox.signing``).
A room due to go live later gets a timer on the webhooks' thread, so its ``session-started`` is
sent on time even if nobody asks. ``RecordingsApi`` (``tasks.sandbox.recordings``) answers the
API's calls on top of it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import Any

from tasks.sandbox.faults import Faults, Processing
from tasks.sandbox.lifecycle import Lifecycle
from tasks.sandbox.limiter import TokenBucket
from tasks.sandbox.sessions import Rooms, Session
from tasks.sandbox.signing import Signer
from tasks.sandbox.webhooks import WebhookSender

_TIMER_SLACK_S = 0.005  # a timer fires this late, so the wall clock has passed the due time


def _session_id(session: Session | None) -> str | None:
    return None if session is None else session.session_id


class SandboxState:
    """The sandbox's state; see the module docstring."""

    def __init__(
        self,
        *,
        api_key: str,
        secret: str,
        faults: Faults | None = None,
        seed: int | None = None,
        max_calls: int = 100_000,
        private_key_pem: str | bytes | None = None,
    ) -> None:
        self.faults = faults or Faults()  # shared with the webhooks: changed in place only
        self._api_key, self._secret = api_key, secret.encode()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # guards all mutable state below
        self._calls: deque[dict[str, Any]] = deque(maxlen=max_calls)
        self._scripts: deque[dict[str, Any]] = deque()
        self._signer = Signer(private_key_pem)
        self._sender = WebhookSender(signer=self._signer, faults=self.faults, seed=seed)
        self._life = Lifecycle(sender=self._sender, faults=self.faults)
        self._rooms = Rooms(on_open=self._life.session_started)
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
            self._wake_when_due(room)
        return _session_id(session)

    def never_live(self, room: str) -> str | None:
        """Keep ``room`` from going live unless go_live() is called; ends its session (its id)."""
        return self.end_session(room, never=True)

    def end_session(self, room: str, *, never: bool = False) -> str | None:
        """End ``room``'s live session and its recording; the ended session's id, or None."""
        with self._lock:
            now = time.time()
            self._life.stopped(room, now=now)
            session = (self._rooms.never_live if never else self._rooms.end)(room)
            if session is not None:
                self._life.session_ended(room, session, now=now)
        return _session_id(session)

    def fail_recording(self, room: str) -> str | None:
        """Fail ``room``'s recording (``recording-failed``, no file); its id, or None if none."""
        with self._lock:
            self._rooms.recording.discard(room)
            failed = self._life.failed(room, now=time.time())
        return None if failed is None else failed.id

    def recordings(self, room: str) -> list[dict[str, Any]]:
        """``room``'s recordings, newest first, as ``GET /v2/recordings`` lists them."""
        with self._lock:
            return [recording.to_json() for recording in self._life.history.of(room)]

    @property
    def public_key_pem(self) -> str:
        """The public key that verifies the webhooks now (PEM, ``-----BEGIN PUBLIC KEY-----``)."""
        return self._signer.public_key_pem

    def rotate_key(self, private_key_pem: str | bytes | None = None) -> str:
        """Sign from now on with a new key pair (or ``private_key_pem``); the new public PEM.

        A webhook already signed keeps its signature: its duplicates and retries too.
        ValueError (and the key unchanged) for a PEM that is not an RSA private key.
        """
        return self._signer.rotate(private_key_pem)

    def webhooks(self) -> list[dict[str, Any]]:
        """Every webhook try (and dropped webhook), oldest first; see ``tasks.sandbox.webhooks``."""
        return self._sender.log()

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
        """Forget calls, scripts, rooms, sessions, recordings, webhooks (sent or queued), the
        PROCESSING refusal and the 429 bucket; the key pair stays."""
        with self._lock:
            self._calls.clear()
            self._scripts.clear()
            self._rooms.clear()
            self._life.clear()
            self._processing = Processing()
            self._bucket.reset()
        self._sender.clear()

    def update_faults(self, changes: dict[str, Any]) -> None:
        """Set Faults fields by name; ValueError (and nothing set) for a bad name or value."""
        self.faults.update(changes)

    def _start_recording(self, room: str, webhook_url: object) -> None:
        """Start recording ``room`` in its session (opened if need be) unless it records; locked."""
        if room in self._rooms.recording:
            return
        now = time.time()
        session = self._rooms.start_recording(room, now=now)
        self._life.started(room, session.session_id, webhook_url=webhook_url, now=now)

    def _wake_when_due(self, room: str) -> None:
        """Open ``room``'s session on time if it is due to go live later; locked."""
        due = self._rooms.due_at(room)
        if due is not None:
            delay_s = due - time.time() + _TIMER_SLACK_S
            self._sender.call_later(delay_s, lambda: self._open_if_due(room))

    def _open_if_due(self, room: str) -> None:
        with self._lock:
            self._rooms.session(room, now=time.time())  # opens it if due, so on_open runs
            self._wake_when_due(room)  # still due later (moved since): wait again
