"""Leases: the token a delivery holds a job by, taking the job for it, and losing it.

A delivery claims the job (a lease in Redis) before anything else: a finished, cancelled,
not-yet-due or leased job is left alone, so a redelivered message never calls the API for a job
that already succeeded. A lease whose holder is a dead process on this host is taken over at
once; any other held job is parked until that lease ends.
"""

from __future__ import annotations

import os
import threading
import uuid

from tasks.delivery.state import logger
from tasks.errors import ClaimFailed
from tasks.job import Status
from tasks.store.connections import TRANSIENT_ERRORS, through_outage
from tasks.store.jobs import Claim, JobStore
from tasks.store.ratelimit import RedisRateLimiter

NOT_FINISHED = frozenset({Status.SCHEDULED, Status.QUEUED, Status.RUNNING, Status.RETRYING})


class LeaseLost(Exception):
    """Raised when the job was cancelled or taken over while this delivery held it."""


def lease_token(host: str) -> str:
    """A new delivery's lease token: ``host:pid:thread:random`` (read by :func:`holder_is_dead`)."""
    return f"{host}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"


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


class Claimer:
    """Claims jobs for deliveries on this host (``host``), with the runner's limits."""

    def __init__(
        self,
        *,
        store: JobStore,
        limiter: RedisRateLimiter,
        lease_s: float,
        max_attempts: int,
        max_lost_deliveries: int,
        host: str,
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.max_lost_deliveries = max_lost_deliveries
        self.host = host

    def claim(self, job_id: str, token: str) -> Claim:
        """Claim the job for the delivery holding ``token``, taking over from a dead holder."""
        # When a rate slot is free right now, the claim takes it and begins the first attempt
        # too: one round trip instead of three. A slot that needs a wait is waited for after
        # the claim: a worker killed while waiting must leave a claimed job, which the sweeper
        # finds.
        claim = self._claim(job_id, token)
        if claim.kind == "leased" and holder_is_dead(claim.holder, host=self.host):
            # e.g. a prefork child killed mid-call: its message came straight back, and waiting
            # out its lease would only delay the job
            logger.warning("job %s: taking over from dead holder %s", job_id, claim.holder)
            claim = self._claim(job_id, token, take_over_from=claim.holder)
        if claim.kind == "leased":
            # Another delivery holds the job (or held it and died): look again when its lease ends.
            claim = self._look_again_after(claim)
        return claim

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
        """One claim, retried through a Redis outage (the claim script is idempotent for a
        token: a retry whose first try landed gets the same claim back); raises ClaimFailed."""

        def claim() -> Claim:
            return self.store.claim(
                job_id,
                token=token,
                lease_s=self.lease_s,
                take_over_from=take_over_from,
                rate_step=self.limiter.step(max_wait_s=0),
                max_attempts=self.max_attempts,
                max_lost_deliveries=self.max_lost_deliveries,
            )

        try:
            return through_outage(claim)
        except TRANSIENT_ERRORS as exc:
            raise ClaimFailed(job_id, exc) from exc
