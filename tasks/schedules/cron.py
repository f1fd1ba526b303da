"""Fire times of recurring schedules: cron expressions in a time zone, and fixed intervals.

Celery's ``crontab`` evaluates in the app's one time zone. :class:`ZonedCron` keeps Celery's
parser (so a field means what it means in Celery, names such as ``MON`` or ``jan`` included) but
evaluates the expression on the wall clock of an IANA zone, with :mod:`zoneinfo`, the way cron
does:

- a wall-clock time that does not exist (spring forward: 02:30 on 2026-03-29 in Europe/Berlin)
  fires at the same offset after the change (03:30 CEST), so it is late rather than skipped;
- a wall-clock time that occurs twice (fall back) fires once, at its first occurrence;
- when day-of-month and day-of-week are both restricted (neither starts with ``*``), a day
  matching either fires; otherwise a day must match both (cron's rule).

Both classes are Celery schedules, so celery-redbeat can store them (a ZonedCron as its crontab
fields, an :class:`Every` as an interval; the zone is kept beside it, see
``tasks.schedules.store``).
The scheduler fires by two exact methods, :meth:`FireTimes.next_after` and
:meth:`FireTimes.latest_due`; every time in and out is an aware datetime, returned in UTC.
"""

from __future__ import annotations

import bisect
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import ParseException, crontab, schedstate, schedule

from tasks.errors import ValidationError

#: days searched for a matching day: 8 years covers "29 February" across a skipped leap year.
HORIZON_DAYS = 8 * 366 + 2
EVERY_MIN_S = 1.0
EVERY_MAX_S = 366 * 24 * 3600.0
#: how long beat may sleep when a schedule has no next fire time at all.
NEVER_S = 3600.0
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
    """Exact fire times, and Celery's ``is_due``/``remaining_estimate`` derived from them."""

    def next_after(self, moment: datetime) -> datetime | None:
        """The first fire time strictly after ``moment``, or None if there is none."""
        raise NotImplementedError

    def latest_due(self, after: datetime, now: datetime) -> datetime | None:
        """The latest fire time in ``(after, now]``: the one to fire; None if none is due."""
        raise NotImplementedError

    def now(self) -> datetime:
        nowfun = getattr(self, "nowfun", None)  # Celery's hook, used by tests
        return utc(nowfun()) if nowfun else datetime.now(UTC)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta | None:
        following = self.next_after(last_run_at)
        return None if following is None else following - self.now()

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Due when a fire time has passed since ``last_run_at``; ``next`` in seconds."""
        now = self.now()
        due = self.latest_due(last_run_at, now)
        following = self.next_after(due or last_run_at)
        wait_s = NEVER_S if following is None else (following - now).total_seconds()
        return schedstate(is_due=due is not None, next=max(wait_s, 0.0))


class Every(FireTimes, schedule):  # type: ignore[misc]
    """Every ``every_s`` seconds on a grid anchored at the last fire (or the creation) time."""

    def __init__(self, every_s: float, **kwargs: Any) -> None:
        super().__init__(run_every=timedelta(seconds=every_s), **kwargs)
        self.every_s = every_s
        self.period = timedelta(seconds=every_s)

    def next_after(self, moment: datetime) -> datetime:
        return utc(moment) + self.period

    def latest_due(self, after: datetime, now: datetime) -> datetime | None:
        after, now = utc(after), utc(now)
        steps = (now - after) // self.period
        return after + steps * self.period if steps >= 1 else None


class ZonedCron(FireTimes, crontab):  # type: ignore[misc]
    """A five-field cron expression evaluated on the wall clock of ``timezone``."""

    def __init__(self, expression: str, timezone: str = "UTC", **kwargs: Any) -> None:
        fields = split(expression)
        try:
            super().__init__(
                minute=fields[0],
                hour=fields[1],
                day_of_month=fields[2],
                month_of_year=fields[3],
                day_of_week=_sunday_as_zero(fields[4]),
                **kwargs,
            )
        except (ValueError, ParseException) as exc:
            raise ValidationError("cron", f"{expression!r}: {exc}") from None
        self.expression = expression
        self.timezone = timezone
        self.zone = zone(timezone)
        self._either_day = not fields[2].startswith("*") and not fields[4].startswith("*")
        self._times_on = lru_cache(maxsize=32)(self._compute_times_on)

    def next_after(self, moment: datetime) -> datetime | None:
        moment = utc(moment)
        first = moment.astimezone(self.zone).date() - timedelta(days=1)
        found: datetime | None = None
        for offset in range(HORIZON_DAYS):
            times = self._times_on(first + timedelta(days=offset))
            index = bisect.bisect_right(times, moment)
            if index < len(times):
                # a gap near midnight can push a day's time past the next day's first: look
                # at one more day before answering
                if found is not None:
                    return min(found, times[index])
                found = times[index]
            elif found is not None:
                return found
        return found

    def latest_due(self, after: datetime, now: datetime) -> datetime | None:
        after, now = utc(after), utc(now)
        if now <= after:
            return None
        day = now.astimezone(self.zone).date() + timedelta(days=1)
        stop = after.astimezone(self.zone).date() - timedelta(days=1)
        found: datetime | None = None
        for _ in range(HORIZON_DAYS):
            if day < stop:
                break
            times = self._times_on(day)
            index = bisect.bisect_right(times, now)
            if index and times[index - 1] > after:
                if found is not None:
                    return max(found, times[index - 1])
                found = times[index - 1]
            elif found is not None:
                return found
            day -= timedelta(days=1)
        return found

    def _compute_times_on(self, day: date) -> list[datetime]:
        """The day's fire times in UTC, sorted (a time in a DST gap maps past the gap)."""
        if day.month not in self.month_of_year:
            return []
        by_date = day.day in self.day_of_month
        by_weekday = (day.weekday() + 1) % 7 in self.day_of_week  # cron: 0 is Sunday
        matches = (by_date or by_weekday) if self._either_day else (by_date and by_weekday)
        if not matches:
            return []
        return sorted(
            {
                datetime(day.year, day.month, day.day, hour, minute, tzinfo=self.zone).astimezone(
                    UTC
                )
                for hour in self.hour
                for minute in self.minute
            }
        )


def split(expression: object) -> list[str]:
    """The five fields of a cron expression (``@daily`` and friends expanded)."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValidationError("cron", f"must be a cron expression: {_FIELDS}")
    text = ALIASES.get(expression.strip().lower(), expression)
    fields = text.split()
    if len(fields) != 5:
        raise ValidationError("cron", f"{expression!r} has {len(fields)} fields, not 5 ({_FIELDS})")
    return fields


def _sunday_as_zero(field: str) -> str:
    """Cron allows 7 for Sunday; Celery's parser knows only 0-6."""
    parts = []
    for part in field.split(","):
        if part == "7":
            part = "0"
        elif part.endswith("-7") and "/" not in part:
            part = f"{part[:-2]}-6,0"
        parts.append(part)
    return ",".join(parts)


def parse_cron(expression: object, timezone: object = "UTC") -> ZonedCron:
    """A validated :class:`ZonedCron`; raises ValidationError naming ``cron`` or ``timezone``."""
    zone(timezone)
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
