"""Runner: one delivery of a job, from claiming it to recording its outcome. No Celery here.

A delivery:
1. claims the job (a lease in Redis): a finished, cancelled, not-yet-due or leased job is left
   alone, so a redelivered message never calls the API for a job that already succeeded;
2. takes a slot from the global rate limiter, waiting in place only for short waits;
3. marks an attempt ``running`` *before* calling (write-ahead), so a worker killed mid-call
   leaves a record saying the outcome is unknown;
4. calls the API once per attempt, under a tenacity loop (:mod:`tasks.delivery.attempts`) that
   hands any wait longer than ``inline_wait_max_s`` back (the job waits in the store's due
   set, not in a worker slot);
5. records ``succeeded``, ``failed`` or ``retrying``, and returns what it did
   (:class:`Delivered`); the caller (the Celery task) acks the message afterwards.

An "already recording" refusal of a start (a "not recording" refusal of a stop) means success
when an earlier attempt of this job may have done it (a timeout, a 5xx, a worker lost mid-call),
and failure otherwise. A refusal that is waited out in the start window ("not live yet", the
account's limits) defers the job without using up its attempts; once the window has closed no
call is made and the job ends ``expired`` (:mod:`tasks.window`).
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from typing import Any

from tasks import window
from tasks.delivery.attempts import Attempts
from tasks.delivery.leases import Claimer, LeaseLost, lease_token
from tasks.delivery.outcomes import STARTABLE, Outcomes
from tasks.delivery.slots import MAX_INLINE_LIMITER_WAITS, RateSlots
from tasks.delivery.state import (
    Delivered,
    DeliveryState,
    attempts_used,
    log_call,
    log_state,
    logger,
)
from tasks.errors import (
    AlreadyRecording,
    ApiError,
    Deferred,
    InternalError,
    NotRecording,
    TokenRejected,
    WindowClosed,
    WindowRefusal,
)
from tasks.job import Job, Kind, Status, recording_ended
from tasks.store.connections import through_outage
from tasks.store.jobs import JobStore
from tasks.store.ratelimit import RedisRateLimiter
from tasks.videosdk.client import ApiClient, ApiResponse
from tasks.videosdk.tokens import TokenMinter

__all__ = ["Delivered", "Runner"]


class Runner:
    """Runs deliveries of jobs; every collaborator is passed in, none is read from the env.

    Its parts: claiming (:class:`Claimer`), rate slots (:class:`RateSlots`), the retry loop
    (:class:`Attempts`) and outcome writes (:class:`Outcomes`); one attempt is here.
    """

    def __init__(
        self,
        *,
        store: JobStore,
        client: ApiClient,
        limiter: RedisRateLimiter,
        minter: TokenMinter,
        max_attempts: int,
        max_lost_deliveries: int = 3,
        backoff_max_s: float,
        inline_wait_max_s: float,
        lease_s: float,
        reconcile_after_s: float | None = None,
        notify: Callable[[Job], None] | None = None,
        webhook_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.limiter = limiter
        self.minter = minter
        self.max_attempts = max_attempts
        self.max_lost_deliveries = max_lost_deliveries
        self.lease_s = lease_s
        self.rng = rng or random.Random()
        #: ``webhookUrl`` of starts stored without one (``RECORDER_WEBHOOK_URL`` of the worker)
        self.webhook_url = webhook_url
        self._host = socket.gethostname()
        self._claimer = Claimer(
            store=store,
            limiter=limiter,
            lease_s=lease_s,
            max_attempts=max_attempts,
            max_lost_deliveries=max_lost_deliveries,
            host=self._host,
        )
        self._outcomes = Outcomes(
            store=store,
            inline_wait_max_s=inline_wait_max_s,
            reconcile_after_s=reconcile_after_s,
            notify=notify,
        )
        self._slots = RateSlots(
            limiter=limiter,
            outcomes=self._outcomes,
            inline_wait_max_s=inline_wait_max_s,
            sleep=sleep,
        )
        self._attempts = Attempts(
            attempt=self._attempt,
            outcomes=self._outcomes,
            backoff_max_s=backoff_max_s,
            inline_wait_max_s=inline_wait_max_s,
            sleep=sleep,
            rng=self.rng,
        )

    def run(self, job_id: str) -> Delivered:
        """Run one delivery of the job; never raises for an API outcome (see :class:`Delivered`)."""
        token = lease_token(self._host)
        claim = self._claimer.claim(job_id, token)
        if claim.kind == "window_closed" and claim.job is not None:
            return Delivered("expired", self._outcomes.expire_unclaimed(claim.job))
        if claim.kind != "claimed" or claim.job is None:
            logger.info("job %s skipped: %s", job_id, claim.kind, extra={"job_id": job_id})
            return Delivered(f"skipped:{claim.kind}", claim.job)
        job = claim.job
        # in_flight still set means a delivery died during a call whose outcome nobody saw (a
        # claim that began the attempt has already folded that into maybe_started).
        maybe_started = job.maybe_started or (job.in_flight and not claim.began)
        state = DeliveryState(job, token, maybe_started, pre_begun=claim.began)
        if claim.began:
            log_state(state)
            self._outcomes.notify(job)  # the claim made it running
        try:
            return Delivered(self._deliver(state), state.job)
        except Deferred as exc:
            logger.info("job %s deferred %.2fs: %s", job_id, exc.wait_s, exc.reason)
            return Delivered("deferred", state.job)
        except LeaseLost as exc:
            logger.warning("job %s: left alone mid-delivery (%s)", job_id, exc)
            return Delivered("skipped:lease_lost", self.store.get(job_id))

    def _deliver(self, state: DeliveryState) -> str:
        if state.job.lost_deliveries >= self.max_lost_deliveries:
            return self._outcomes.failed(
                state,
                None,
                f"the worker died {state.job.lost_deliveries} times while running this job; "
                "it is not tried again (a poison job?)",
                error_type="worker_lost",
            )
        # an attempt the claim already began is counted in attempts, and still to be made
        remaining = self.max_attempts - attempts_used(state.job) + int(state.pre_begun)
        if remaining <= 0:
            return self._outcomes.failed(state, None, "attempts exhausted before this delivery")
        try:
            response = self._attempts.run(state, remaining)
        except WindowClosed:
            return self._outcomes.expired(state)
        except WindowRefusal as exc:
            return self._wait_in_window(state, exc)
        except (AlreadyRecording, NotRecording) as exc:
            # a start refused as already recording, a stop as not recording: done, if an
            # earlier attempt of this job may have done it, or (a stop) the recording has
            # ended already (the host ended the meeting before a max_duration_s stop)
            if state.maybe_started or self._recording_ended(state.job, exc):
                return self._outcomes.succeeded(state, exc.http_status, exc.response)
            return self._outcomes.failed(state, exc, None)
        except ApiError as exc:
            return self._outcomes.failed(state, exc, None)
        return self._outcomes.succeeded(state, response.http_status, response.body)

    def _recording_ended(self, job: Job, exc: ApiError) -> bool:
        """For a stop refused as not recording: whether the webhooks said the room's recording
        had stopped or failed already (so there is nothing left to stop)."""
        if not isinstance(exc, NotRecording):
            return False
        start = self.store.latest_start(job.room_id)
        return start is not None and recording_ended(start.recording)

    def _wait_in_window(self, state: DeliveryState, exc: WindowRefusal) -> str:
        """Defer the job until its next try inside the window, or fail a record without one."""
        deadline = window.deadline_s(state.job)
        if deadline is None:  # a record made before windows existed: no wait for it
            return self._outcomes.failed(state, exc, None)
        now_s = self.store.clock()
        refusals = int(state.job.extra.get("_refusals", 0)) + 1
        wait = window.wait_s(
            exc.error_type, refusals, now_s=now_s, deadline_s=deadline, rng=self.rng
        )
        self._outcomes.waiting_in_window(state, exc, wait)
        return "deferred"

    # -- one attempt --------------------------------------------------------------------------

    def _attempt(self, state: DeliveryState) -> ApiResponse:
        if state.pre_begun:
            state.pre_begun = False
        else:
            self._begin_attempt(state)
        try:
            try:
                response = self.client.call(state.job.kind, self._body(state.job))
            except ApiError:
                raise
            except Exception as exc:  # not a verdict of the API: an attempt failed on our side
                raise InternalError.wrapping(exc) from exc
        except ApiError as exc:
            state.maybe_started = state.maybe_started or exc.may_have_started
            log_call(state, exc.http_status, exc.latency_s, exc.error_type)
            if isinstance(exc, TokenRejected):
                if state.reminted:
                    exc.retryable = False  # a fresh token refused too: the credentials are wrong
                else:
                    state.reminted = True
                    self.minter.invalidate()
            if exc.error_type == "rate_limited":
                self.limiter.on_rate_limited(exc.retry_after_s)
            raise
        log_call(state, response.http_status, response.latency_s, "ok")
        return response

    def _body(self, job: Job) -> dict[str, Any]:
        """The body to send: the stored request, with the worker's ``webhookUrl`` when a start
        was stored without one (its producer had no ``RECORDER_WEBHOOK_URL``)."""
        if job.kind is Kind.START and self.webhook_url and "webhookUrl" not in job.request:
            return {**job.request, "webhookUrl": self.webhook_url}
        return job.request

    def _begin_attempt(self, state: DeliveryState) -> None:
        """Take a rate slot, then mark the attempt ``running`` before calling (write-ahead).

        Raises WindowClosed, and makes no call, once the job's start window has closed (before
        or while waiting for the slot). The write-ahead is refused while a 429's shared
        cool-down lasts (one may have begun while this delivery waited for its slot): the slot
        is given up, and the next one is waited for in place, or the job deferred.
        """
        for _ in range(MAX_INLINE_LIMITER_WAITS):
            self._check_window(state)
            self._slots.take(state)
            self._check_window(state)
            begun = self.store.update(
                state.job.id,
                {
                    "status": Status.RUNNING.value,
                    "in_flight": True,
                    "maybe_started": state.maybe_started,
                    "next_attempt_at": None,
                    "error": None,
                },
                allowed_from=STARTABLE,
                lease_token=state.token,
                count_attempt=True,
                clear_due=True,
                renew_lease_s=self.lease_s,
                metrics=state.take_pending(),
                unless_cooldown=self.limiter.cooldown_key,
            )
            if begun.reason != "cooldown":
                break
        else:  # a cool-down each time, every one short enough to wait out in place
            self._slots.defer(state, through_outage(self.limiter.peek))
        if not begun.applied or begun.job is None:
            raise LeaseLost(begun.reason)
        before, state.job = state.job, begun.job
        log_state(state)
        self._outcomes.told(before, state.job)

    def _check_window(self, state: DeliveryState) -> None:
        deadline = window.deadline_s(state.job)
        if deadline is not None and self.store.clock() > deadline - window.SEND_MARGIN_S:
            raise WindowClosed(state.job.id)
