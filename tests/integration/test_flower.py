"""Flower against a real worker: every job shown from enqueue on, behind basic auth, no secret.

``celery -A worker flower`` runs with no flags beyond a port and address; basic auth comes from
Flower's own ``FLOWER_BASIC_AUTH`` variable, as in docker-compose.yml.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

import tasks
from tasks.logs import JWT
from tasks.sandbox.server import SandboxServer
from tests.conftest import (
    ROOT,
    SECRET,
    CeleryProcess,
    RedisServer,
    WorkerProcess,
    finished,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]
USER, PASSWORD = "ops", "flower-pw-3c9e1f"
HTTP_TIMEOUT_S = 5.0


class FlowerProcess(CeleryProcess):
    """A real ``celery -A worker flower`` subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # only the variables given here configure Flower: none inherited from the caller
        base = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
        args = (f"--port={self.port}", "--address=127.0.0.1")
        super().__init__("flower", env, log_path, *args, inherited=base)

    def get(self, path: str, *, auth: tuple[str, str] | None = (USER, PASSWORD)) -> Any:
        return requests.get(f"{self.url}{path}", auth=auth, timeout=HTTP_TIMEOUT_S)

    def wait_ready(self, timeout_s: float = 45.0) -> FlowerProcess:
        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"flower exited {self.proc.returncode}:\n{self.log()}")
            try:
                return self.get("/healthcheck", auth=None).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(answers, timeout_s=timeout_s, interval_s=0.2)
        return self


