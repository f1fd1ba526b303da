"""Rate slots: a delivery's turn under the global rate limit, waited for in place only if short.

A wait longer than a worker slot may be held defers the job (it waits in the store's due set,
not in a worker), coming back while the rest of the wait can still be taken in place. The
limiter's calls ride out a Redis outage like the store's writes (a slot reserved twice by a
retried call only leaves one unused).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tasks.delivery.outcomes import Outcomes
from tasks.delivery.state import DeliveryState
from tasks.errors import Deferred
from tasks.store import metrics
from tasks.store.connections import through_outage
from tasks.store.ratelimit import Admission, RedisRateLimiter

#: short cool-downs are waited out in place at most this many times before the job is deferred.
MAX_INLINE_LIMITER_WAITS = 20
#: a thread that wakes later than half an emission interval (and at least this) after its
#: reserved slot asks for a new one instead of calling late. 10 ms at 200/s is two intervals,
#: within the limiter's margin (``RATE_MARGIN``: three calls a second at 200/s). Measured in
#: ``tests/benchmarks/herd.py``: a worker's threads wake 5-10 ms late for the GIL dozens of
#: times in a 10,000-job herd, and each slot given up is one no call uses; at 5 ms the last
#: call came about 0.2 s later, and no second was less busy.
LATE_WAKE_MIN_S = 0.010


class RateSlots:
    """Takes slots from ``limiter``, waiting at most ``inline_wait_max_s`` (with ``sleep``)."""

    def __init__(
        self,
        *,
        limiter: RedisRateLimiter,
        outcomes: Outcomes,
        inline_wait_max_s: float,
        sleep: Callable[[float], None],
    ) -> None:
        self.limiter = limiter
        self.outcomes = outcomes
        self.inline_wait_max_s = inline_wait_max_s
        self.sleep = sleep

    def take(self, state: DeliveryState) -> None:
        """Wait for the global limiter in place if the wait is short; else defer the job."""
        refusal = self.wait(state.pending)
        if refusal is not None:
            self.defer(state, refusal)

    def defer(self, state: DeliveryState, refusal: Admission) -> None:
        """Defer the job for the limiter's ``refusal`` (a saturated limit or a cool-down); raises
        Deferred."""
        kind = "rate_limit_cooldown" if refusal.cooldown else "rate_limit_wait"
        why = (
            "the API asked every worker to pause (429 Retry-After)"
            if refusal.cooldown
            else f"the global rate limit ({self.limiter.rate_per_s:g}/s) is saturated"
        )
        # come back while the rest of the wait can still be taken in place, so no slot idles
        # while the job travels through the dispatcher
        defer_s = max(refusal.wait_s - self.inline_wait_max_s / 2, 0.0)
        metrics.merge(state.pending, metrics.wait_increments(kind="deferred", wait_s=defer_s))
        self.outcomes.defer(state, defer_s, {"type": kind, "message": f"waiting: {why}"})
        raise Deferred(defer_s, why)

    def wait(self, pending: dict[str, int]) -> Admission | None:
        """Hold a rate slot, after waiting in place for it if that is short; None when held.

        Returns the limiter's refusal when the wait would be longer than a slot may be held.
        A thread that woke well after its reserved slot (a busy CPU) gives the slot up rather
        than call late, which would crowd the calls of the next second. A 429's shared cool-down
        begun during the wait is not looked for here: the attempt's write-ahead refuses to
        begin during one (``JobStore.update(unless_cooldown=...)``, in the same round trip).
        """
        late_s = max(0.5 / self.limiter.rate_per_s, LATE_WAKE_MIN_S)
        for _ in range(MAX_INLINE_LIMITER_WAITS):
            admission = through_outage(self.limiter.acquire, max_wait_s=self.inline_wait_max_s)
            if admission.reserved and admission.wait_s <= 0:
                return None
            if not admission.reserved and not (
                admission.cooldown and admission.wait_s <= self.inline_wait_max_s
            ):
                return admission
            metrics.merge(pending, metrics.wait_increments(kind="inline", wait_s=admission.wait_s))
            slot_at = time.monotonic() + admission.wait_s
            self.sleep(admission.wait_s)
            if not admission.reserved:
                continue  # a short shared cool-down has passed: ask again
            if time.monotonic() - slot_at <= late_s:
                return None
        return admission
