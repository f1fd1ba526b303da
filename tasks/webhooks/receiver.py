"""The webhook receiver's logic, without HTTP: verify, parse, apply, tell.

``handle(raw_body, signature)`` is what ``POST /webhooks/videosdk`` does (:mod:`.app` serves it;
``tasks.handle_webhook`` is it, for mounting in an application):

1. the body is at most :data:`MAX_BODY_BYTES` (else :class:`WebhookTooLarge`, HTTP 413);
2. the signature verifies against the public key, fetched again once on failure for a rotated
   key (else :class:`InvalidWebhookSignature`, 401; nothing is read or stored before this);
3. the verified body is a JSON object (else :class:`InvalidWebhookBody`, 400);
4. the event is applied in one Redis script (:meth:`Recordings.apply_event`): an unknown type, or
   a room with no job, is acknowledged all the same (VideoSDK would otherwise retry it);
5. a ``recording-failed`` of a recording that had begun is logged at ERROR with the room, and the
   job's ``notify_task`` (if any) is told of the change.

Events: ``{"webhookType": "<type>", "data": {"meetingId": "<roomId>", "sessionId": "...",
"fileUrl": "...", "filePath": "..."}}`` (VideoSDK's webhook docs; FIELD-NOTES).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from tasks.errors import InvalidWebhookBody, InvalidWebhookSignature, WebhookTooLarge
from tasks.job import Job
from tasks.store.recordings import EventApplied, Recordings
from tasks.webhooks.keys import PublicKeys, signature_ok

logger = logging.getLogger(__name__)

#: the largest body read; VideoSDK's events are well under a kilobyte.
MAX_BODY_BYTES = 1024 * 1024
SIGNATURE_HEADER = "videosdk-signature"
#: refused webhooks are logged at most this often (with the count since), seconds
REFUSAL_LOG_EVERY_S = 10.0


class WebhookReceiver:
    """Verifies and applies webhooks to ``store``; ``notify`` is told of every changed job."""

    def __init__(
        self,
        *,
        store: Recordings,
        keys: PublicKeys,
        notify: Callable[[Job], None] = lambda job: None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.notify = notify
        self._refusals = 0
        self._refusal_logged_at = -REFUSAL_LOG_EVERY_S
        self._lock = threading.Lock()

    def handle(self, raw_body: bytes, signature: str | None) -> EventApplied:
        """Verify and apply one webhook (module docstring); raises the errors listed there."""
        if len(raw_body) > MAX_BODY_BYTES:
            raise WebhookTooLarge(f"body over {MAX_BODY_BYTES} bytes")
        self.verify(raw_body, signature)
        try:
            event = json.loads(raw_body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidWebhookBody("the body is not JSON") from None
        if not isinstance(event, dict):
            raise InvalidWebhookBody("the body is not a JSON object")
        return self.apply(event)

    def verify(self, raw_body: bytes, signature: str | None) -> None:
        """Raise InvalidWebhookSignature unless ``signature`` signs ``raw_body``."""
        if not signature or not signature.strip():
            self._refused(f"no {SIGNATURE_HEADER} header")
        if signature_ok(self.keys.current(), raw_body, signature):
            return
        rotated = self.keys.refreshed()
        if rotated is None or not signature_ok(rotated, raw_body, signature):
            self._refused("the signature does not verify")

    def _refused(self, reason: str) -> NoReturn:
        """Raise InvalidWebhookSignature, logging it at WARNING at most every
        :data:`REFUSAL_LOG_EVERY_S` with the count since (a flood of forgeries is one line)."""
        now = time.monotonic()
        with self._lock:
            self._refusals += 1
            due = now - self._refusal_logged_at >= REFUSAL_LOG_EVERY_S
            if due:
                count, self._refusals, self._refusal_logged_at = self._refusals, 0, now
        if due:
            logger.warning(
                "webhook refused: %s (%d refused since the last such line; a forgery, or the "
                "wrong VIDEOSDK_WEBHOOK_PUBLIC_KEY?)",
                reason,
                count,
                extra={"outcome": "refused"},
            )
        raise InvalidWebhookSignature(reason)

    def apply(self, event: dict[str, Any]) -> EventApplied:
        """Apply a verified event; anything it cannot use is ``ignored``, never an error."""
        event_type = event.get("webhookType")
        data = event.get("data")
        room = data.get("meetingId") if isinstance(data, dict) else None
        if not isinstance(event_type, str) or not isinstance(room, str) or not room:
            logger.info("webhook ignored: no webhookType or data.meetingId")
            return EventApplied("ignored")
        assert isinstance(data, dict)
        applied = self.store.apply_event(
            room,
            event_type,
            session_id=_text(data.get("sessionId")),
            file_url=_text(data.get("fileUrl")),
            file_path=_text(data.get("filePath")),
        )
        self._report(room, event_type, applied)
        return applied

    def _report(self, room: str, event_type: str, applied: EventApplied) -> None:
        job = applied.job
        fields = {"room_id": room, "outcome": applied.outcome, "event": event_type}
        if job is not None:
            fields["job_id"] = job.id
        if applied.outcome == "applied" and job is not None and job.recording:
            recording = job.recording
            if recording.get("status") == "failed":
                logger.error(
                    "recording of room %s failed (job %s, session %s, was %s)",
                    room,
                    job.id,
                    recording.get("session_id"),
                    applied.previous or "unknown",
                    extra={**fields, "status": "failed"},
                )
            else:
                logger.info(
                    "room %s recording %s (job %s)",
                    room,
                    recording.get("status"),
                    job.id,
                    extra=fields,
                )
            self.notify(job)
        elif applied.outcome == "woken" and job is not None:
            logger.info("room %s went live: job %s tried again now", room, job.id, extra=fields)
        else:
            logger.debug("webhook %s for room %s: %s", event_type, room, applied.outcome)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
