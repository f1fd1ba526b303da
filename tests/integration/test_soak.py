"""A scaled-down soak in CI; the full 1,000-job one is ``tests/benchmarks/soak.py``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tasks.sandbox.server import SandboxServer
from tests.conftest import WorkerProcess
from tests.integration.soak import SOAK_ENV, run_soak

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_soak_every_job_ends_and_no_room_starts_twice_through_faults_and_kills(
    start_worker: Callable[..., WorkerProcess], sandbox: SandboxServer
) -> None:
    result = run_soak(
        n_jobs=200, sandbox=sandbox, start_worker=lambda: start_worker(**SOAK_ENV), timeout_s=120
    )
    assert result.problems == []
    assert sum(result.statuses.values()) == 200
    assert set(result.statuses) <= {"succeeded", "failed"}
    assert (
        result.calls_by_status[429] > 0
        and result.calls_by_status[503] + result.calls_by_status[500] + result.calls_by_status[502]
        > 0
    ), "the faults were injected"
