"""Runner: one delivery of a job, from claiming it to recording its outcome. No Celery here.

A delivery:
1. claims the job (a lease in Redis): a finished, cancelled, not-yet-due or leased job is left
   alone, so a redelivered message never calls the API for a job that already succeeded;
2. takes a slot from the global rate limiter, waiting in place only for short waits;
3. marks an attempt ``running`` *before* calling (write-ahead), so a worker killed mid-call
   leaves a record saying the outcome is unknown;
4. calls the API once per attempt, under a tenacity loop whose ``sleep`` hands any wait longer
   than ``inline_wait_max_s`` back (the job waits in the store's due set, not in a worker slot);
5. records ``succeeded``, ``failed`` or ``retrying``, and returns what it did
   (:class:`Delivered`); the caller (the Celery task) acks the message afterwards.

An "already recording" refusal means success when an earlier attempt of this job may have
started the recording (a timeout, a 5xx, a worker lost mid-call), and failure otherwise.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from tasks.store import metrics
from tasks.videosdk.client import ApiClient, ApiResponse
from tasks.errors import AlreadyRecording, ApiError, Deferred, TokenRejected
from tasks.job import Job, Status, utc_iso
from tasks.store.ratelimit import Admission, RedisRateLimiter
from tasks.videosdk.retry import backoff_s, is_retryable
from tasks.store.jobs import Claim, JobStore
from tasks.videosdk.tokens import TokenMinter

logger = logging.getLogger(__name__)

#: statuses a delivery may move to ``running`` from.
STARTABLE = frozenset({Status.QUEUED, Status.RETRYING, Status.RUNNING})
NOT_FINISHED = frozenset({Status.SCHEDULED, Status.QUEUED, Status.RUNNING, Status.RETRYING})
#: short cool-downs are waited out in place at most this many times before the job is deferred.
MAX_INLINE_LIMITER_WAITS = 20
#: a thread that wakes later than half an emission interval (and at least this) after its
#: reserved slot asks for a new one instead of calling late.
LATE_WAKE_MIN_S = 0.005


#: store writes that end a step (retrying, deferred, finished) are retried through a Redis
#: restart; without them the job would wait for the sweeper after its lease expired.
STORE_RETRY = Retrying(
    retry=retry_if_exception_type((redis.ConnectionError, redis.TimeoutError)),
    stop=stop_after_delay(30),
    wait=wait_exponential(multiplier=0.1, max=2),
    reraise=True,
)


def holder_is_dead(holder: str, *, host: str) -> bool:
    """True only for a lease token of a process on this host that no longer runs."""
    parts = holder.rsplit(":", 3)
    if len(parts) != 4 or parts[0] != host or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in {"Z", "X"}  # zombie or dead
    except FileNotFoundError:
        return True
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _already_applied(job: Job | None, patch: dict[str, Any]) -> bool:
    """A retried write whose first try landed (its reply was lost) finds its own result."""
    return job is not None and "status" in patch and job.status.value == patch["status"]


@dataclass(frozen=True, slots=True)
class Delivered:
    """What one delivery did: ``word`` (succeeded, failed, deferred, skipped:<why>) and the job.

    ``job`` is the record as the delivery left it (None when there is no record).
    """

    word: str
    job: Job | None


class LeaseLost(Exception):
    """Raised when the job was cancelled or taken over while this delivery held it."""


@dataclass
class _Delivery:
    job: Job
    token: str
    maybe_started: bool
    reminted: bool = False
    #: the claim already began the first attempt (so its write-ahead cost no round trip)
    pre_begun: bool = False
    #: metrics increments not yet written: they travel with the next store write
    pending: dict[str, int] = field(default_factory=dict)
    #: the last call's latency and outcome, for the state-change line that follows it
    last_call: dict[str, Any] = field(default_factory=dict)

    def take_pending(self) -> dict[str, int]:
        pending, self.pending = self.pending, {}
        return pending


class Runner:
    """Runs deliveries of jobs; every collaborator is passed in, none is read from the env."""

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
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.limiter = limiter
        self.minter = minter
        self.max_attempts = max_attempts
        self.max_lost_deliveries = max_lost_deliveries
        self.backoff_max_s = backoff_max_s
        self.inline_wait_max_s = inline_wait_max_s
        self.lease_s = lease_s
        self.sleep = sleep
        self.rng = rng or random.Random()
        self._host = socket.gethostname()

    def run(self, job_id: str) -> Delivered:
        """Run one delivery of the job; never raises for an API outcome (see :class:`Delivered`)."""
        token = f"{self._host}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"
        # When a rate slot is free right now, the claim takes it and begins the first attempt
        # too: one round trip instead of three. A slot that needs a wait is waited for after
        # the claim: a worker killed while waiting must leave a claimed job, which the sweeper
        # finds.
        claim = self._claim(job_id, token)
        if claim.kind == "leased" and holder_is_dead(claim.holder, host=self._host):
            # e.g. a prefork child killed mid-call: its message came straight back, and waiting
            # out its lease would only delay the job
            logger.warning("job %s: taking over from dead holder %s", job_id, claim.holder)
            claim = self._claim(job_id, token, take_over_from=claim.holder)
        if claim.kind == "leased":
            # Another delivery holds the job (or held it and died): look again when its lease ends.
            claim = self._look_again_after(claim)
        if claim.kind != "claimed" or claim.job is None:
            logger.info("job %s skipped: %s", job_id, claim.kind, extra={"job_id": job_id})
            return Delivered(f"skipped:{claim.kind}", claim.job)
        job = claim.job
        # in_flight still set means a delivery died during a call whose outcome nobody saw (a
        # claim that began the attempt has already folded that into maybe_started).
        maybe_started = job.maybe_started or (job.in_flight and not claim.began)
        state = _Delivery(job, token, maybe_started, pre_begun=claim.began)
        if claim.began:
            self._log_state(state)
        try:
            return Delivered(self._deliver(state), state.job)
        except Deferred as exc:
            logger.info("job %s deferred %.2fs: %s", job_id, exc.wait_s, exc.reason)
            return Delivered("deferred", state.job)
        except LeaseLost as exc:
            logger.warning("job %s: left alone mid-delivery (%s)", job_id, exc)
            return Delivered("skipped:lease_lost", self.store.get(job_id))

    def _look_again_after(self, claim: Claim) -> Claim:
        """Park a job another delivery holds until that lease ends; the claim as it stands."""
        assert claim.job is not None
        update = self.store.update(
            claim.job.id,
            {},
            allowed_from=NOT_FINISHED,
            due_at_s=self.store.clock() + claim.lease_ttl_s + 0.25,
        )
        return Claim(claim.kind, update.job or claim.job, claim.lease_ttl_s, claim.holder)

    def _claim(self, job_id: str, token: str, take_over_from: str = "") -> Claim:
        return self.store.claim(
            job_id,
            token=token,
            lease_s=self.lease_s,
            take_over_from=take_over_from,
            rate_step=self.limiter.step(max_wait_s=0),
            max_attempts=self.max_attempts,
            max_lost_deliveries=self.max_lost_deliveries,
        )

    def _deliver(self, state: _Delivery) -> str:
        if state.job.lost_deliveries >= self.max_lost_deliveries:
            return self._finish_failed(
                state,
                None,
                f"the worker died {state.job.lost_deliveries} times while running this job; "
                "it is not tried again (a poison job?)",
                error_type="worker_lost",
            )
        # an attempt the claim already began is counted in attempts, and still to be made
        remaining = self.max_attempts - self._attempts_used(state.job) + int(state.pre_begun)
        if remaining <= 0:
            return self._finish_failed(state, None, "attempts exhausted before this delivery")
        retrying = Retrying(
            stop=stop_after_attempt(remaining),
            retry=retry_if_exception(is_retryable),
            wait=lambda rs: self._wait_s(state, rs),
            sleep=self._sleep_or_defer,
            before_sleep=lambda rs: self._record_retrying(state, rs),
            reraise=True,
        )
        try:
            response = retrying(self._attempt, state)
        except AlreadyRecording as exc:
            if state.maybe_started:
                return self._finish_succeeded(state, exc.http_status, exc.response)
            return self._finish_failed(state, exc, None)
        except ApiError as exc:
            return self._finish_failed(state, exc, None)
        return self._finish_succeeded(state, response.http_status, response.body)

    @staticmethod
    def _attempts_used(job: Job) -> int:
        """Attempts since the job was last replayed by hand (``_base`` is the count then)."""
        return job.attempts - int(job.extra.get("_base", 0))

    # -- one attempt --------------------------------------------------------------------------

    def _attempt(self, state: _Delivery) -> ApiResponse:
        if state.pre_begun:
            state.pre_begun = False
        else:
            self._begin_attempt(state)
        try:
            response = self.client.start_recording(state.job.request)
        except ApiError as exc:
            state.maybe_started = state.maybe_started or exc.may_have_started
            self._log_call(state, exc.http_status, exc.latency_s, exc.error_type)
            if isinstance(exc, TokenRejected):
                if state.reminted:
                    exc.retryable = False  # a fresh token refused too: the credentials are wrong
                else:
                    state.reminted = True
                    self.minter.invalidate()
            if exc.error_type == "rate_limited":
                self.limiter.on_rate_limited(exc.retry_after_s)
            raise
        self._log_call(state, response.http_status, response.latency_s, "ok")
        return response

    def _begin_attempt(self, state: _Delivery) -> None:
        """Take a rate slot, then mark the attempt ``running`` before calling (write-ahead)."""
        self._take_rate_slot(state)
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
        )
        if not begun.applied or begun.job is None:
            raise LeaseLost(begun.reason)
        state.job = begun.job
        self._log_state(state)

    def _take_rate_slot(self, state: _Delivery) -> None:
        """Wait for the global limiter in place if the wait is short; else defer the job."""
        refusal = self._wait_for_slot(state.pending)
        if refusal is None:
            return
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
        self._defer(state, defer_s, {"type": kind, "message": f"waiting: {why}"})
        raise Deferred(defer_s, why)

    def _wait_for_slot(self, pending: dict[str, int]) -> Admission | None:
        """Hold a rate slot, after waiting in place for it if that is short; None when held.

        Returns the limiter's refusal when the wait would be longer than a slot may be held.
        A reserved slot is checked once more after the wait: a 429 may have started a shared
        cool-down meanwhile, and a thread that woke well after its slot (a busy CPU) gives the
        slot up rather than call late, which would crowd the calls of the next second.
        """
        late_s = max(0.5 / self.limiter.rate_per_s, LATE_WAKE_MIN_S)
        for _ in range(MAX_INLINE_LIMITER_WAITS):
            admission = self.limiter.acquire(max_wait_s=self.inline_wait_max_s)
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
            if time.monotonic() - slot_at <= late_s and not self.limiter.peek().cooldown:
                return None
        return admission

    # -- tenacity hooks -----------------------------------------------------------------------

    def _wait_s(self, state: _Delivery, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        if isinstance(exc, TokenRejected):
            return 0.0
        return backoff_s(
            self._attempts_used(state.job),
            backoff_max_s=self.backoff_max_s,
            retry_after_s=getattr(exc, "retry_after_s", None),
            rng=self.rng,
        )

    def _record_retrying(self, state: _Delivery, rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        assert isinstance(exc, ApiError)
        wait_s = rs.upcoming_sleep
        patch = {
            "status": Status.RETRYING.value,
            "in_flight": False,
            "maybe_started": state.maybe_started,
            "http_status": exc.http_status,
            "response": exc.response,
            "error": exc.to_record(),
            "next_attempt_at": utc_iso(self.store.clock() + wait_s),
        }
        if wait_s > self.inline_wait_max_s:
            self._defer(state, wait_s, None, patch)
        else:
            self._apply(state, patch, allowed_from={Status.RUNNING})
        logger.info(
            "job %s retrying in %.2fs after %s",
            state.job.id,
            wait_s,
            exc.error_type,
            extra={
                "job_id": state.job.id,
                "room_id": state.job.room_id,
                "status": "retrying",
                "attempt": state.job.attempts,
                "http_status": exc.http_status,
                "outcome": exc.error_type,
            },
        )

    def _sleep_or_defer(self, wait_s: float) -> None:
        if wait_s > self.inline_wait_max_s:
            raise Deferred(wait_s, "backoff longer than a worker slot may be held")
        self.sleep(wait_s)

    # -- outcomes -----------------------------------------------------------------------------

    def _defer(
        self,
        state: _Delivery,
        wait_s: float,
        error: dict[str, str] | None,
        patch: dict[str, Any] | None = None,
    ) -> None:
        """Park the job in the due set for ``wait_s`` and give up the lease (and the slot)."""
        patch = dict(patch or {})
        if error is not None:
            patch["error"] = error
        patch.setdefault("next_attempt_at", utc_iso(self.store.clock() + wait_s))
        self._apply(
            state,
            patch,
            allowed_from=STARTABLE,
            due_at_s=self.store.clock() + wait_s,
            release_lease=True,
        )

    def _finish_succeeded(self, state: _Delivery, http_status: int | None, body: Any) -> str:
        patch = {
            "status": Status.SUCCEEDED.value,
            "in_flight": False,
            "maybe_started": state.maybe_started,
            "http_status": http_status,
            "response": body,
            "error": None,
            "next_attempt_at": None,
        }
        return self._finish(state, patch)

    def _finish_failed(
        self,
        state: _Delivery,
        exc: ApiError | None,
        note: str | None,
        *,
        error_type: str = "attempts_exhausted",
    ) -> str:
        if exc is None:
            error = {"type": error_type, "message": note or ""}
        else:
            error = exc.to_record()
            if exc.retryable:
                used = self._attempts_used(state.job)
                error["message"] = f"gave up after {used} attempts: {error['message']}"
        patch = {
            "status": Status.FAILED.value,
            "in_flight": False,
            "maybe_started": state.maybe_started,
            "error": error,
            "next_attempt_at": None,
        }
        if exc is not None:
            patch["http_status"] = exc.http_status
            patch["response"] = exc.response
        return self._finish(state, patch)

    def _finish(self, state: _Delivery, patch: dict[str, Any]) -> str:
        """The last write of a delivery that finished the job."""
        self._apply(
            state,
            patch,
            allowed_from=STARTABLE,
            release_lease=True,
            clear_due=True,
        )
        return str(patch["status"])

    def _apply(self, state: _Delivery, patch: dict[str, Any], **kwargs: Any) -> None:
        """Write a change under our lease, riding out a Redis restart of up to half a minute."""
        args = (state.job.id, patch)
        kwargs.update(lease_token=state.token, metrics=state.take_pending())
        try:
            result = self.store.update(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError):  # tenacity only when it is needed
            result = STORE_RETRY(self.store.update, *args, **kwargs)
        if not result.applied and not _already_applied(result.job, patch):
            raise LeaseLost(result.reason)
        assert result.job is not None
        state.job = result.job
        self._log_state(state)

    @staticmethod
    def _log_state(state: _Delivery) -> None:
        """One structured line per state change, with the call that led to it, if any."""
        call = state.last_call
        state.last_call = {}
        logger.info(
            "job %s room=%s status=%s attempts=%d%s",
            state.job.id,
            state.job.room_id,
            state.job.status.value,
            state.job.attempts,
            f" http={call['http_status']} latency_ms={call['latency_ms']}" if call else "",
            extra={
                "job_id": state.job.id,
                "room_id": state.job.room_id,
                "status": state.job.status.value,
                "attempt": state.job.attempts,
                "http_status": state.job.http_status,
                **call,
            },
        )

    def _log_call(
        self, state: _Delivery, http_status: int | None, latency_s: float | None, outcome: str
    ) -> None:
        """Count one API call (sent with the next store write) and log it at debug level.

        The state-change line that always follows carries its status and latency at info.
        """
        metrics.merge(
            state.pending,
            metrics.call_increments(http_status=http_status, outcome=outcome, latency_s=latency_s),
        )
        latency_ms = None if latency_s is None else round(latency_s * 1000, 1)
        state.last_call = {"http_status": http_status, "latency_ms": latency_ms, "outcome": outcome}
        logger.debug(
            "job %s room=%s attempt=%d call http=%s latency_ms=%s outcome=%s",
            state.job.id,
            state.job.room_id,
            state.job.attempts,
            http_status,
            latency_ms,
            outcome,
            extra={
                "job_id": state.job.id,
                "room_id": state.job.room_id,
                "attempt": state.job.attempts,
                **state.last_call,
            },
        )
