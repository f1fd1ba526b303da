"""Acks are Celery's own and late: every message is acked by kombu, never by a script of ours.

Watched with Redis MONITOR, which tells commands run by a Lua script from a client's own.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest
import redis

import tasks
from tasks.sandbox.server import SandboxServer
from tests.conftest import WorkerProcess, finished, wait_for
from worker.publish import publish_job

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]
JOBS = 12


class AckTap:
    """Counts ``ZREM unacked_index`` on one db, by who ran it: ``lua`` or a client (``tcp``)."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.db = self.client.connection_pool.connection_kwargs.get("db", 0)
        self.acks: Counter[str] = Counter()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            self._ready.set()
            while not self._stop.is_set():
                command = monitor.next_command()
                if command["db"] != self.db:
                    continue
                text = command["command"]
                lua = command["client_type"] == "lua"
                if text.startswith("ZREM unacked_index"):
                    self.acks["lua" if lua else "tcp"] += 1

    def close(self) -> None:
        self._stop.set()
        self.client.ping()  # one more command, so the monitor loop wakes up and ends
        self._thread.join(5)
        self.client.close()


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_every_message_is_acked_by_kombu_after_its_outcome_and_never_by_our_scripts(
    start_worker: StartWorker,
    redis_url: str,
    rdb: redis.Redis,
    sandbox: SandboxServer,
    pool: str,
) -> None:
    tap = AckTap(redis_url)
    try:
        start_worker(RECORDER_POOL=pool, RECORDER_CONCURRENCY="2")
        sandbox.script({"status": 400})  # one job fails: a failed task is acked, not redelivered
        ids = [tasks.enqueue_recording(f"room-{i}").id for i in range(JOBS)]
        jobs = wait_for(lambda: finished(ids), timeout_s=30)
        assert Counter(j.status.value for j in jobs) == {"succeeded": JOBS - 1, "failed": 1}
        publish_job(ids[0], "room-0")  # a duplicate message: skipped, acked as usual
        wait_for(lambda: tap.acks["tcp"] >= JOBS + 1, timeout_s=10, what="kombu's acks")
        wait_for(lambda: rdb.hlen("unacked") == 0 and rdb.zcard("unacked_index") == 0)
        assert tap.acks == {"tcp": JOBS + 1}  # none by a script
        assert len(sandbox.calls()) == JOBS  # the failed job was not run again by Celery
    finally:
        tap.close()
