"""``History``: the recordings the sandbox made, per room, for ``GET /v2/recordings``.

A recording is ``started`` from the successful start call on (the sandbox starts recordings at
once: no ``starting`` is ever listed, though the ``recording-starting`` webhook is sent) until
the room's recording is stopped (``/v2/recordings/end``, or its session ends: ``stopped``, with
its ``file``) or failed on request (``failed``, no file). ``stopping`` is never listed either:
a stop takes no time here. Each room keeps its ``max_per_room`` newest recordings, and the
``max_rooms`` rooms touched last are kept; a running recording is never forgotten (it is listed,
and kept again when it ends, even if its room's history went).

JSON shape of one recording (``to_json``), as VideoSDK's listing has it plus ``status``:
``id``, ``roomId``, ``sessionId``, ``status``, ``start``, ``end`` (null while running),
``createdAt``, ``updatedAt`` (ISO 8601 UTC with milliseconds and ``Z``) and ``file``: null until
stopped, then ``{"fileUrl", "filePath", "type": "video/mp4"}``.
Not thread-safe: the server calls it under its own lock.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

FILE_BASE_URL = "https://sandbox.videosdk.local/recordings"
STATUS_STARTED, STATUS_STOPPED, STATUS_FAILED = "started", "stopped", "failed"


def iso(epoch_s: float | None) -> str | None:
    """``epoch_s`` as ISO 8601 UTC, milliseconds and ``Z`` (as VideoSDK writes times), or None."""
    if epoch_s is None:
        return None
    text = datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def file_path(room: str, session_id: str, recording_id: str) -> str:
    """Where a recording's file lies: one file per recording, the room id percent-encoded."""
    return f"recordings/{quote(room, safe='')}/{session_id}/{recording_id}.mp4"


@dataclass(eq=False)  # one recording is equal only to itself
class Recording:
    """One recording of a room, in one of its sessions."""

    id: str
    room_id: str
    session_id: str
    start: float  # epoch s
    webhook_url: str | None  # where its events go (None: nowhere)
    reorder: bool  # Faults.webhook_reorder when it started: its events are held until it ends
    status: str = STATUS_STARTED
    end: float | None = None
    updated: float = 0.0

    @property
    def file_path(self) -> str | None:
        if self.status != STATUS_STOPPED:
            return None
        return file_path(self.room_id, self.session_id, self.id)

    @property
    def file_url(self) -> str | None:
        path = self.file_path
        return None if path is None else f"{FILE_BASE_URL}/{path.removeprefix('recordings/')}"

    def to_json(self) -> dict[str, Any]:
        """As ``GET /v2/recordings`` lists it; see the module docstring."""
        file = None
        if self.status == STATUS_STOPPED:
            file = {"fileUrl": self.file_url, "filePath": self.file_path, "type": "video/mp4"}
        return {
            "id": self.id,
            "roomId": self.room_id,
            "sessionId": self.session_id,
            "status": self.status,
            "start": iso(self.start),
            "end": iso(self.end),
            "createdAt": iso(self.start),
            "updatedAt": iso(self.updated),
            "file": file,
        }


class History:
    """The rooms' recordings, newest last; see the module docstring."""

    def __init__(self, *, max_per_room: int = 50, max_rooms: int = 10_000) -> None:
        self._max_per_room, self._max_rooms = max_per_room, max_rooms
        self._rooms: OrderedDict[str, deque[Recording]] = OrderedDict()
        self._running: dict[str, Recording] = {}  # room -> its running recording

    def start(
        self, room: str, session_id: str, *, now: float, webhook_url: str | None, reorder: bool
    ) -> Recording:
        """A new running recording of ``room``, which must have none running."""
        recording = Recording(os.urandom(12).hex(), room, session_id, now, webhook_url, reorder)
        recording.updated = now
        self._running[room] = recording
        self._keep(recording)
        return recording

    def running(self, room: str) -> Recording | None:
        return self._running.get(room)

    def finish(self, room: str, status: str, *, now: float) -> Recording | None:
        """End ``room``'s running recording as ``status`` (returned), or None if none runs."""
        recording = self._running.pop(room, None)
        if recording is not None:
            recording.status, recording.end, recording.updated = status, now, now
            kept = self._rooms.get(room)
            if kept is None or recording not in kept:  # its room's history went meanwhile
                self._keep(recording)
            else:
                self._rooms.move_to_end(room)
        return recording

    def of(self, room: str, session_id: str | None = None) -> list[Recording]:
        """``room``'s recordings (of ``session_id`` only, if given), newest first."""
        found = list(reversed(self._rooms.get(room) or ()))
        running = self._running.get(room)
        if running is not None and running not in found:
            found.insert(0, running)
        return [r for r in found if session_id is None or r.session_id == session_id]

    def page(
        self, room: str, *, session_id: str | None, page: int, per_page: int
    ) -> dict[str, Any]:
        """One page of ``room``'s recordings as ``GET /v2/recordings`` answers it."""
        found = self.of(room, session_id)
        first = (page - 1) * per_page
        return {
            "pageInfo": {
                "currentPage": page,
                "perPage": per_page,
                "lastPage": max(1, math.ceil(len(found) / per_page)),
                "total": len(found),
            },
            "data": [r.to_json() for r in found[first : first + per_page]],
        }

    def clear(self) -> None:
        self._rooms.clear()
        self._running.clear()

    def _keep(self, recording: Recording) -> None:
        """Add ``recording`` to its room's history; the room touched least recently may go."""
        room = recording.room_id
        kept = self._rooms.get(room)
        if kept is None:
            kept = self._rooms[room] = deque(maxlen=self._max_per_room)
        kept.append(recording)
        self._rooms.move_to_end(room)
        if len(self._rooms) > self._max_rooms:
            self._rooms.popitem(last=False)
