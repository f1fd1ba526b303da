"""The soak scaled down for CI, once per pool; the full one is ``tests/benchmarks/soak.py``.

150 jobs on a private Redis (AOF on) through 10% 5xx, 5% 429 (``Retry-After: 1``) and 0-50 ms
of latency; of two workers, one SIGKILLed with its whole process group at a third of the rooms
started and the other at a half, each replaced; Redis restarted (SIGTERM) at two thirds. Every
job must be final within 75 s, no room started twice, no call after a job finished, and no
worker down but the two killed on purpose (see ``tests/integration/soak.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tasks.sandbox.server import SandboxServer
from tests.conftest import RedisServer, WorkerProcess
from tests.integration.soak import POOLS, run_soak

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = 150
FINAL_WITHIN_S = 75.0


@pytest.mark.timeout(150)
@pytest.mark.parametrize("pool", POOLS)
def test_soak_no_job_stuck_no_room_twice_no_worker_down_through_kills_and_a_redis_restart(
    pool: str,
    on_private_redis: RedisServer,
    start_worker: Callable[..., WorkerProcess],
    sandbox: SandboxServer,
) -> None:
    private_redis = on_private_redis
    result = run_soak(
        n_jobs=JOBS,
        pool=pool,
        sandbox=sandbox,
        redis_server=private_redis,
        start_worker=lambda **env: start_worker(REDIS_URL=private_redis.url, **env),
        final_within_s=FINAL_WITHIN_S,
    )
    print(result.line())
    assert result.problems == []
    assert result.final == JOBS and not result.stuck
    assert set(result.statuses) <= {"succeeded", "failed"}
    assert result.kills == 2 and len(result.faults) == 3
    assert result.calls_by_status[429] > 0, "429s were injected"
    assert sum(result.calls_by_status[s] for s in (500, 502, 503)) > 0, "5xx were injected"
