"""Job: the record of one "start recording" job, as stored in Redis and shown to users."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, overload


class Kind(StrEnum):
    """What a job asks of the API: start a room's recording, or stop it."""

    START = "start"
    STOP = "stop"


#: a recording's statuses (from VideoSDK's webhooks), in the only order they may move in:
#: an event whose status ranks at or below the current one changes nothing (a duplicate, a
#: late arrival). ``stopped`` and ``failed`` both end a recording.
RECORDING_RANK = {"starting": 1, "started": 2, "stopping": 3, "stopped": 4, "failed": 4}
#: the statuses that end a recording
RECORDING_ENDED = frozenset({"stopped", "failed"})


@overload
def whole(value: float) -> float | int: ...
@overload
def whole(value: None) -> None: ...
def whole(value: float | None) -> float | int | None:
    """``value`` as an int when it is a whole number (``600.0``: ``600``), else as it is: how
    records, JSON and the CLI show seconds."""
    return int(value) if value is not None and value.is_integer() else value


def recording_ended(recording: dict[str, Any] | None) -> bool:
    """Whether a job's ``recording`` (None: nothing known) has stopped or failed."""
    return (recording or {}).get("status") in RECORDING_ENDED


#: ``RECORDER_START_WINDOW``'s default, seconds (``tasks.window``); a record whose window is
#: this long does not store it
DEFAULT_START_WINDOW_S = 600.0

#: every field of a ``recording``: records store only those known (None is left out)
RECORDING_FIELDS: dict[str, Any] = dict.fromkeys(
    (
        "status",
        "session_id",
        "file_url",
        "file_path",
        "started_at",
        "stopped_at",
        "failed_at",
        "updated_at",
    )
)


def recording_view(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored recording with every field: unknown ones None, ``updated_at`` the job's (set
    with each move), ``stopped_at``/``failed_at`` read from it, as the store keeps them."""
    view = {**RECORDING_FIELDS, **stored}
    if view["status"] in RECORDING_ENDED:
        view[f"{view['status']}_at"] = view["updated_at"]
    return view


class Status(StrEnum):
    """Where a job is in its life. Terminal statuses never change again (but see ``retry``)."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: the start window closed before the recording could start (see ``tasks.window``)
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED})
#: statuses from which a job may still be cancelled: it has not reached the API yet.
CANCELLABLE = frozenset({Status.SCHEDULED, Status.QUEUED})


def utc_iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds, e.g. ``2026-11-24T09:00:00.123Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Job:
    """One job's record. ``to_dict`` gives the contract's JSON-ready fields.

    Beyond the contract: ``run_at`` (when a scheduled job is due), ``next_attempt_at`` (when a
    waiting job is tried again), ``maybe_started`` (an earlier attempt's outcome is unknown, so an
    "already recording" answer means success), ``deliveries`` (times a worker took the job),
    ``lost_deliveries`` (deliveries whose worker died before finishing), ``schedule`` (the
    recurring schedule that created it), ``start_window_s`` and ``start_deadline`` (ISO 8601
    UTC: the last moment a start attempt may be made, see :mod:`tasks.window`).

    ``kind`` is ``start`` or ``stop``. ``recording`` is what VideoSDK's webhooks (or a
    reconciliation) said of the recording a start job began: None until something is known,
    then ``{"status", "session_id", "file_url", "file_path", "started_at", "stopped_at",
    "failed_at", "updated_at"}`` (times ISO 8601 UTC; unknown ones None). ``max_duration_s``
    and ``stop_job_id``: the stop scheduled when the start succeeded. ``notify_task``: the
    Celery task told of every change (see ``tasks.notify``).
    """

    id: str
    room_id: str
    status: Status
    request: dict[str, Any]
    created_at: str
    updated_at: str
    attempts: int = 0
    finished_at: str | None = None
    http_status: int | None = None
    response: Any = None
    error: dict[str, str] | None = None
    idempotency_key: str | None = None
    run_at: str | None = None
    next_attempt_at: str | None = None
    maybe_started: bool = False
    in_flight: bool = False
    deliveries: int = 0
    lost_deliveries: int = 0
    schedule: str | None = None
    start_window_s: float | None = None
    start_deadline: str | None = None
    kind: Kind = Kind.START
    recording: dict[str, Any] | None = None
    max_duration_s: float | None = None
    stop_job_id: str | None = None
    notify_task: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def finished(self) -> bool:
        return self.status.terminal

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields: the contract's, then ours; never internal bookkeeping."""
        data = asdict(self)
        data.pop("extra")
        data.pop("in_flight")
        data["status"] = self.status.value
        data["kind"] = self.kind.value
        return data

    @classmethod
    def from_record(cls, raw: str | bytes) -> Job:
        """Build a Job from its stored JSON; fields starting with ``_`` are store bookkeeping."""
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """Build a Job from a record's fields (unknown ones are kept in ``extra``)."""
        known = {name for name in cls.__dataclass_fields__ if name != "extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        kwargs["status"] = Status(kwargs["status"])
        kwargs["kind"] = Kind(kwargs.get("kind") or Kind.START)
        if kwargs.get("start_deadline") is None and isinstance(extra.get("_deadline"), int):
            kwargs["start_deadline"] = utc_iso(extra["_deadline"] / 1000)
            kwargs.setdefault("start_window_s", int(DEFAULT_START_WINDOW_S))
        if isinstance(kwargs.get("recording"), dict):
            stored = {"updated_at": kwargs.get("updated_at"), **kwargs["recording"]}
            kwargs["recording"] = recording_view(stored)
        return cls(**kwargs, extra=extra)
