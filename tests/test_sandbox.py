"""Tests of tasks.sandbox.server: a real server on 127.0.0.1, real HTTP through requests."""

from __future__ import annotations

import http.client
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from tasks.sandbox.server import STARTED, Faults, SandboxServer

API_KEY = "test-key"
SECRET = "test-secret-that-is-at-least-32-bytes-long"  # shorter ones make PyJWT warn
ROOT = Path(__file__).resolve().parents[1]


def make_token(secret: str = SECRET, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "apikey": API_KEY,
        "permissions": ["allow_join"],
        "version": 2,
        "roles": ["crawler"],
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, "HS256")


def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(api_key=API_KEY, secret=SECRET, seed=7) as server:
        yield server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.fixture
def start(sandbox: SandboxServer, session: requests.Session) -> Callable[..., requests.Response]:
    def call(room: Any = "room-1", *, token: str | None = None, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("json", {"roomId": room})
        kwargs.setdefault("timeout", 5)
        headers = {} if token == "" else {"Authorization": token or make_token()}
        return session.post(f"{sandbox.url}/v2/recordings/start", headers=headers, **kwargs)

    return call


def test_start_answers_json_quoted_confirmation_and_logs_the_call(sandbox, start):
    response = start("room-1")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.text == '"Recording started successfully"'
    assert response.json() == STARTED
    assert sandbox.recording_rooms() == {"room-1"}
    [call] = sandbox.calls()
    assert call["path"] == "/v2/recordings/start"
    assert (call["room_id"], call["status"]) == ("room-1", 200)
    assert abs(call["t"] - time.time()) < 5


def test_second_start_for_same_room_is_refused_as_already_started(start):
    assert start("room-1").status_code == 200

    response = start("room-1")

    assert response.status_code == 400
    assert "already" in response.json()["message"]


def test_end_stops_the_recording_so_the_room_can_start_again(sandbox, session, start):
    end_url = f"{sandbox.url}/v2/recordings/end"
    headers = {"Authorization": make_token()}
    assert start("room-1").status_code == 200

    ended = session.post(end_url, json={"roomId": "room-1"}, headers=headers, timeout=5)

    assert (ended.status_code, ended.json()) == (200, "Recording stopped successfully")
    assert sandbox.recording_rooms() == set()
    assert start("room-1").status_code == 200
    assert (
        session.post(end_url, json={"roomId": "idle"}, headers=headers, timeout=5).status_code
        == 400
    )
    assert [c["path"].rsplit("/", 1)[1] for c in sandbox.calls()] == [
        "start",
        "end",
        "start",
        "end",
    ]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(
            make_token(secret="another-secret-that-is-at-least-32-bytes"), id="bad-signature"
        ),
        pytest.param(make_token(exp=int(time.time()) - 1), id="expired"),
        pytest.param("", id="missing"),
        pytest.param("not.a.jwt", id="garbage"),
        pytest.param("Bearer " + make_token(), id="bearer-prefix"),
        pytest.param(make_token(apikey="other-key"), id="wrong-api-key"),
    ],
)
def test_start_with_invalid_token_is_401(sandbox, start, token):
    response = start("room-1", token=token)

    assert response.status_code == 401
    assert response.json() == {"message": "Token is invalid or expired"}
    assert sandbox.recording_rooms() == set()


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"roles": None}, "Your role must be a CRAWLER"),
        ({"roles": ["viewer"]}, "Your role must be a CRAWLER"),
        ({"version": 1}, "version"),
        ({"permissions": ["ask_join"]}, "allow_join"),
    ],
)
def test_start_with_token_lacking_v2_crawler_rights_is_403(start, claims, message):
    response = start("room-1", token=make_token(**claims))

    assert response.status_code == 403
    assert message in response.json()["message"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"json": {}},
        {"json": {"roomId": ""}},
        {"json": {"roomId": 7}},
        {"json": ["r"]},
        {"data": b"{"},
    ],
)
def test_start_without_a_valid_room_id_is_400(sandbox, start, kwargs):
    response = start(**kwargs)

    assert response.status_code == 400
    assert "message" in response.json()
    assert sandbox.calls()[0]["status"] == 400


