"""Claims: taking a job's lease for one delivery, and with it, when it can, the first attempt.

A claim is one atomic script (:data:`CLAIM_LUA`): a finished, not-yet-due or leased job is left
alone, and a free rate slot lets the claim begin the first attempt in the same round trip. The
key schema is in :mod:`tasks.store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tasks.job import Job, utc_iso
from tasks.store.connections import own_client
from tasks.store.keyspace import Keyspace
from tasks.store.scripts import CLAIM_LUA


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of taking a job for one delivery."""

    kind: str  # claimed | finished | not_due | leased | window_closed | missing
    job: Job | None
    lease_ttl_s: float = 0.0
    holder: str = ""
    began: bool = False


class Claims(Keyspace):
    """Claims of jobs for deliveries: the lease, and maybe the first attempt."""

    def __init__(self, **keyspace: Any) -> None:
        super().__init__(**keyspace)
        self._claim = self.client.register_script(CLAIM_LUA)

    def claim(
        self,
        job_id: str,
        *,
        token: str,
        lease_s: float,
        take_over_from: str = "",
        rate_step: tuple[Sequence[str], Sequence[Any]] | None = None,
        max_attempts: int = 0,
        max_lost_deliveries: int = 0,
    ) -> Claim:
        """Take the job's lease for one delivery, unless it is finished, not due or leased.

        ``take_over_from`` names a lease holder known to be dead, whose lease may be taken.
        With ``rate_step`` (:meth:`RedisRateLimiter.step`, no wait) the claim also takes a rate
        slot and marks the first attempt ``running`` (see :data:`CLAIM_LUA`), unless no slot is
        free or ``max_attempts`` or ``max_lost_deliveries`` are used up; ``Claim.began`` says
        whether it did.
        """
        now = self.clock()
        rate_keys, rate_args = rate_step or (["-", "-", "-"], [0, 0, 0, 0, "0"])
        result = self._claim(
            client=own_client(self.client),
            keys=[
                self.key("job", job_id),
                self.key("lease", job_id),
                self.key("held"),
                *rate_keys,
            ],
            args=[
                token,
                int(lease_s * 1000),
                int(now * 1000),
                take_over_from,
                job_id,
                "1" if rate_step else "0",
                utc_iso(now),
                self.prefix,
                max_attempts,
                max_lost_deliveries,
                *rate_args,
            ],
        )
        kind = result[0].decode()
        job = Job.from_record(result[1]) if len(result) > 1 else None
        if kind == "claimed":
            return Claim(kind, job, began=bool(int(result[2])))
        if kind != "leased":
            return Claim(kind, job)
        return Claim(kind, job, max(int(result[2]), 0) / 1000, result[3].decode())
