"""State of one delivery: what it did (:class:`Delivered`), what it carries, and its log lines.

Every line a delivery logs goes to the ``tasks.delivery.runner`` logger, whichever module of
:mod:`tasks.delivery` writes it: one structured line per state change (:func:`log_state`) and
one debug line per API call (:func:`log_call`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tasks.job import Job, Status
from tasks.store import metrics

#: the runner's logger, named as it was before the runner was split in modules: log settings,
#: filters and the log tests select a delivery's lines by this name.
logger = logging.getLogger("tasks.delivery.runner")


@dataclass(frozen=True, slots=True)
class Delivered:
    """What one delivery did: ``word`` (succeeded, failed, deferred, skipped:<why>) and the job.

    ``job`` is the record as the delivery left it (None when there is no record).
    """

    word: str
    job: Job | None


@dataclass
class DeliveryState:
    """The job as this delivery last wrote it, its lease token, and what is still to be sent."""

    job: Job
    token: str
    maybe_started: bool
    reminted: bool = False
    #: the claim already began the first attempt (so its write-ahead cost no round trip)
    pre_begun: bool = False
    #: attempts this delivery may make (the retry loop's stop)
    attempt_budget: int = 0
    #: metrics increments not yet written: they travel with the next store write
    pending: dict[str, int] = field(default_factory=dict)
    #: the last call's latency and outcome, for the state-change line that follows it
    last_call: dict[str, Any] = field(default_factory=dict)

    def take_pending(self) -> dict[str, int]:
        pending, self.pending = self.pending, {}
        return pending


def attempts_used(job: Job) -> int:
    """Attempts since the job was last replayed by hand (``_base`` is the count then)."""
    return job.attempts - int(job.extra.get("_base", 0))


def log_state(state: DeliveryState) -> None:
    """One structured line per state change, with the call that led to it, if any.

    A job that ended ``failed`` is a recording that will not happen: its line is a WARNING and
    names the error type (``error_type``) and the HTTP status.
    """
    call = state.last_call
    state.last_call = {}
    failed = state.job.status is Status.FAILED
    error_type = (state.job.error or {}).get("type") if failed else None
    logger.log(
        logging.WARNING if failed else logging.INFO,
        "job %s room=%s status=%s attempts=%d%s%s",
        state.job.id,
        state.job.room_id,
        state.job.status.value,
        state.job.attempts,
        f" http={call['http_status']} latency_ms={call['latency_ms']}" if call else "",
        f" error={error_type} http_status={state.job.http_status}" if failed else "",
        extra={
            "job_id": state.job.id,
            "room_id": state.job.room_id,
            "status": state.job.status.value,
            "attempt": state.job.attempts,
            "http_status": state.job.http_status,
            **({"error_type": error_type} if failed else {}),
            **call,
        },
    )


def log_call(
    state: DeliveryState, http_status: int | None, latency_s: float | None, outcome: str
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


def log_expired(job: Job) -> None:
    """An ``expired`` job is a recording that will not happen: logged at ERROR with the room."""
    error = job.error or {}
    logger.error(
        "job %s room=%s expired: %s",
        job.id,
        job.room_id,
        error.get("message", ""),
        extra={
            "job_id": job.id,
            "room_id": job.room_id,
            "status": job.status.value,
            "attempt": job.attempts,
            "http_status": job.http_status,
            "outcome": "expired",
            "error_type": "expired",
        },
    )
