"""A delivery's last store write acks its broker message; kombu then skips its own ack round trip.

Watched with Redis MONITOR, which tells commands run by a Lua script from a client's own: a
message is acked once, inside the job store's script, unless the delivery ended without a last
write (here a duplicate message of a finished job), which Celery acks as usual.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest
import redis

import tasks
from tasks.producer import publish
from tasks.sandbox import SandboxServer
from tests.conftest import WorkerProcess, finished, wait_for

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
                if command["db"] == self.db and command["command"].startswith("ZREM unacked_index"):
                    self.acks["lua" if command["client_type"] == "lua" else "tcp"] += 1

    def close(self) -> None:
        self._stop.set()
        self.client.ping()  # one more command, so the monitor loop wakes up and ends
        self._thread.join(5)
        self.client.close()


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_the_last_write_acks_the_message_and_kombu_does_not_ack_it_again(
    start_worker: StartWorker,
    redis_url: str,
    rdb: redis.Redis,
    sandbox: SandboxServer,
    pool: str,
) -> None:
    tap = AckTap(redis_url)
    try:
        start_worker(RECORDER_POOL=pool, RECORDER_CONCURRENCY="2")
        sandbox.script({"status": 400})  # one job fails: its last write acks too
        ids = [tasks.enqueue_recording(f"room-{i}").id for i in range(JOBS)]
        jobs = wait_for(lambda: finished(ids), timeout_s=30)
        assert Counter(j.status.value for j in jobs) == {"succeeded": JOBS - 1, "failed": 1}
        publish(ids[0], "room-0")  # a duplicate message: skipped, and acked by Celery
        wait_for(lambda: tap.acks["tcp"] >= 1, timeout_s=10, what="kombu's ack of the duplicate")
        wait_for(lambda: rdb.hlen("unacked") == 0 and rdb.zcard("unacked_index") == 0)
        assert tap.acks == {"lua": JOBS, "tcp": 1}
    finally:
        tap.close()
