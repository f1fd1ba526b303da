"""Retry policy: which failures are retried, and how long to wait, declared once.

The waits come from one pure function, :func:`backoff_s`, so they can be tested without a clock.
The retry loop itself is tenacity's (see ``tasks.delivery.runner``); this module only supplies its
parts.
"""

from __future__ import annotations

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

    A server's Retry-After wins (capped at :data:`RETRY_AFTER_MAX_S`, not at ``backoff_max_s``).
    Otherwise exponential backoff with "equal jitter": half the exponential step is kept and the
    other half is random, so waits never collapse to zero and workers that failed together
    spread out. The result never exceeds ``backoff_max_s``.
    """
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), RETRY_AFTER_MAX_S)
    step = min(backoff_max_s, BACKOFF_INITIAL_S * BACKOFF_MULTIPLIER ** max(attempt - 1, 0))
    return step / 2 + (rng or random).uniform(0, step / 2)


def parse_retry_after(value: str | None, *, now_s: float) -> float | None:
    """A Retry-After header (delta-seconds or HTTP-date, RFC 9110 10.2.3) as seconds from now.

    Returns None for a missing or unparseable value (the caller falls back to backoff) and 0 for
    a date in the past. ``now_s`` is epoch seconds.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if seconds == seconds else None  # NaN is garbage
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means "-0000"
        return None
    return max(when.timestamp() - now_s, 0.0)
