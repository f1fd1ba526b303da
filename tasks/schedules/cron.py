"""Fire times of recurring schedules: cron expressions in a time zone (cronsim), fixed intervals.

:class:`ZonedCron` evaluates a five-field expression on the wall clock of an IANA zone with
`cronsim <https://pypi.org/project/cronsim/>`_, which follows Debian cron's rules:

- a schedule whose minute or hour field starts with ``*`` (``* * * * *``, ``*/15 * * * *``,
  ``0 * * * *``, ``0 */2 * * *``) runs on real elapsed time: through a repeated hour (fall back)
  it keeps firing, so ``0 * * * *`` fires hourly and ``*/15`` every 15 minutes of real time, and
  a skipped hour (spring forward) simply has no times;
- any other schedule (``30 2 * * *``) fires once per wall-clock time: a repeated time at its
  first occurrence, a skipped one at the first minute after the change (03:00 CEST for 02:30 on
  2026-03-29 in Europe/Berlin);
- when day-of-month and day-of-week are both restricted (neither starts with ``*``), a day
  matching either fires; otherwise a day must match both.

Names (``MON``, ``jan``), ``7`` for Sunday and cronsim's ``L``, ``LW`` and ``#`` are accepted;
``@daily`` and friends are expanded here. The scheduler uses :meth:`FireTimes.due`; every time in
and out is an aware datetime, returned in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from tasks.errors import ValidationError

EVERY_MIN_S = 1.0
EVERY_MAX_S = 366 * 24 * 3600.0
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS = "minute hour day-of-month month day-of-week"
_SECOND = timedelta(seconds=1)


def zone(name: object) -> ZoneInfo:
    """The IANA time zone ``name``; raises ValidationError naming ``timezone``."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("timezone", "must be an IANA time zone name such as Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: not a key at all, e.g. "../x"
        raise ValidationError("timezone", f"unknown time zone {name!r}") from None


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class FireTimes:
    """Exact fire times of a schedule."""

    def next_after(self, moment: datetime) -> datetime | None:
        """The first fire time strictly after ``moment``, or None if there is none."""
        raise NotImplementedError

    def latest_due(self, after: datetime, now: datetime) -> datetime | None:
        """The latest fire time in ``(after, now]``: the one to fire; None if none is due."""
        raise NotImplementedError

    def due(
        self, after: datetime, now: datetime, first: datetime | None = None
    ) -> tuple[datetime | None, datetime | None]:
        """``(fire_at, next_at)``: :meth:`latest_due`, and the first fire time after it (after
        ``after`` when nothing is due). ``first``, when known, is the first fire time after
        ``after`` (the store keeps it), which spares computing it."""
        fire_at = self.latest_due(after, now)
        return fire_at, self.next_after(fire_at or after)


class Every(FireTimes):
    """Every ``every_s`` seconds on a grid anchored at the last fire (or the creation) time."""

    def __init__(self, every_s: float) -> None:
        self.period = timedelta(seconds=every_s)

    def next_after(self, moment: datetime) -> datetime:
        return utc(moment) + self.period

    def latest_due(self, after: datetime, now: datetime) -> datetime | None:
        after, now = utc(after), utc(now)
        steps = (now - after) // self.period
        return after + steps * self.period if steps >= 1 else None


class ZonedCron(FireTimes):
    """A five-field cron expression evaluated on the wall clock of ``timezone`` by cronsim."""

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        """Raises ValidationError naming ``cron`` or ``timezone``."""
        self.zone = zone(timezone)
        self._text = " ".join(split(expression))
        try:
            CronSim(self._text, datetime.now(self.zone))
        except CronSimError as exc:
            raise ValidationError("cron", f"{expression!r}: {exc}") from None

    def next_after(self, moment: datetime) -> datetime | None:
        try:
            return next(CronSim(self._text, utc(moment).astimezone(self.zone))).astimezone(UTC)
        except StopIteration:  # cronsim looks 50 years ahead
            return None

    def latest_due(self, after: datetime, now: datetime) -> datetime | None:
        return self.due(after, now)[0]

    def due(
        self, after: datetime, now: datetime, first: datetime | None = None
    ) -> tuple[datetime | None, datetime | None]:
        if first is None or first <= utc(after):
            first = self.next_after(after)
        # thousands of schedules share an expression, their next time and beat's ``now``
        return _due_from(self, first, utc(now))

    def _due_from(
        self, first: datetime | None, now: datetime
    ) -> tuple[datetime | None, datetime | None]:
        if first is None or first > now:
            return None, first
        following = self.next_after(first)
        if following is None or following > now:
            return first, following  # the usual case: one time is due
        # missed several (downtime): walk back from now rather than forward through every time
        latest = max(following, self._at_or_before(now) or following)
        # a backward walk can miss the second pass of a repeated hour: step forward past it
        following = self.next_after(latest)
        while following is not None and following <= now:
            latest, following = following, self.next_after(following)
        return latest, following

    def _at_or_before(self, moment: datetime) -> datetime | None:
        # cronsim's backward walk starts one second before a whole-second start
        start = utc(moment).replace(microsecond=0) + _SECOND
        try:
            found = next(CronSim(self._text, start.astimezone(self.zone), reverse=True))
        except StopIteration:
            return None
        return found.astimezone(UTC)


@lru_cache(maxsize=4096)
def _due_from(
    cron: ZonedCron, first: datetime | None, now: datetime
) -> tuple[datetime | None, datetime | None]:
    return cron._due_from(first, now)


@lru_cache(maxsize=4096)
def cached_cron(expression: str, timezone: str) -> ZonedCron:
    """The one :class:`ZonedCron` of an expression in a zone (they hold no state)."""
    return ZonedCron(expression, timezone)


def split(expression: object) -> list[str]:
    """The five fields of a cron expression (``@daily`` and friends expanded)."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValidationError("cron", f"must be a cron expression: {_FIELDS}")
    text = ALIASES.get(expression.strip().lower(), expression)
    fields = text.split()
    if len(fields) != 5:
        raise ValidationError("cron", f"{expression!r} has {len(fields)} fields, not 5 ({_FIELDS})")
    return fields


def parse_cron(expression: object, timezone: object = "UTC") -> ZonedCron:
    """A validated :class:`ZonedCron`; raises ValidationError naming ``cron`` or ``timezone``."""
    cron = ZonedCron(expression, timezone)  # type: ignore[arg-type]
    if cron.next_after(datetime.now(UTC)) is None:
        raise ValidationError("cron", f"{expression!r} never fires")
    return cron


def parse_every(every_s: object) -> Every:
    """A validated :class:`Every`; raises ValidationError naming ``every_s``."""
    if isinstance(every_s, bool) or not isinstance(every_s, int | float):
        raise ValidationError("every_s", "must be a number of seconds")
    if not EVERY_MIN_S <= every_s <= EVERY_MAX_S:
        raise ValidationError(
            "every_s", f"must be from {EVERY_MIN_S:g} to {EVERY_MAX_S:g} seconds, got {every_s!r}"
        )
    return Every(every_s)
