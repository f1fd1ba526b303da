"""``Rooms``: which rooms have a live session, which will go live when, which are recording.

VideoSDK starts a recording only while the room has a live session (someone joined the
meeting). A room goes live when told (``go_live``, at once or ``after_s`` later) or, with
``Faults.live_after_s``, that long after its *first* start call (a host joining late); a room
marked ``never_live`` goes live only when told again. Each session has a uuid4 ``session_id``.
Ending a session stops its recording; a recording always has a session (starting one in a room
that is not live, when liveness is not required, opens a session for it). A room whose session
ended does not go live again by ``live_after_s``: its first start is long past.

Due times are epoch seconds, checked when asked (``due_at`` tells the server when to ask): a
session that went live while nobody looked has the due time as its ``started_at``. ``on_open``
is called with each new session, the moment it is found open. Not thread-safe: the server calls
it under its own lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Session:
    """A room's live session."""

    session_id: str
    started_at: float  # epoch s


class Rooms:
    """The rooms' sessions and recordings; see the module docstring."""

    def __init__(self, on_open: Callable[[str, Session], None] | None = None) -> None:
        self.recording: set[str] = set()
        self._on_open = on_open
        self._live: dict[str, Session] = {}
        self._due: dict[str, float] = {}  # room -> epoch s it goes live
        self._never: set[str] = set()
        self._started: set[str] = set()  # rooms whose first start call has been seen

    def go_live(self, room: str, *, now: float, after_s: float = 0.0) -> Session | None:
        """Make ``room`` live at once (its session, kept if live already) or ``after_s`` later."""
        self._never.discard(room)
        self._started.add(room)  # from now on only this says when, not live_after_s
        if after_s > 0 and room not in self._live:
            self._due[room] = now + after_s
            return None
        return self._open(room, at=now)

    def never_live(self, room: str) -> Session | None:
        """End ``room``'s session (returned, or None) and keep it from going live by itself."""
        self._never.add(room)
        return self.end(room)

    def end(self, room: str) -> Session | None:
        """End ``room``'s session and its recording; the ended session, or None if not live."""
        self._due.pop(room, None)
        self.recording.discard(room)
        return self._live.pop(room, None)

    def first_start(self, room: str, *, now: float, live_after_s: float | None) -> None:
        """Note a start call; the first one of a room schedules it live ``live_after_s`` later."""
        if room in self._started:
            return
        self._started.add(room)
        if live_after_s is not None and room not in self._never and room not in self._live:
            self._due.setdefault(room, now + live_after_s)

    def due_at(self, room: str) -> float | None:
        """The epoch s ``room`` goes live by itself, or None."""
        return self._due.get(room)

    def session(self, room: str, *, now: float) -> Session | None:
        """``room``'s live session at ``now``, or None."""
        due = self._due.get(room)
        if due is not None and due <= now:
            self._open(room, at=due)
        return self._live.get(room)

    def start_recording(self, room: str, *, now: float) -> Session:
        """Mark ``room`` recording, in its live session (opened now if it has none)."""
        self.recording.add(room)
        return self.session(room, now=now) or self._open(room, at=now)

    def sessions(self, *, now: float) -> dict[str, dict[str, Any]]:
        """JSON-ready live sessions by room: ``session_id``, ``started_at``, ``recording``."""
        for room in [room for room, due in self._due.items() if due <= now]:
            self.session(room, now=now)
        return {
            room: {
                "session_id": live.session_id,
                "started_at": live.started_at,
                "recording": room in self.recording,
            }
            for room, live in sorted(self._live.items())
        }

    def describe(self, room: str, *, now: float) -> dict[str, Any]:
        """JSON-ready state of one room, known or not.

        Keys: ``room_id``, ``live``, ``session_id`` and ``started_at`` (None when not live),
        ``live_at`` (epoch s of a pending go-live, else None), ``never``, ``recording``.
        """
        live, due = self.session(room, now=now), self._due.get(room)
        return {
            "room_id": room,
            "live": live is not None,
            "session_id": live.session_id if live else None,
            "started_at": live.started_at if live else None,
            "live_at": due,
            "never": room in self._never,
            "recording": room in self.recording,
        }

    def clear(self) -> None:
        self.recording.clear()
        self._live.clear()
        self._due.clear()
        self._never.clear()
        self._started.clear()

    def _open(self, room: str, *, at: float) -> Session:
        self._due.pop(room, None)
        live = self._live.get(room)
        if live is None:
            live = self._live[room] = Session(str(uuid.uuid4()), at)
            if self._on_open is not None:
                self._on_open(room, live)
        return live
