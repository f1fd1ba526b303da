"""The sandbox's control endpoints, without auth, for tests in other processes and the demo.

GET: ``/_sandbox/health``, ``/_sandbox/calls``, ``/_sandbox/rooms`` (recording rooms, a sorted
list), ``/_sandbox/rooms/{roomId}`` (one room's state), ``/_sandbox/sessions`` (live sessions
by room), ``/_sandbox/processing`` (the PROCESSING refusal), ``/_sandbox/webhooks`` (every
webhook try, oldest first).
POST: ``/_sandbox/script`` (scripted answers, appended), ``/_sandbox/faults`` (Faults fields to
update), ``/_sandbox/reset``, ``/_sandbox/processing`` (``{"duration_s"?, "count"?}``),
``/_sandbox/rooms/{roomId}/live`` (``{}``: live now; ``{"after_s": S}``: S seconds from now;
``{"never": true}``: never by itself), ``/_sandbox/rooms/{roomId}/end`` (end its session),
``/_sandbox/rooms/{roomId}/fail`` (fail its recording) and ``/_sandbox/rsa-key/rotate`` (``{}``:
a new key pair; ``{"privateKey": PEM}``: that one; answers ``{"publicKey": PEM}``).

A room id in a path is percent-encoded (``urllib.parse.quote(room_id, safe="")``) and decoded
once here, so ids holding ``/``, ``?``, ``%`` or any UTF-8 are reachable; ``/`` may also be sent
raw, as the last path segment names the action. Bad input answers 400 and changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Protocol
from urllib.parse import unquote

from tasks.sandbox.faults import Faults, Reply

ROOMS = "/_sandbox/rooms/"
_NOT_FOUND: Reply = (404, {"message": "Not found"}, None)


class Controlled(Protocol):
    """What the control endpoints ask of the sandbox (``SandboxServer``)."""

    faults: Faults

    def calls(self) -> list[dict[str, Any]]: ...
    def recording_rooms(self) -> set[str]: ...
    def sessions(self) -> dict[str, dict[str, Any]]: ...
    def room_state(self, room: str) -> dict[str, Any]: ...
    def processing(self) -> dict[str, Any]: ...
    def script(self, *responses: dict[str, Any]) -> None: ...
    def update_faults(self, changes: dict[str, Any]) -> None: ...
    def reset(self) -> None: ...
    def go_live(self, room: str, after_s: float = 0.0) -> str | None: ...
    def never_live(self, room: str) -> str | None: ...
    def end_session(self, room: str) -> str | None: ...
    def fail_recording(self, room: str) -> str | None: ...
    def webhooks(self) -> list[dict[str, Any]]: ...
    def rotate_key(self, private_key_pem: str | bytes | None = None) -> str: ...
    def refuse_as_processing(
        self, *, duration_s: float | None = None, count: int | None = None
    ) -> dict[str, Any]: ...


def query(sandbox: Controlled, path: str) -> Reply:
    """The answer to a GET of ``path`` (without its query string)."""
    if path == "/_sandbox/health":
        return 200, {"ok": True}, None
    if path == "/_sandbox/calls":
        return 200, sandbox.calls(), None
    if path == "/_sandbox/rooms":
        return 200, sorted(sandbox.recording_rooms()), None
    if path == "/_sandbox/sessions":
        return 200, sandbox.sessions(), None
    if path == "/_sandbox/processing":
        return 200, sandbox.processing(), None
    if path == "/_sandbox/webhooks":
        return 200, sandbox.webhooks(), None
    if path.startswith(ROOMS):
        try:
            return 200, sandbox.room_state(_room_id(path[len(ROOMS) :])), None
        except ValueError as exc:
            return 400, {"message": str(exc)}, None
    return _NOT_FOUND


def command(sandbox: Controlled, path: str, raw: bytes) -> Reply:
    """The answer to a POST of ``raw`` to ``path`` (without its query string)."""
    try:
        payload = json.loads(raw or b"null")
        if path == "/_sandbox/script":
            items = payload if isinstance(payload, list) else [payload]
            if not all(isinstance(item, dict) for item in items):
                raise ValueError("script takes a list of objects")
            sandbox.script(*items)
            return 200, {"ok": True, "queued": len(items)}, None
        if path == "/_sandbox/faults":
            if not isinstance(payload, dict):
                raise ValueError("faults takes an object of Faults fields")
            sandbox.update_faults(payload)
            return 200, asdict(sandbox.faults), None
        if path == "/_sandbox/processing":
            bounds = _object(payload, "processing", {"duration_s", "count"})
            return 200, sandbox.refuse_as_processing(**bounds), None
        if path == "/_sandbox/reset":
            sandbox.reset()
            return 200, {"ok": True}, None
        if path == "/_sandbox/rsa-key/rotate":
            pem = _object(payload, "rotate", {"privateKey"}).get("privateKey")
            if pem is not None and not isinstance(pem, str):
                raise ValueError("privateKey takes PEM text")
            return 200, {"publicKey": sandbox.rotate_key(pem)}, None
        room_part, _, action = path.removeprefix(ROOMS).rpartition("/")
        if path.startswith(ROOMS) and room_part and action in ("live", "end", "fail"):
            return _room_command(sandbox, _room_id(room_part), action, payload)
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return 400, {"message": str(exc)}, None
    return _NOT_FOUND


def _room_command(sandbox: Controlled, room: str, action: str, payload: Any) -> Reply:
    if action == "end":
        _object(payload, "end", set())
        ended = sandbox.end_session(room)
        return 200, {**sandbox.room_state(room), "ended_session_id": ended}, None
    if action == "fail":
        _object(payload, "fail", set())
        failed = sandbox.fail_recording(room)
        return 200, {**sandbox.room_state(room), "failed_recording_id": failed}, None
    options = _object(payload, "live", {"after_s", "never"})
    never, after_s = options.get("never", False), options.get("after_s", 0)
    if not isinstance(never, bool) or (never and "after_s" in options):
        raise ValueError("live takes {} or {after_s: seconds} or {never: true}")
    if isinstance(after_s, bool) or not isinstance(after_s, int | float) or not after_s >= 0:
        raise ValueError(f"bad value for after_s: {after_s!r}")
    if never:
        sandbox.never_live(room)
    else:
        sandbox.go_live(room, after_s=after_s)
    return 200, sandbox.room_state(room), None


def _object(payload: Any, what: str, keys: set[str]) -> dict[str, Any]:
    """``payload`` as an object of some of ``keys`` (no body: empty); else ValueError."""
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise ValueError(f"{what} takes an object")
    unknown = sorted(set(payload) - keys)
    if unknown:
        raise ValueError(f"{what} takes no {unknown[0]!r}")
    return payload


def _room_id(encoded: str) -> str:
    room = unquote(encoded, errors="strict")
    if not room:
        raise ValueError("room id is required")
    return room