def test_start_in_missing_room_is_404(start):
    response = start("missing-room")

    assert (response.status_code, response.json()) == (404, {"message": "Room not found"})


def test_unknown_path_is_404_json(sandbox, session):
    response = session.post(f"{sandbox.url}/v2/nope", json={}, timeout=5)

    assert (response.status_code, response.json()) == (404, {"message": "Not found"})


def test_scripted_answers_are_consumed_in_order_before_normal_behaviour(sandbox, start):
    sandbox.script({"status": 503}, {"status": 503}, {"status": 200})

    statuses = [start("room-1").status_code for _ in range(4)]

    assert statuses == [503, 503, 200, 400]
    assert [c["status"] for c in sandbox.calls()] == statuses
    assert sandbox.recording_rooms() == {"room-1"}


def test_scripted_answer_carries_its_headers_and_text_body(sandbox, start):
    sandbox.script(
        {"status": 429, "headers": {"Retry-After": "3"}}, {"status": 502, "body": "<html>"}
    )

    limited, bad_gateway = start("room-1"), start("room-1")

    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
    assert (bad_gateway.status_code, bad_gateway.text) == (502, "<html>")
    assert bad_gateway.headers["Content-Type"].startswith("text/plain")
    assert sandbox.recording_rooms() == set()


def test_own_rate_limit_answers_429_with_retry_after(sandbox, start):
    sandbox.faults.rate_limit_per_s = 1
    sandbox.faults.retry_after_s = 3

    responses = [start(f"room-{i}") for i in range(5)]

    assert responses[0].status_code == 200
    limited = [r for r in responses if r.status_code == 429]
    assert len(limited) >= 3
    assert all(r.headers["Retry-After"] == "3" for r in limited)
    assert limited[0].json() == {"message": "Too many requests"}
    sandbox.faults.retry_after_s = None
    unlimited_wait = start("room-x")
    assert unlimited_wait.status_code == 429
    assert "Retry-After" not in unlimited_wait.headers


def test_error_rate_answers_5xx_without_starting(sandbox, start):
    sandbox.faults.error_rate = 1.0

    statuses = {start("room-1").status_code for _ in range(6)}

    assert statuses <= {500, 502, 503}
    assert sandbox.recording_rooms() == set()


def test_latency_delays_every_start(sandbox, start):
    sandbox.faults.latency_s = 0.2

    began = time.monotonic()
    assert start("room-1").status_code == 200
    assert time.monotonic() - began >= 0.2


def test_timeout_fault_starts_the_recording_but_answers_too_late(sandbox, start):
    sandbox.faults.timeout_rate = 1.0
    sandbox.faults.hang_s = 3.0

    with pytest.raises(requests.ReadTimeout):
        start("room-1", timeout=0.3)

    assert wait_until(lambda: sandbox.recording_rooms() == {"room-1"})
    assert sandbox.calls()[0]["status"] == 200


def test_scripted_delay_after_start_looks_like_a_timeout_to_the_client(sandbox, start):
    sandbox.script({"delay_s": 3, "start": True})

    with pytest.raises(requests.ReadTimeout):
        start("room-1", timeout=0.3)

    assert wait_until(lambda: sandbox.recording_rooms() == {"room-1"})
    assert start("room-1").status_code == 400


