"""Start windows: until when a job may try to start its recording, and how it waits meanwhile.

VideoSDK starts a recording only while the room has a live session (its server SDK: start and
stop "require a live session"); a start before the host joins is refused. A job may make start
attempts from its *due time* (``run_at``, a schedule's firing time, or its creation) until its
*deadline*, due time + ``start_window_s``::

    due (09:00)                                          deadline (09:10)
      |---- not live: tried again every 2, 4, 8 .. 30 s ---|
      |        host joins (09:03) -> next try starts it    |-> no live session yet: ``expired``
      ^ a job reaching a worker after the deadline (an outage, a backlog): ``expired``, no call

While the window is open, three refusals are waited out in Redis (the job is ``retrying``, its
lease and worker slot given up) without using up ``RECORDER_MAX_ATTEMPTS``: the room is not live
yet (``not_live``), the account's previous recording is still being processed
(``session_processing``: a short wait) and the organisation's recording limit is reached
(``recording_limit``: a long backoff, other recordings end meanwhile). The waits are capped at
the deadline; the claim after it finds the window closed and ends the job ``expired``.
"""

from __future__ import annotations

import math
import random
from typing import Any

from tasks.errors import ValidationError
from tasks.job import Job, whole

#: a window may be as long as a job record lives (``RECORDER_JOB_TTL``); this is the hard cap.
START_WINDOW_MAX_S = 366 * 24 * 3600.0
#: phrases of a "no live session" refusal (case-insensitive substrings; the contract's list).
NOT_LIVE_PATTERNS = (
    "no active session",
    "session not found",
    "meeting not started",
    "no live session",
    "not live",
)
#: (first wait, longest wait) in seconds, by refusal: doubled per refusal in between, with
#: "equal jitter" (half kept, half random) so rooms refused together spread out.
WAITS_S = {
    "not_live": (2.0, 30.0),
    "session_processing": (3.0, 10.0),
    "recording_limit": (15.0, 120.0),
}
#: the claim that ends a job whose window closed comes this long after the deadline, seconds.
CLOSE_MARGIN_S = 0.05
#: no attempt begins this close to the deadline, seconds: minting the token and sending take
#: a few ms on a busy CPU, and no call may reach the API after the window (the claim script too)
SEND_MARGIN_S = 0.1
#: refusals that are waited out inside the window (see the module docstring).
WINDOW_REFUSALS = frozenset(WAITS_S)


def check_start_window(value: object) -> float | None:
    """``start_window_s`` as seconds (None stays None); raises ValidationError naming it."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValidationError("start_window_s", "must be a positive number of seconds")
    if value > START_WINDOW_MAX_S:
        raise ValidationError("start_window_s", f"must be at most {START_WINDOW_MAX_S:.0f}s")
    return float(value)


def window_fields(due_s: float, window_s: float) -> dict[str, Any]:
    """The record fields of a window opening at ``due_s`` (epoch s): ``start_window_s`` and
    ``_deadline`` (ms; ``Job.start_deadline`` is read from it)."""
    window_s = float(window_s)
    return {
        "start_window_s": whole(window_s),
        "_deadline": int((due_s + window_s) * 1000),
    }


def deadline_s(job: Job) -> float | None:
    """The job's deadline as epoch seconds, or None for a record made before windows existed."""
    deadline_ms = job.extra.get("_deadline")
    return None if deadline_ms is None else float(deadline_ms) / 1000


def wait_s(
    error_type: str, refusals: int, *, now_s: float, deadline_s: float, rng: random.Random
) -> float:
    """Seconds until the next try after the ``refusals``-th refusal (1-based) of this type.

    Never much past the deadline: the try just after it is the claim that ends the job
    ``expired`` (it makes no call).
    """
    first_s, longest_s = WAITS_S[error_type]
    step: float = min(longest_s, first_s * 2.0 ** max(refusals - 1, 0))
    wait = step / 2 + rng.uniform(0, step / 2)
    return max(0.0, min(wait, deadline_s - now_s + CLOSE_MARGIN_S))


def expired_message(job: Job, *, now_s: float) -> str:
    """Why the job ``expired``: the room never went live, a refusal lasted, or it came too late."""
    window = _window_text(job.start_window_s, job.start_deadline)
    last = (job.error or {}).get("type")
    if last == "not_live":
        return f"the room never went live within its {window}; no call after it"
    if last == "recording_limit":
        return f"the organisation's recording limit was still reached at the end of its {window}"
    if last == "session_processing":
        return (
            f"the previous recording session was still being processed at the end of its {window}"
        )
    if job.attempts == 0:
        late_s = now_s - (deadline_s(job) or now_s)
        return too_late_message(job.start_window_s, job.start_deadline, late_s)
    return f"its {window} closed before an attempt succeeded (last error: {last or 'none'})"


def too_late_message(
    window_s: float | None, deadline: str | None, late_s: float, *, event: str = "reached a worker"
) -> str:
    """Why a job that made no call ``expired``: it ``event`` ``late_s`` after its window closed.

    ``event`` is e.g. "reached a worker" (a backlog, an outage), "was enqueued", or "was fired
    by its schedule" (beat was down during the slot).
    """
    window = _window_text(window_s, deadline)
    return f"the job {event} {late_s:.0f}s after its {window} closed; no call was made"


def _window_text(window_s: float | None, deadline: str | None) -> str:
    return f"start window of {window_s or 0:g}s (until {deadline or '?'})"
