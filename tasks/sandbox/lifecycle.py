"""``Lifecycle``: VideoSDK's side of a recording's life: its history and the webhooks it sends.

Each event is ``{"webhookType": <type>, "data": {"meetingId": <roomId>, "sessionId": ...}}``:

- a start: ``recording-starting``, then ``recording-started``;
- a stop (``/v2/recordings/end``, or the session ending): ``recording-stopping``, then
  ``recording-stopped``, whose data adds ``fileUrl`` and ``filePath``;
- a failure on request: ``recording-failed``;
- a room going live: ``session-started`` (data adds ``start``), sent before the recording's
  events when a start opens the session; a session ending: after its recording's stop events,
  ``session-ended`` (data adds ``start`` and ``end``); times ISO 8601 UTC.

Where they go: a recording's events to the ``webhookUrl`` of its start call, else to
``Faults.webhook_url`` as it was then; a room's session events to the ``webhookUrl`` of its
last start call that passed auth and the roomId checks (a refused one too: a job waiting for
the room to go live hears of it), else ``Faults.webhook_url``. No URL: no webhook, and the history
is kept all the same. With ``webhook_reorder`` on when a recording started, its events are held
until it ends and then sent together in another order than they happened. Not thread-safe:
the server calls it under its own lock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from tasks.sandbox.faults import Faults
from tasks.sandbox.history import STATUS_FAILED, STATUS_STOPPED, History, Recording, iso
from tasks.sandbox.sessions import Session
from tasks.sandbox.webhooks import WebhookSender

RECORDING_STARTING = "recording-starting"
RECORDING_STARTED = "recording-started"
RECORDING_STOPPING = "recording-stopping"
RECORDING_STOPPED = "recording-stopped"
RECORDING_FAILED = "recording-failed"
SESSION_STARTED = "session-started"
SESSION_ENDED = "session-ended"


def event(webhook_type: str, room: str, session_id: str, **more: Any) -> dict[str, Any]:
    """A webhook's body as an object."""
    return {
        "webhookType": webhook_type,
        "data": {"meetingId": room, "sessionId": session_id, **more},
    }


class Lifecycle:
    """The recordings' history and their webhooks; see the module docstring."""

    def __init__(
        self,
        *,
        sender: WebhookSender,
        faults: Faults,
        max_per_room: int = 50,
        max_rooms: int = 10_000,
    ) -> None:
        self.history = History(max_per_room=max_per_room, max_rooms=max_rooms)
        self._sender, self._faults, self._max_rooms = sender, faults, max_rooms
        self._urls: OrderedDict[str, str] = OrderedDict()  # room -> its last start's webhookUrl
        self._held: dict[str, list[dict[str, Any]]] = {}  # recording id -> events held back

    def note_webhook_url(self, room: str, url: object) -> None:
        """Remember the ``webhookUrl`` of a start call of ``room`` (if it is a URL at all)."""
        if isinstance(url, str) and url:
            self._urls[room] = url
            self._urls.move_to_end(room)
            if len(self._urls) > self._max_rooms:
                self._urls.popitem(last=False)

    def started(self, room: str, session_id: str, *, webhook_url: object, now: float) -> Recording:
        """``room`` started recording in ``session_id``; its start's ``webhookUrl`` given."""
        url = webhook_url if isinstance(webhook_url, str) and webhook_url else None
        recording = self.history.start(
            room,
            session_id,
            now=now,
            webhook_url=url or self._faults.webhook_url,
            reorder=self._faults.webhook_reorder,
        )
        self._emit(recording, [RECORDING_STARTING, RECORDING_STARTED])
        return recording

    def stopped(self, room: str, *, now: float) -> Recording | None:
        """``room``'s recording stopped, with its file; None if it was not recording."""
        recording = self.history.finish(room, STATUS_STOPPED, now=now)
        if recording is not None:
            more = {"fileUrl": recording.file_url, "filePath": recording.file_path}
            self._emit(recording, [RECORDING_STOPPING, (RECORDING_STOPPED, more)])
        return recording

    def failed(self, room: str, *, now: float) -> Recording | None:
        """``room``'s recording failed; None if it was not recording."""
        recording = self.history.finish(room, STATUS_FAILED, now=now)
        if recording is not None:
            self._emit(recording, [RECORDING_FAILED])
        return recording

    def session_started(self, room: str, session: Session) -> None:
        url = self._session_url(room)
        if url is not None:
            start = iso(session.started_at)
            self._sender.send(url, [event(SESSION_STARTED, room, session.session_id, start=start)])

    def session_ended(self, room: str, session: Session, *, now: float) -> None:
        url = self._session_url(room)
        if url is not None:
            times = {"start": iso(session.started_at), "end": iso(now)}
            self._sender.send(url, [event(SESSION_ENDED, room, session.session_id, **times)])

    def clear(self) -> None:
        self.history.clear()
        self._urls.clear()
        self._held.clear()

    def _session_url(self, room: str) -> str | None:
        return self._urls.get(room) or self._faults.webhook_url

    def _emit(self, recording: Recording, kinds: list[str | tuple[str, dict[str, Any]]]) -> None:
        """Send (or, reordering, hold back until it ends) ``kinds`` of events of ``recording``."""
        url = recording.webhook_url
        if url is None:
            return
        events = []
        for kind in kinds:
            webhook_type, more = kind if isinstance(kind, tuple) else (kind, {})
            events.append(event(webhook_type, recording.room_id, recording.session_id, **more))
        if not recording.reorder:
            self._sender.send(url, events)
            return
        held = self._held.setdefault(recording.id, [])
        held.extend(events)
        if recording.end is not None:
            del self._held[recording.id]
            self._sender.send(url, held, shuffle=True)