def test_control_endpoints_drive_the_sandbox_over_http(sandbox, session, start):
    url = f"{sandbox.url}/_sandbox"
    assert session.get(f"{url}/health", timeout=5).json() == {"ok": True}

    queued = session.post(f"{url}/script", json=[{"status": 500}, {"status": 201}], timeout=5)
    assert queued.json() == {"ok": True, "queued": 2}
    assert [start("room-1").status_code, start("room-2").status_code] == [500, 201]

    faults = session.post(f"{url}/faults", json={"rate_limit_per_s": 5.0}, timeout=5)
    assert faults.json()["rate_limit_per_s"] == 5.0
    assert sandbox.faults.rate_limit_per_s == 5.0
    assert session.post(f"{url}/faults", json={"nope": 1}, timeout=5).status_code == 400
    assert session.post(f"{url}/faults", json={"hang_s": "x"}, timeout=5).status_code == 400

    calls = session.get(f"{url}/calls", timeout=5).json()
    assert [(c["room_id"], c["status"]) for c in calls] == [("room-1", 500), ("room-2", 201)]
    assert session.get(f"{url}/rooms", timeout=5).json() == ["room-2"]

    assert session.post(f"{url}/reset", timeout=5).json() == {"ok": True}
    assert sandbox.calls() == []
    assert sandbox.recording_rooms() == set()


def test_faults_given_to_the_constructor_apply():
    faults = Faults(error_rate=1.0)
    with SandboxServer(api_key=API_KEY, secret=SECRET, faults=faults) as server:
        response = requests.post(
            f"{server.url}/v2/recordings/start",
            json={"roomId": "room-1"},
            headers={"Authorization": make_token()},
            timeout=5,
        )
    assert response.status_code in (500, 502, 503)


def test_connection_is_kept_alive_between_requests(sandbox):
    conn = http.client.HTTPConnection(sandbox.url.removeprefix("http://"), timeout=5)
    try:
        for room in ("room-1", "room-2"):
            conn.request(
                "POST",
                "/v2/recordings/start",
                body=f'{{"roomId": "{room}"}}',
                headers={"Authorization": make_token(), "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b'"Recording started successfully"')
            if room == "room-1":
                first_socket = conn.sock
        assert conn.sock is first_socket is not None
    finally:
        conn.close()


def test_main_prints_listening_line_serves_and_exits_0_on_sigterm():
    code = (
        "from tasks.sandbox import main; raise SystemExit(main(["
        f"'--port', '0', '--api-key', {API_KEY!r}, '--secret', {SECRET!r}, '--latency-ms', '1']))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOSDK_")}
    with subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 10)
            assert ready, "no listening line within 10 s"
            line = proc.stdout.readline().strip()
            assert line.startswith("sandbox listening on http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1]
            response = requests.post(
                f"{url}/v2/recordings/start",
                json={"roomId": "room-1"},
                headers={"Authorization": make_token()},
                timeout=5,
            )
            assert response.status_code == 200

            proc.send_signal(signal.SIGTERM)

            assert proc.wait(timeout=5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        output = proc.stdout.read() + proc.stderr.read()
    assert SECRET not in line + output


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"config": {"layout": {"gridSize": 9}}}, "config.layout.gridSize"),
        ({"config": {"theme": "PINK"}}, "config.theme"),
        ({"transcription": {"enabled": "yes"}}, "transcription.enabled"),
    ],
)
def test_start_with_options_the_request_model_refuses_is_422(sandbox, start, options, field):
    response = start(json={"roomId": "room-1", **options})

    assert response.status_code == 422
    assert field in response.json()["message"]
    assert sandbox.recording_rooms() == set()


def test_start_with_valid_options_succeeds(start):
    options = {"config": {"layout": {"type": "GRID", "gridSize": 4}, "quality": "high"}}

    assert start(json={"roomId": "room-1", **options}).status_code == 200


def test_too_many_rate_answers_429_at_random_without_starting() -> None:
    with SandboxServer(api_key=API_KEY, secret=SECRET, faults=Faults(too_many_rate=1.0)) as server:
        resp = requests.post(
            server.url + "/v2/recordings/start",
            json={"roomId": "r1"},
            headers={"Authorization": make_token()},
            timeout=5,
        )
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
        assert server.recording_rooms() == set()
