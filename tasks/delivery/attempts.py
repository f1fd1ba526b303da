"""Attempts: one delivery's tries of a call under tenacity, one controller for every delivery.

The runner makes each try (:meth:`tasks.delivery.runner.Runner._attempt`); this module decides
around it, through tenacity's hooks: which errors are tried again
(:func:`tasks.videosdk.retry.is_retryable`), how long to wait first
(:func:`tasks.videosdk.retry.backoff_s`, at once after a re-minted token), the ``retrying``
record before each wait, and a wait longer than a worker slot may be held handed back as
:class:`~tasks.errors.Deferred` (the job then waits in the store's due set).

One ``tenacity.Retrying`` serves every delivery of a runner, each thread's run kept apart by
tenacity's own thread-local state: a controller per delivery is a reference cycle (its
``threading.local``, and callbacks holding the delivery) that only the garbage collector frees,
~20 objects a job, whose collections stopped a 200/s worker for 40-60 ms. Safe because a
delivery never runs another inside its attempt (no re-entry).
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception

from tasks.delivery.outcomes import Outcomes
from tasks.delivery.state import DeliveryState, attempts_used
from tasks.errors import ApiError, Deferred, TokenRejected
from tasks.videosdk.client import ApiResponse
from tasks.videosdk.retry import backoff_s, is_retryable


class Attempts:
    """Runs ``attempt(state)`` until it returns, or raises what ends the delivery."""

    def __init__(
        self,
        *,
        attempt: Callable[[DeliveryState], ApiResponse],
        outcomes: Outcomes,
        backoff_max_s: float,
        inline_wait_max_s: float,
        sleep: Callable[[float], None],
        rng: random.Random,
    ) -> None:
        self.attempt = attempt
        self.outcomes = outcomes
        self.backoff_max_s = backoff_max_s
        self.inline_wait_max_s = inline_wait_max_s
        self.sleep = sleep
        self.rng = rng
        self._retrying = Retrying(
            stop=self._out_of_attempts,
            retry=retry_if_exception(is_retryable),
            wait=self._wait_s,
            sleep=self._sleep_or_defer,
            before_sleep=self._record_retrying,
            reraise=True,
        )

    def run(self, state: DeliveryState, budget: int) -> ApiResponse:
        """At most ``budget`` attempts; the last one's error is raised as it is (``Deferred`` for
        a wait handed back, or whatever an attempt raised that is not tried again).

        An exception that ends them holds in its traceback the controller's frame, which holds
        the run's state, which holds the exception: a cycle only the garbage collector would
        free. Its frames' locals are cleared (``traceback.clear_frames``) so that it goes with
        its last reference instead.
        """
        state.attempt_budget = budget
        try:
            return self._retrying(self.attempt, state)
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)
            raise

    # -- tenacity's hooks: each gets the run's state, whose ``args`` are ``(delivery state,)`` --

    @staticmethod
    def _out_of_attempts(rs: RetryCallState) -> bool:
        state: DeliveryState = rs.args[0]
        return rs.attempt_number >= state.attempt_budget

    def _wait_s(self, rs: RetryCallState) -> float:
        state: DeliveryState = rs.args[0]
        exc = rs.outcome.exception() if rs.outcome else None
        if isinstance(exc, TokenRejected):
            return 0.0
        return backoff_s(
            attempts_used(state.job),
            backoff_max_s=self.backoff_max_s,
            retry_after_s=getattr(exc, "retry_after_s", None),
            rng=self.rng,
        )

    def _record_retrying(self, rs: RetryCallState) -> None:
        state: DeliveryState = rs.args[0]
        exc = rs.outcome.exception() if rs.outcome else None
        assert isinstance(exc, ApiError)
        self.outcomes.retrying(state, exc, rs.upcoming_sleep)

    def _sleep_or_defer(self, wait_s: float) -> None:
        if wait_s > self.inline_wait_max_s:
            raise Deferred(wait_s, "backoff longer than a worker slot may be held")
        self.sleep(wait_s)
