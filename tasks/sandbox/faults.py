"""The sandbox's answers: the ``Faults`` it injects, its bodies, and refusals of a call.

``Faults`` are the misbehaviour of start calls that have no scripted answer, mutable at run
time, among them the account's rules (``require_live``, ``max_recordings``), and of the
webhooks the sandbox sends (``webhook_*``, see ``tasks.sandbox.webhooks``) and of its public
key answer (``public_key_format``). ``Reply`` is what
a call answers (status, body, headers); ``Refused`` answers at once; ``Processing`` is the
"previous recording session is being processed" refusal, on for a while or for a few starts.
A fractional ``retry_after_s`` is sent as a decimal, which the RFC does not allow but which
keeps tests fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from http import HTTPStatus
from typing import Any

STARTED = "Recording started successfully"
STOPPED = "Recording stopped successfully"
ALREADY_STARTED = "Recording already started for this room"
NOT_STARTED = "Recording not started for this room"
NOT_LIVE = "No active session found for this room"
PROCESSING = "Previous recording session is being processed, please try again after few seconds"
RECORDING_LIMIT = "You have reached max limit of recording on organization"
ERROR_STATUSES = (500, 502, 503)
Reply = tuple[int, Any, dict[str, str] | None]  # status, body (bytes: sent as text), headers
PUBLIC_KEY_FORMATS = ("json", "data", "text")
_NULLABLE = frozenset(
    {"rate_limit_per_s", "retry_after_s", "live_after_s", "max_recordings", "webhook_url"}
)
_BOOLS = frozenset({"require_live", "webhook_reorder"})
_COUNTS = frozenset({"max_recordings", "webhook_max_attempts"})  # whole numbers
_NOT_NEGATIVE = frozenset(
    {"live_after_s", "max_recordings", "webhook_delay_s", "webhook_retry_backoff_s"}
)
_FRACTIONS = frozenset({"webhook_drop_rate", "webhook_duplicate_rate"})  # 0 to 1
_TEXTS = frozenset({"webhook_url"})
_CHOICES = {"public_key_format": PUBLIC_KEY_FORMATS}


@dataclass
class Faults:
    """Misbehaviour of unscripted start calls and of webhooks; mutable at run time."""

    latency_s: float = 0.0
    latency_jitter_s: float = 0.0  # plus uniform(0, jitter) on every start
    error_rate: float = 0.0  # answered 500/502/503, not started
    rate_limit_per_s: float | None = None  # excess answered 429
    too_many_rate: float = 0.0  # answered 429 at random, whatever the rate
    retry_after_s: float | None = 1.0  # None: 429s carry no Retry-After
    timeout_rate: float = 0.0  # started, but answered only after hang_s
    hang_s: float = 30.0
    clock_offset_s: float = 0.0  # the API's clock minus ours: tokens are checked on its clock
    require_live: bool = False  # a start of a room with no live session: 400 NOT_LIVE
    live_after_s: float | None = None  # a room goes live this long after its first start
    max_recordings: int | None = None  # a start while this many record: 400 RECORDING_LIMIT
    webhook_url: str | None = None  # for events of a start without webhookUrl, and sessions'
    webhook_delay_s: float = 0.0  # each webhook leaves this long after its event
    webhook_drop_rate: float = 0.0  # fraction of webhooks never sent
    webhook_duplicate_rate: float = 0.0  # fraction of webhooks sent twice
    webhook_reorder: bool = False  # a recording's events held until it ends, then shuffled
    webhook_max_attempts: int = 4  # tries of a webhook answered 429/5xx or not at all
    webhook_retry_backoff_s: float = 0.5  # before the 2nd attempt; doubled for each further one
    public_key_format: str = "json"  # /v2/public/rsa-public-key: {publicKey}, {data}, PEM text

    def update(self, changes: dict[str, Any]) -> None:
        """Set fields by name; ValueError (and nothing set) for a bad name or value."""
        names = {f.name for f in fields(Faults)}
        for name, value in changes.items():
            if name not in names:
                raise ValueError(f"unknown fault {name!r}")
            if not _valid(name, value):
                raise ValueError(f"bad value for {name}: {value!r}")
        for name, value in changes.items():
            setattr(self, name, value)


def _valid(name: str, value: object) -> bool:
    if value is None:
        return name in _NULLABLE
    if name in _BOOLS:
        return isinstance(value, bool)
    if name in _TEXTS:
        return isinstance(value, str) and bool(value)
    if name in _CHOICES:
        return value in _CHOICES[name]
    if name in _FRACTIONS:
        return _is_number(value) and isinstance(value, int | float) and value <= 1
    if name == "webhook_max_attempts":
        return _is_number(value, whole=True) and isinstance(value, int) and value >= 1
    return _is_number(value, whole=name in _COUNTS, signed=name not in _NOT_NEGATIVE)


def _is_number(value: object, *, whole: bool = False, signed: bool = False) -> bool:
    """A number (never a bool), whole if asked, not negative unless ``signed``."""
    if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
        return False
    return signed or value >= 0


class Processing:
    """The account's "previous recording session is being processed" refusal; not thread-safe.

    On from ``refuse()`` until ``duration_s`` has passed or ``count`` starts were refused,
    whichever comes first (a bound not given never ends it; a zero turns it off).
    """

    def __init__(self) -> None:
        self._until_s = -math.inf  # time.monotonic() seconds
        self._left: float = 0  # starts still to refuse; inf: no count bound

    def refuse(self, *, duration_s: float | None, count: int | None, now_s: float) -> None:
        """Refuse starts from ``now_s`` (monotonic) on; ValueError (nothing set) for bad bounds."""
        if duration_s is None and count is None:
            raise ValueError("processing takes duration_s or count (0 turns it off)")
        if duration_s is not None and not _is_number(duration_s):
            raise ValueError(f"bad value for duration_s: {duration_s!r}")
        if count is not None and not _is_number(count, whole=True):
            raise ValueError(f"bad value for count: {count!r}")
        self._until_s = now_s + (math.inf if duration_s is None else duration_s)
        self._left = math.inf if count is None else count

    def take(self, now_s: float) -> bool:
        """True when a start at ``now_s`` is refused (using up one of its ``count``)."""
        if now_s >= self._until_s or self._left <= 0:
            return False
        self._left -= 1
        return True

    def state(self, now_s: float) -> dict[str, float | int | None]:
        """JSON-ready: ``remaining_s`` and ``count`` left (None: no such bound), 0s when off."""
        if now_s >= self._until_s or self._left <= 0:
            return {"remaining_s": 0.0, "count": 0}
        remaining_s = self._until_s - now_s
        return {
            "remaining_s": None if math.isinf(remaining_s) else round(remaining_s, 3),
            "count": None if math.isinf(self._left) else int(self._left),
        }


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
