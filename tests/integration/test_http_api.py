"""The HTTP API as an application in another language uses it: a real ``recorder serve`` process
(FastAPI on uvicorn), real Redis, a real worker and the sandbox, driven with an HTTP client."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from tasks.sandbox.server import SandboxServer
from tests.conftest import ROOT, WorkerProcess, free_port, wait_for

pytestmark = pytest.mark.integration

TOKEN = "app-token-0123456789abcdef"
OLD_TOKEN = "old-token-0123456789abcdef"
StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def api_url(recorder_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, **recorder_env, "RECORDER_API_TOKENS": f"{TOKEN},{OLD_TOKEN}"}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            return requests.get(f"{url}/openapi.json", timeout=1).ok
        except requests.ConnectionError:
            return False

    wait_for(up, timeout_s=20)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def call(method: str, url: str, token: str | None = TOKEN, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, url, headers=headers, timeout=10, **kwargs)


def test_an_application_enqueues_looks_up_lists_cancels_and_stops_over_http(
    api_url: str, start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    start_worker()
    # enqueue: 201 with the job, validated as the Python API validates
    made = call(
        "POST",
        f"{api_url}/v1/recordings",
        json={"room_id": "room-http", "config": {"quality": "high"}},
    )
    assert made.status_code == 201, made.text
    job = made.json()
    assert job["room_id"] == "room-http" and job["kind"] == "start"
    done = wait_for(
        lambda: (
            (j := call("GET", f"{api_url}/v1/recordings/{job['id']}").json())["status"]
            == "succeeded"
            and j
        ),
        timeout_s=20,
    )
    assert done["http_status"] == 200 and done["request"]["config"] == {"quality": "high"}
    listed = call("GET", f"{api_url}/v1/recordings", params={"room_id": "room-http"}).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    # a scheduled one can be cancelled; an unknown id is 404
    later = call(
        "POST",
        f"{api_url}/v1/recordings",
        json={"room_id": "room-later", "run_at": "2099-01-01T09:00:00Z", "idempotency_key": "k"},
    )
    assert later.status_code == 422 and later.json()["detail"][0]["loc"] == ["body", "run_at"]
    later = call(
        "POST",
        f"{api_url}/v1/recordings",
        json={
            "room_id": "room-later",
            "run_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
            "idempotency_key": "k",
        },
    )
    assert later.status_code == 201 and later.json()["status"] == "scheduled", later.text
    cancelled = call("POST", f"{api_url}/v1/recordings/{later.json()['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert call("POST", f"{api_url}/v1/recordings/nope/cancel").status_code == 404
    assert call("GET", f"{api_url}/v1/recordings/nope").status_code == 404
    # the same idempotency key for another room is a conflict
    conflict = call(
        "POST", f"{api_url}/v1/recordings", json={"room_id": "room-other", "idempotency_key": "k"}
    )
    assert conflict.status_code == 409
    # a stop
    stop = call("POST", f"{api_url}/v1/stops", json={"room_id": "room-http"})
    assert stop.status_code == 201 and stop.json()["kind"] == "stop"
    stopped = wait_for(
        lambda: (
            (j := call("GET", f"{api_url}/v1/recordings/{stop.json()['id']}").json())["status"]
            == "succeeded"
            and j
        ),
        timeout_s=20,
    )
    assert stopped["request"] == {"roomId": "room-http"}
    assert [c["room_id"] for c in sandbox.calls() if c["path"].endswith("/end")] == ["room-http"]


def test_every_route_but_the_webhook_needs_a_configured_bearer_token(api_url: str) -> None:
    for method, path in (
        ("POST", "/v1/recordings"),
        ("GET", "/v1/recordings"),
        ("GET", "/v1/recordings/x"),
        ("POST", "/v1/recordings/x/cancel"),
        ("POST", "/v1/stops"),
    ):
        assert call(method, f"{api_url}{path}", token=None).status_code == 401
        assert call(method, f"{api_url}{path}", token="wrong-token-0123456789").status_code == 401
    # both configured tokens work (rotation)
    assert call("GET", f"{api_url}/v1/recordings", token=OLD_TOKEN).status_code == 200
    # the webhook answers for its signature, not for a bearer token
    hook = requests.post(f"{api_url}/webhooks/videosdk", data=b"{}", timeout=5)
    assert hook.status_code == 401 and "videosdk-signature" in hook.text


def test_bad_input_is_422_naming_the_field_and_nothing_is_stored(api_url: str) -> None:
    for body, field in (
        ({"config": {}}, "room_id"),
        ({"room_id": "r", "start_window_s": 0}, "start_window_s"),
        ({"room_id": "r", "config": {"quality": "ultra"}}, "config"),
        ({"room_id": "r", "colour": "blue"}, "colour"),
    ):
        answer = call("POST", f"{api_url}/v1/recordings", json=body)
        assert answer.status_code == 422, answer.text
        assert field in answer.json()["detail"][0]["loc"][1]
    assert call("GET", f"{api_url}/v1/recordings").json() == {"jobs": []}
    big = call("POST", f"{api_url}/v1/recordings", data=b"{" + b" " * 70_000 + b"}")
    assert big.status_code == 413


def test_the_openapi_docs_are_served(api_url: str) -> None:
    docs = requests.get(f"{api_url}/docs", timeout=5)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = requests.get(f"{api_url}/openapi.json", timeout=5).json()["paths"]
    assert {"/v1/recordings", "/v1/recordings/{job_id}", "/v1/stops"} <= set(paths)
