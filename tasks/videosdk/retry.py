"""Retry policy: which failures are retried, and how long to wait, declared once.

The waits come from one pure function, :func:`backoff_s`, so they can be tested without a clock.
The retry loop itself is tenacity's (see ``tasks.delivery.runner``); this module only supplies its
parts.
"""

from __future__ import annotations

import math
import random
from email.utils import parsedate_to_datetime

from tasks.errors import ApiError

#: the first backoff, seconds; it doubles with each attempt up to the cap.
BACKOFF_INITIAL_S = 1.0
BACKOFF_MULTIPLIER = 2.0
#: a server's Retry-After is honoured up to this long, even past ``backoff_max_s``.
RETRY_AFTER_MAX_S = 3600.0


def is_retryable(exc: BaseException) -> bool:
    """Connection errors, timeouts, 429, 5xx and a first 401 are retried; nothing else is."""
    return isinstance(exc, ApiError) and exc.retryable


def backoff_s(
    attempt: int,
    *,
    backoff_max_s: float,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the ``attempt``-th failed call (1-based) of a job.

    Exponential backoff with "equal jitter": half the exponential step is kept and the other
    half is random, so waits never collapse to zero and workers that failed together spread
    out; at most ``backoff_max_s``. A server's Retry-After (as :func:`parse_retry_after` gives
    it) makes the wait longer, never shorter: a 429 always applies back-pressure, so a
    ``Retry-After: 0`` waits the ordinary backoff. It is honoured up to
    :data:`RETRY_AFTER_MAX_S`, past ``backoff_max_s``.
    """
    step = min(backoff_max_s, BACKOFF_INITIAL_S * BACKOFF_MULTIPLIER ** max(attempt - 1, 0))
    wait = step / 2 + (rng or random).uniform(0, step / 2)
    if retry_after_s is not None:
        return max(min(retry_after_s, RETRY_AFTER_MAX_S), wait)
    return wait


def parse_retry_after(value: str | None, *, now_s: float) -> float | None:
    """A Retry-After header (delta-seconds or HTTP-date, RFC 9110 10.2.3) as seconds from now.

    The one parser of the header: every consumer (a job's wait, the shared cool-down, the rate
    halving) takes its value from here. Returns a finite delay in [0, :data:`RETRY_AFTER_MAX_S`]
    (a longer one is cut to an hour, a date in the past is 0), or None, "absent", for anything
    unusable: missing, not a number or an HTTP-date, negative, infinite or NaN. ``now_s`` is
    epoch seconds.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return min(seconds, RETRY_AFTER_MAX_S)
    try:
        when = parsedate_to_datetime(text)
        delay_s = when.timestamp() - now_s
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None or not math.isfinite(delay_s):  # RFC 9110 dates are GMT
        return None
    return min(max(delay_s, 0.0), RETRY_AFTER_MAX_S)
