"""Reads: job records by id, newest first from an index, and counted per status.

Index members whose records have expired are skipped (and trimmed before counting); the key
schema is in :mod:`tasks.store`.
"""

from __future__ import annotations

from tasks.job import Job, Status
from tasks.store.keyspace import Keyspace


class Reads(Keyspace):
    """Reads of job records: one, a filtered list, counts per status."""

    def get(self, job_id: str) -> Job | None:
        raw = self.client.get(self.key("job", job_id))
        return Job.from_record(raw) if raw else None

    def list(
        self, *, room_id: str | None = None, status: Status | None = None, limit: int = 50
    ) -> list[Job]:
        """Newest first. With both filters, the room's index is read and filtered by status."""
        if room_id is not None:
            index = self.key("room", room_id)
        elif status is not None:
            index = self.key("status", status.value)
        else:
            index = self.key("jobs")
        jobs: list[Job] = []
        start, page = 0, max(limit, 50)
        while len(jobs) < limit:
            found: list[bytes] = self.client.zrevrange(index, start, start + page - 1)  # type: ignore[assignment]
            ids = [i.decode() for i in found]
            if not ids:
                break
            start += page
            for raw in self.client.mget([self.key("job", i) for i in ids]):
                if raw is None:
                    continue
                job = Job.from_record(raw)
                if status is None or job.status is status:
                    jobs.append(job)
                    if len(jobs) == limit:
                        break
        return jobs

    def counts(self) -> dict[str, int]:
        """Jobs per status, from the status indexes (expired members trimmed first)."""
        cutoff = int((self.clock() - self.ttl_s) * 1000)
        pipe = self.client.pipeline(transaction=False)
        for status in Status:
            pipe.zremrangebyscore(self.key("status", status.value), "-inf", cutoff)
            pipe.zcard(self.key("status", status.value))
        results = pipe.execute()
        return {status.value: int(results[2 * i + 1]) for i, status in enumerate(Status)}
