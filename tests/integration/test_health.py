"""``recorder health`` against real workers: red when the API refuses our key, and when a worker
answers but no longer consumes the queue (celery#10302, #8030), green again once it does."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

import tasks
from tasks.cli import commands as cli
from tests.conftest import ROOT, WorkerProcess, finished, wait_for

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]


def health(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["health", *args])
    out, err = capsys.readouterr()
    return code, (out + err).strip()


def test_health_turns_red_when_the_api_refuses_every_call_as_unauthorized(
    start_worker: StartWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a worker signing its tokens with the wrong secret
    start_worker(VIDEOSDK_SECRET="not-the-secret-the-api-knows-0000")
    assert health(capsys)[0] == 0, "no call yet: nothing to say against the key"
    # When jobs run (each is refused with 401, re-minted once, refused again)
    ids = [tasks.enqueue_recording(f"room-auth-{i}").id for i in range(2)]
    jobs = wait_for(lambda: finished(ids), timeout_s=30)
    assert {j.error["type"] for j in jobs if j.error} == {"unauthorized"}
    # Then health is red, in one line saying why
    code, line = health(capsys)
    assert code == 1 and len(line.splitlines()) == 1
    assert "refused every call" in line and "4 x 401" in line
    assert "VIDEOSDK_API_KEY and VIDEOSDK_SECRET" in line


def control(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "control", *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_health_turns_red_when_a_live_worker_no_longer_consumes_the_queue(
    start_worker: StartWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a healthy worker
    start_worker()
    assert health(capsys) == (0, "ok: redis answers, 1 worker(s) replied")
    # When it stops consuming the queue while still answering (as after celery#10302)
    control("cancel_consumer", "recorder")
    job = tasks.enqueue_recording("room-stuck")
    # Then health is red at once, naming the queue
    code, line = health(capsys)
    assert code == 1 and "1 worker(s) replied, but none consumes queue 'recorder'" in line
    assert tasks.get_job(job.id).status.value == "queued"  # type: ignore[union-attr]
    # and the exporter says the same
    assert cli.main(["metrics"]) == 0
    text = capsys.readouterr().out
    assert 'recorder_workers{state="consuming"} 0.0' in text
    assert 'recorder_workers{state="replying"} 1.0' in text
    # When it consumes again, the waiting job runs and health is green
    control("add_consumer", "recorder")
    wait_for(lambda: tasks.get_job(job.id).finished, timeout_s=20)  # type: ignore[union-attr]
    assert health(capsys)[0] == 0