def compose_flower_env() -> dict[str, str]:
    """The literal FLOWER_* settings docker-compose.yml gives Flower (not the ${...} ones)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    env = compose["services"]["flower"]["environment"]
    return {k: str(v) for k, v in env.items() if k.startswith("FLOWER_") and "${" not in str(v)}


@pytest.fixture
def flower(recorder_env: dict[str, str], tmp_path: Path) -> Iterator[FlowerProcess]:
    env = {**recorder_env, **compose_flower_env(), "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    process = FlowerProcess(env, tmp_path / "flower.log")
    try:
        yield process.wait_ready()
    finally:
        process.stop()


def task_info(flower: FlowerProcess, task_id: str) -> dict[str, Any] | None:
    resp = flower.get(f"/api/task/info/{task_id}")
    return resp.json() if resp.status_code == 200 else None  # type: ignore[no-any-return]


def wait_until_flower_listens(flower: FlowerProcess) -> None:
    """Flower sees only events sent after its receiver connected: probe until one arrives."""

    def probe_seen() -> bool:
        probe = tasks.enqueue_recording("room-probe").id
        try:
            wait_for(lambda: task_info(flower, probe), timeout_s=2, interval_s=0.1)
        except AssertionError:
            return False
        return True

    wait_for(probe_seen, timeout_s=40, interval_s=0)


def test_flower_shows_each_job_from_enqueue_to_success_with_its_room(
    flower: FlowerProcess, start_worker: StartWorker
) -> None:
    # Given Flower listening and no worker running yet
    wait_until_flower_listens(flower)
    # When a job is enqueued, Flower shows it at once, before any worker has it
    job = tasks.enqueue_recording("room-flower-1")
    sent = wait_for(lambda: task_info(flower, job.id), timeout_s=10, interval_s=0.1)
    assert sent["state"] == "PENDING" and sent["name"] == "tasks.start_recording"
    assert "room-flower-1" in sent["kwargs"] and job.id in sent["args"]
    listed = flower.get("/api/tasks").json()
    assert job.id in listed and "room-flower-1" in listed[job.id]["kwargs"]
    # and the tasks page shows the room and the outcome (FLOWER_TASKS_COLUMNS, as
    # docker-compose.yml sets it: no flag)
    page = flower.get("/tasks").text
    for column in ("kwargs", "result", "exception"):
        assert f'data-column="{column}"' in page, column
    # Then a worker runs it, and Flower shows its state and runtime
    start_worker()

    def succeeded() -> dict[str, Any] | None:
        info = task_info(flower, job.id)
        return info if info and info["state"] == "SUCCESS" else None

    done = wait_for(succeeded, timeout_s=30, interval_s=0.2)
    assert done["runtime"] is not None and done["runtime"] >= 0
    assert done["received"] and done["started"] and done["succeeded"]
    assert "succeeded" in str(done["result"])
    assert tasks.get_job(job.id).status.value == "succeeded"  # type: ignore[union-attr]

    # And no response of Flower's holds the secret or a token
    # (the workers' answers include their stats and configuration)
    workers = wait_for(
        lambda: flower.get("/api/workers?refresh=1").json(), timeout_s=30, interval_s=0.5
    )
    assert SECRET not in json.dumps(workers)
    responses = [
        flower.get("/api/tasks"),
        flower.get(f"/api/task/info/{job.id}"),
        flower.get("/api/workers"),
        flower.get("/api/tasks?state=SUCCESS"),
        flower.get("/tasks"),
        flower.get("/workers"),
        flower.get("/metrics", auth=None),
    ]
    assert all(r.status_code == 200 for r in responses), [r.status_code for r in responses]
    for resp in responses:
        assert SECRET not in resp.text, resp.url
        assert not JWT.search(resp.text), resp.url


def test_flower_api_and_pages_need_the_basic_auth_credentials(flower: FlowerProcess) -> None:
    for path in ("/api/tasks", "/api/workers", "/api/task/info/nope", "/tasks", "/"):
        assert flower.get(path, auth=None).status_code == 401, path
        assert flower.get(path, auth=(USER, "wrong")).status_code == 401, path
    assert flower.get("/api/tasks").status_code == 200


def test_flower_serves_prometheus_metrics_bounded_however_many_producers_enqueue(
    flower: FlowerProcess,
) -> None:
    wait_until_flower_listens(flower)  # so at least one task-sent event was counted
    # Given three more producer processes, each enqueueing a job (each used to add a
    # gen<pid>@host worker to Flower's series)
    for i in range(3):
        subprocess.run(
            [sys.executable, "-m", "tasks.cli", "enqueue", f"room-producer-{i}"],
            cwd=ROOT, check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def counted_all() -> str | None:
        text: str = flower.get("/metrics", auth=None).text
        sent = [line for line in text.splitlines() if 'type="task-sent"' in line]
        return text if sent and sum(float(line.split()[-1]) for line in sent) >= 4 else None

    text = wait_for(counted_all, timeout_s=30, interval_s=0.3)
    assert "# TYPE flower_events_total counter" in text
    # Then every producer's events are under one name per host, never a process's own
    workers = set(re.findall(r'worker="([^"]+)"', text))
    assert workers == {f"producer@{socket.gethostname()}"}, workers


def test_flower_never_shows_the_redis_password(
    private_redis: RedisServer,
    start_worker: StartWorker,
    recorder_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # Given a Redis with a password, and a worker and Flower using it
    password = "redis-pw-6b1f0e2d"
    redis.Redis(port=private_redis.port).config_set("requirepass", password)
    url = f"redis://:{password}@127.0.0.1:{private_redis.port}/0"
    worker = start_worker(REDIS_URL=url)
    env = {**recorder_env, "REDIS_URL": url, "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    flower = FlowerProcess(env, tmp_path / "flower-pw.log").wait_ready()
    try:
        # When Flower asks the worker for its stats and configuration
        workers = wait_for(
            lambda: flower.get("/api/workers?refresh=1").json(), timeout_s=30, interval_s=0.5
        )
        (name,) = workers
        assert workers[name]["conf"]["broker_url"].startswith("redis://:***")
        # Then no page or API answer shows the password
        for path in ("/api/workers", "/workers", f"/worker/{name}", "/broker", "/api/tasks"):
            resp = flower.get(path)
            assert resp.status_code == 200, path
            assert password not in resp.text, path
        assert password not in worker.log()
    finally:
        flower.stop()


def test_flower_shows_a_failed_job_as_failure_and_a_waiting_one_as_retry(
    flower: FlowerProcess, start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    # Given a worker, Flower listening, a room the API does not know and one it throttles
    start_worker()
    wait_until_flower_listens(flower)
    probes = [job.id for job in tasks.list_jobs(room_id="room-probe")]
    wait_for(lambda: finished(probes), timeout_s=20)  # the answers scripted next are not theirs
    sandbox.script(
        {"status": 404, "body": {"message": "room not found"}},
        {"status": 429, "headers": {"Retry-After": "60"}},
    )
    missing = tasks.enqueue_recording("room-missing")
    wait_for(lambda: tasks.get_job(missing.id).finished, timeout_s=20)  # type: ignore[union-attr]
    waiting = tasks.enqueue_recording("room-throttled")

    def in_state(job_id: str, state: str) -> dict[str, Any] | None:
        info = task_info(flower, job_id)
        return info if info and info["state"] == state else None

    # Then the failed job is FAILURE, with the job's error type and message as the exception
    failed = wait_for(lambda: in_state(missing.id, "FAILURE"), timeout_s=20, interval_s=0.2)
    assert failed["exception"].startswith("RoomNotFound(") and "404" in failed["exception"]
    assert tasks.get_job(missing.id).status.value == "failed"  # type: ignore[union-attr]
    # and the job handed back to wait in Redis is RETRY, never SUCCESS
    wait_for(lambda: in_state(waiting.id, "RETRY"), timeout_s=20, interval_s=0.2)
    assert tasks.get_job(waiting.id).status.value == "retrying"  # type: ignore[union-attr]
    # and neither message is redelivered by Celery: one API call each
    rooms = [c["room_id"] for c in sandbox.calls() if c["room_id"] != "room-probe"]
    assert sorted(rooms) == ["room-missing", "room-throttled"]
