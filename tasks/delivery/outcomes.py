"""Outcomes: the store writes that end a step of a delivery, made under its lease.

``retrying`` (the job waits for its next attempt), deferred (the job waits in the store's due
set, lease given up; always so for a refusal waited out in the start window), ``succeeded``,
``failed`` and ``expired``. Each is written through :meth:`Outcomes.apply`,
which rides out a Redis restart (``through_outage``: without that the job would wait for the
sweeper after its lease expired) and raises :class:`LeaseLost` when the job
was cancelled or taken over meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.delivery.leases import LeaseLost
from tasks.delivery.state import DeliveryState, attempts_used, log_expired, log_state, logger
from tasks.errors import ApiError
from tasks.job import Job, Kind, Status, utc_iso
from tasks.notify import changed
from tasks.store.connections import through_outage
from tasks.store.jobs import JobStore
from tasks.window import expired_message

#: statuses a delivery may move to ``running`` from.
STARTABLE = frozenset({Status.QUEUED, Status.RETRYING, Status.RUNNING})


def _retrying_patch(state: DeliveryState, exc: ApiError) -> dict[str, Any]:
    """The change of a job whose attempt ``exc`` ended, to be tried again."""
    return {
        "status": Status.RETRYING.value,
        "in_flight": False,
        "maybe_started": state.maybe_started,
        "http_status": exc.http_status,
        "response": exc.response,
        "error": exc.to_record(),
    }


def _already_applied(job: Job | None, patch: dict[str, Any]) -> bool:
    """A retried write whose first try landed (its reply was lost) finds its own result."""
    return job is not None and "status" in patch and job.status.value == patch["status"]


class Outcomes:
    """Writes the outcomes of deliveries to ``store``.

    A retry wait longer than ``inline_wait_max_s`` is not waited out by a worker: the job is
    deferred instead.
    """

    def __init__(
        self,
        *,
        store: JobStore,
        inline_wait_max_s: float,
        reconcile_after_s: float | None = None,
        notify: Callable[[Job], None] | None = None,
    ) -> None:
        self.store = store
        self.inline_wait_max_s = inline_wait_max_s
        self.reconcile_after_s = reconcile_after_s
        self.notify = notify or (lambda job: None)

    def told(self, before: Job | None, after: Job | None) -> None:
        """Tell the job's ``notify_task`` when its status (or recording's) changed."""
        if after is not None and changed(before, after):
            self.notify(after)

    def retrying(self, state: DeliveryState, exc: ApiError, wait_s: float) -> None:
        """Record that the attempt failed with ``exc`` and the next one comes in ``wait_s``."""
        patch = _retrying_patch(state, exc)
        patch["next_attempt_at"] = utc_iso(self.store.clock() + wait_s)
        if wait_s > self.inline_wait_max_s:
            self.defer(state, wait_s, None, patch)
        else:
            self.apply(state, patch, allowed_from={Status.RUNNING})
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

    def waiting_in_window(self, state: DeliveryState, exc: ApiError, wait_s: float) -> None:
        """Record a refusal that is waited out in the window (``tasks.window``), and defer.

        The call is not counted against ``RECORDER_MAX_ATTEMPTS`` (``_base`` grows with it) and
        the job waits in the due set whatever ``wait_s`` is: never in a worker slot.
        """
        patch = _retrying_patch(state, exc)
        patch["_base"] = int(state.job.extra.get("_base", 0)) + 1
        patch["_refusals"] = int(state.job.extra.get("_refusals", 0)) + 1
        self.defer(state, wait_s, None, patch)
        logger.info(
            "job %s room=%s %s, tried again in %.1fs (window until %s)",
            state.job.id,
            state.job.room_id,
            exc.error_type,
            wait_s,
            state.job.start_deadline,
            extra={
                "job_id": state.job.id,
                "room_id": state.job.room_id,
                "status": "retrying",
                "http_status": exc.http_status,
                "outcome": exc.error_type,
            },
        )

    def expired(self, state: DeliveryState) -> str:
        """End the job ``expired``: its window closed while this delivery held it."""
        message = expired_message(state.job, now_s=self.store.clock())
        patch = {
            "status": Status.EXPIRED.value,
            "in_flight": False,
            "maybe_started": state.maybe_started,
            "error": {"type": "expired", "message": message},
            "next_attempt_at": None,
        }
        word = self._finish(state, patch)
        log_expired(state.job)
        return word

    def expire_unclaimed(self, job: Job) -> Job | None:
        """End ``job`` ``expired``: its window closed before a delivery could claim it.

        No lease is held (the claim found none alive), so the change is made on the status alone.
        """
        message = expired_message(job, now_s=self.store.clock())
        patch = {
            "status": Status.EXPIRED.value,
            "in_flight": False,
            "error": {"type": "expired", "message": message},
            "next_attempt_at": None,
        }
        result = through_outage(
            self.store.update,
            job.id,
            patch,
            allowed_from=STARTABLE | {Status.SCHEDULED},
            clear_due=True,
            release_lease=True,
        )
        if result.job is not None and result.applied:
            log_expired(result.job)
            self.told(job, result.job)
        return result.job

    def defer(
        self,
        state: DeliveryState,
        wait_s: float,
        error: dict[str, str] | None,
        patch: dict[str, Any] | None = None,
    ) -> None:
        """Park the job in the due set for ``wait_s`` and give up the lease (and the slot)."""
        patch = dict(patch or {})
        if error is not None:
            patch["error"] = error
        patch.setdefault("next_attempt_at", utc_iso(self.store.clock() + wait_s))
        self.apply(
            state,
            patch,
            allowed_from=STARTABLE,
            due_at_s=self.store.clock() + wait_s,
            release_lease=True,
        )

    def succeeded(self, state: DeliveryState, http_status: int | None, body: Any) -> str:
        """The job did what it asked; a start with ``max_duration_s`` gets its stop scheduled
        (before this write: a crash in between makes the same stop again, by its key)."""
        patch = {
            "status": Status.SUCCEEDED.value,
            "in_flight": False,
            "maybe_started": state.maybe_started,
            "http_status": http_status,
            "response": body,
            "error": None,
            "next_attempt_at": None,
        }
        if state.job.kind is Kind.START and state.job.max_duration_s:
            patch["stop_job_id"] = self._schedule_stop(state.job)
        word = self._finish(state, patch)
        if self.reconcile_after_s is not None:
            through_outage(
                self.store.schedule_reconcile,
                state.job.id,
                self.store.clock() + self.reconcile_after_s,
            )
        return word

    def _schedule_stop(self, job: Job) -> str:
        """Store the stop ``max_duration_s`` after now; its id (the same one on a replay)."""
        assert job.max_duration_s is not None
        stop, _ = through_outage(
            self.store.create,
            room_id=job.room_id,
            request={"roomId": job.room_id},
            idempotency_key=f"stop-after:{job.id}",
            run_at_s=self.store.clock() + job.max_duration_s,
            fields={"kind": Kind.STOP.value, "notify_task": job.notify_task},
        )
        logger.info(
            "job %s: stop of room %s scheduled in %gs: job %s",
            job.id,
            job.room_id,
            job.max_duration_s,
            stop.id,
            extra={"job_id": job.id, "room_id": job.room_id},
        )
        return stop.id

    def failed(
        self,
        state: DeliveryState,
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
                used = attempts_used(state.job)
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

    def _finish(self, state: DeliveryState, patch: dict[str, Any]) -> str:
        """The last write of a delivery that finished the job."""
        self.apply(
            state,
            patch,
            allowed_from=STARTABLE,
            release_lease=True,
            clear_due=True,
        )
        return str(patch["status"])

    def apply(self, state: DeliveryState, patch: dict[str, Any], **kwargs: Any) -> None:
        """Write a change under our lease, riding out a Redis restart of up to half a minute."""
        args = (state.job.id, patch)
        kwargs.update(lease_token=state.token, metrics=state.take_pending())
        result = through_outage(self.store.update, *args, **kwargs)
        if not result.applied and not _already_applied(result.job, patch):
            raise LeaseLost(result.reason)
        assert result.job is not None
        before, state.job = state.job, result.job
        log_state(state)
        self.told(before, state.job)
