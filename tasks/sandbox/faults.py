"""The sandbox's answers: the ``Faults`` it injects, its bodies, and refusals of a call.

``Faults`` are the misbehaviour of start calls that have no scripted answer, mutable at run
time. ``Reply`` is what a call answers (status, body, headers); ``Refused`` answers at once.
A fractional ``retry_after_s`` is sent as a decimal, which the RFC does not allow but which
keeps tests fast.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from http import HTTPStatus
from typing import Any

STARTED = "Recording started successfully"
STOPPED = "Recording stopped successfully"
ERROR_STATUSES = (500, 502, 503)
Reply = tuple[int, Any, dict[str, str] | None]  # status, body (bytes: sent as text), headers
_NULLABLE = frozenset({"rate_limit_per_s", "retry_after_s"})


@dataclass
class Faults:
    """Misbehaviour of start calls that have no scripted answer; mutable at run time."""

    latency_s: float = 0.0
    latency_jitter_s: float = 0.0  # plus uniform(0, jitter) on every start
    error_rate: float = 0.0  # answered 500/502/503, not started
    rate_limit_per_s: float | None = None  # excess answered 429
    too_many_rate: float = 0.0  # answered 429 at random, whatever the rate
    retry_after_s: float | None = 1.0  # None: 429s carry no Retry-After
    timeout_rate: float = 0.0  # started, but answered only after hang_s
    hang_s: float = 30.0
    clock_offset_s: float = 0.0  # the API's clock minus ours: tokens are checked on its clock

    def update(self, changes: dict[str, Any]) -> None:
        """Set fields by name; ValueError (and nothing set) for a bad name or value."""
        names = {f.name for f in fields(Faults)}
        for name, value in changes.items():
            if name not in names:
                raise ValueError(f"unknown fault {name!r}")
            if isinstance(value, bool) or not (
                isinstance(value, int | float) or (value is None and name in _NULLABLE)
            ):
                raise ValueError(f"bad value for {name}: {value!r}")
        for name, value in changes.items():
            setattr(self, name, value)


class Refused(Exception):
    """Raised inside a call to answer it at once with ``reply``."""

    def __init__(self, status: int, message: str) -> None:
        self.reply: Reply = (status, {"message": message}, None)


def default_body(status: int) -> Any:
    """The body the real API sends with ``status`` when no other is given."""
    if status < 300:
        return STARTED
    if status == 429:
        return {"message": "Too many requests"}
    try:
        return {"message": HTTPStatus(status).phrase}
    except ValueError:
        return {"message": "Error"}


def retry_after(value_s: float) -> str:
    """Retry-After text: whole seconds as the RFC has them, else a decimal."""
    return str(int(value_s)) if value_s == int(value_s) else f"{value_s:.3f}".rstrip("0")
