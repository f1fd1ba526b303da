"""Tests of tasks.sandbox.server: a real server on 127.0.0.1, real HTTP through requests."""

from __future__ import annotations

import http.client
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import requests

from tasks.sandbox import main
from tasks.sandbox.server import STARTED, Faults, SandboxServer

API_KEY = "test-key"
SECRET = "test-secret-that-is-at-least-32-bytes-long"  # shorter ones make PyJWT warn
ROOT = Path(__file__).resolve().parents[1]
NOT_LIVE = "No active session found for this room"
NOT_STARTED = "Recording not started for this room"
PROCESSING = "Previous recording session is being processed, please try again after few seconds"
RECORDING_LIMIT = "You have reached max limit of recording on organization"


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
    idle = session.post(end_url, json={"roomId": "idle"}, headers=headers, timeout=5)
    assert (idle.status_code, idle.json()) == (400, {"message": NOT_STARTED})
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
        f"'--port', '0', '--api-key', {API_KEY!r}, '--secret', {SECRET!r}, '--latency-ms', '1',"
        " '--require-live', '--live-after', '0.3', '--max-recordings', '1']))"
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

            def start(room: str) -> requests.Response:
                return requests.post(
                    f"{url}/v2/recordings/start",
                    json={"roomId": room},
                    headers={"Authorization": make_token()},
                    timeout=5,
                )

            assert start("room-1").json() == {"message": NOT_LIVE}  # --require-live
            assert wait_until(lambda: start("room-1").status_code == 200)  # --live-after 0.3
            requests.post(f"{url}/_sandbox/rooms/room-2/live", timeout=5).raise_for_status()
            assert start("room-2").json() == {"message": RECORDING_LIMIT}  # --max-recordings 1

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


# Live sessions and the account's refusals


@pytest.fixture
def live_only() -> Iterator[SandboxServer]:
    with SandboxServer(api_key=API_KEY, secret=SECRET, faults=Faults(require_live=True)) as server:
        yield server


def post_start(server: SandboxServer, room: str) -> requests.Response:
    return requests.post(
        f"{server.url}/v2/recordings/start",
        json={"roomId": room},
        headers={"Authorization": make_token()},
        timeout=5,
    )


def post_end(server: SandboxServer, room: str) -> requests.Response:
    return requests.post(
        f"{server.url}/v2/recordings/end",
        json={"roomId": room},
        headers={"Authorization": make_token()},
        timeout=5,
    )


def test_require_live_refuses_a_start_of_a_room_without_a_session_and_logs_it(live_only):
    response = post_start(live_only, "room-1")

    assert (response.status_code, response.json()) == (400, {"message": NOT_LIVE})
    assert [(c["room_id"], c["status"]) for c in live_only.calls()] == [("room-1", 400)]
    assert live_only.recording_rooms() == set()
    assert live_only.sessions() == {}


def test_a_room_made_live_from_python_starts_in_its_session(live_only):
    session_id = live_only.go_live("room-1")

    assert post_start(live_only, "room-1").status_code == 200

    assert uuid.UUID(session_id).version == 4
    assert live_only.sessions() == {
        "room-1": {
            "session_id": session_id,
            "started_at": pytest.approx(time.time(), abs=5),
            "recording": True,
        }
    }
    assert live_only.go_live("room-1") == session_id  # live already: the same session
    assert post_start(live_only, "room-2").json() == {"message": NOT_LIVE}


def test_a_start_without_require_live_gives_the_room_a_session(sandbox, start):
    assert start("room-1").status_code == 200

    [(room, live)] = sandbox.sessions().items()
    assert room == "room-1" and live["recording"] is True
    uuid.UUID(live["session_id"])


def test_live_after_makes_a_room_live_that_long_after_its_first_start():
    faults = Faults(require_live=True, live_after_s=0.5)
    with SandboxServer(api_key=API_KEY, secret=SECRET, faults=faults) as server:
        first_s = time.time()
        assert post_start(server, "room-1").json() == {"message": NOT_LIVE}
        assert server.room_state("room-1")["live_at"] == pytest.approx(first_s + 0.5, abs=0.2)
        time.sleep(0.2)
        assert post_start(server, "room-2").status_code == 400  # room-2's clock starts now

        assert wait_until(lambda: post_start(server, "room-1").status_code == 200, 3)
        live_s = time.time()

        assert live_s - first_s >= 0.5
        assert server.sessions()["room-1"]["started_at"] == pytest.approx(first_s + 0.5, abs=0.2)
        assert wait_until(lambda: "room-2" in server.sessions(), 3)
        started = {room: s["started_at"] for room, s in server.sessions().items()}
        assert started["room-2"] - started["room-1"] >= 0.15


def test_a_room_told_to_go_live_later_over_http_is_refused_until_then(live_only):
    url = f"{live_only.url}/_sandbox/rooms/room-1/live"

    state = requests.post(url, json={"after_s": 0.6}, timeout=5).json()

    assert state["live"] is False and state["live_at"] > time.time()
    assert post_start(live_only, "room-1").json() == {"message": NOT_LIVE}
    assert wait_until(lambda: post_start(live_only, "room-1").status_code == 200, 3)
    now = requests.post(f"{live_only.url}/_sandbox/rooms/room-2/live", timeout=5).json()
    assert (now["room_id"], now["live"], now["live_at"]) == ("room-2", True, None)
    uuid.UUID(now["session_id"])


def test_a_room_marked_never_stays_refused_until_told_to_go_live():
    faults = Faults(require_live=True, live_after_s=0.2)
    with SandboxServer(api_key=API_KEY, secret=SECRET, faults=faults) as server:
        url = f"{server.url}/_sandbox/rooms/room-1/live"
        never = requests.post(url, json={"never": True}, timeout=5).json()
        assert (never["never"], never["live"], never["live_at"]) == (True, False, None)
        assert post_start(server, "room-1").status_code == 400
        time.sleep(0.4)  # past live_after_s: still not live

        assert post_start(server, "room-1").json() == {"message": NOT_LIVE}
        assert requests.post(url, timeout=5).json()["never"] is False
        assert post_start(server, "room-1").status_code == 200


@pytest.mark.parametrize("room", ["team/a b", "q?x=1#f", "100%", "salle-é-日本", "a/live"])
def test_control_endpoints_reach_rooms_whose_ids_need_percent_encoding(live_only, room):
    encoded = quote(room, safe="")

    live = requests.post(f"{live_only.url}/_sandbox/rooms/{encoded}/live", timeout=5).json()

    assert (live["room_id"], live["live"]) == (room, True)
    assert post_start(live_only, room).status_code == 200
    state = requests.get(f"{live_only.url}/_sandbox/rooms/{encoded}", timeout=5).json()
    assert (state["room_id"], state["recording"]) == (room, True)
    ended = requests.post(f"{live_only.url}/_sandbox/rooms/{encoded}/end", timeout=5).json()
    assert (ended["ended_session_id"], ended["live"]) == (live["session_id"], False)


def test_ending_a_session_stops_its_recording_and_the_next_session_is_new(live_only):
    first = live_only.go_live("room-1")
    assert post_start(live_only, "room-1").status_code == 200

    assert live_only.end_session("room-1") == first

    assert live_only.recording_rooms() == set()
    assert post_end(live_only, "room-1").json() == {"message": NOT_STARTED}
    assert post_start(live_only, "room-1").json() == {"message": NOT_LIVE}
    assert live_only.end_session("room-1") is None
    second = live_only.go_live("room-1")
    assert second not in (None, first)
    assert post_start(live_only, "room-1").status_code == 200


def test_stopping_a_recording_leaves_the_session_live(live_only):
    session_id = live_only.go_live("room-1")
    assert post_start(live_only, "room-1").status_code == 200

    assert post_end(live_only, "room-1").status_code == 200

    assert live_only.sessions() == {
        "room-1": {
            "session_id": session_id,
            "started_at": pytest.approx(time.time(), abs=5),
            "recording": False,
        }
    }
    assert post_start(live_only, "room-1").status_code == 200


def test_live_sessions_are_listed_over_http(live_only):
    live_only.go_live("room-b")
    live_only.go_live("room-a")
    live_only.go_live("room-c", after_s=60)
    assert post_start(live_only, "room-a").status_code == 200

    listed = requests.get(f"{live_only.url}/_sandbox/sessions", timeout=5).json()

    assert list(listed) == ["room-a", "room-b"]
    assert [s["recording"] for s in listed.values()] == [True, False]
    assert requests.get(f"{live_only.url}/_sandbox/rooms", timeout=5).json() == ["room-a"]


def test_processing_refuses_the_next_starts_of_any_room_for_a_count(sandbox):
    assert sandbox.refuse_as_processing(count=2) == {"remaining_s": None, "count": 2}

    answers = [post_start(sandbox, f"room-{i}") for i in range(3)]

    assert [a.status_code for a in answers] == [400, 400, 200]
    assert answers[0].json() == {"message": PROCESSING}
    assert sandbox.recording_rooms() == {"room-2"}
    assert sandbox.processing() == {"remaining_s": 0.0, "count": 0}


def test_processing_set_over_http_refuses_starts_for_a_duration(sandbox):
    url = f"{sandbox.url}/_sandbox/processing"

    state = requests.post(url, json={"duration_s": 0.8}, timeout=5).json()

    assert state["count"] is None and 0 < state["remaining_s"] <= 0.8
    assert post_start(sandbox, "room-1").json() == {"message": PROCESSING}
    assert post_start(sandbox, "room-1").json() == {"message": PROCESSING}
    assert wait_until(lambda: post_start(sandbox, "room-1").status_code == 200, 3)
    requests.post(url, json={"duration_s": 60}, timeout=5).raise_for_status()
    assert requests.get(url, timeout=5).json()["remaining_s"] > 50
    assert requests.post(url, json={"count": 0}, timeout=5).json() == {
        "remaining_s": 0.0,
        "count": 0,
    }
    assert post_start(sandbox, "room-2").status_code == 200


@pytest.mark.parametrize(
    "body", [{}, None, {"count": -1}, {"count": 1.5}, {"duration_s": "1"}, {"forever": True}]
)
def test_processing_with_bad_bounds_is_400_and_changes_nothing(sandbox, body):
    response = requests.post(f"{sandbox.url}/_sandbox/processing", json=body, timeout=5)

    assert response.status_code == 400
    assert sandbox.processing() == {"remaining_s": 0.0, "count": 0}


def test_max_recordings_refuses_starts_while_that_many_record():
    faults = Faults(max_recordings=2)
    with SandboxServer(api_key=API_KEY, secret=SECRET, faults=faults) as server:
        statuses = [post_start(server, f"room-{i}").status_code for i in range(2)]
        refused = post_start(server, "room-2")

        assert statuses == [200, 200]
        assert (refused.status_code, refused.json()) == (400, {"message": RECORDING_LIMIT})
        assert post_end(server, "room-0").status_code == 200
        assert post_start(server, "room-2").status_code == 200


def test_the_recording_limit_is_forced_on_and_off_at_run_time(sandbox):
    url = f"{sandbox.url}/_sandbox/faults"

    assert requests.post(url, json={"max_recordings": 0}, timeout=5).json()["max_recordings"] == 0
    assert post_start(sandbox, "room-1").json() == {"message": RECORDING_LIMIT}
    requests.post(url, json={"max_recordings": None}, timeout=5).raise_for_status()
    assert post_start(sandbox, "room-1").status_code == 200


def test_concurrent_starts_never_exceed_max_recordings():
    faults = Faults(max_recordings=5)
    with SandboxServer(api_key=API_KEY, secret=SECRET, faults=faults) as server:
        statuses: list[int] = []
        threads = [
            threading.Thread(
                target=lambda i=i: statuses.append(post_start(server, f"r{i}").status_code)
            )
            for i in range(40)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)

        assert sorted(statuses) == [200] * 5 + [400] * 35
        assert len(server.recording_rooms()) == 5


def test_require_live_and_live_after_are_settable_over_http(sandbox):
    url = f"{sandbox.url}/_sandbox/faults"

    changed = requests.post(url, json={"require_live": True, "live_after_s": 0.2}, timeout=5)

    assert (changed.json()["require_live"], changed.json()["live_after_s"]) == (True, 0.2)
    assert post_start(sandbox, "room-1").json() == {"message": NOT_LIVE}
    assert wait_until(lambda: post_start(sandbox, "room-1").status_code == 200, 3)
    requests.post(url, json={"require_live": False}, timeout=5).raise_for_status()
    assert post_start(sandbox, "room-2").status_code == 200


@pytest.mark.parametrize(
    "changes",
    [
        {"require_live": 1},
        {"require_live": "yes"},
        {"require_live": None},
        {"live_after_s": -1},
        {"live_after_s": True},
        {"max_recordings": 1.5},
        {"max_recordings": -1},
        {"error_rate": True},
    ],
)
def test_faults_with_a_value_of_the_wrong_kind_are_400_and_change_nothing(sandbox, changes):
    response = requests.post(f"{sandbox.url}/_sandbox/faults", json=changes, timeout=5)

    assert response.status_code == 400
    assert sandbox.faults == Faults()


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("rooms/room-1/live", {"after_s": "soon"}, 400),
        ("rooms/room-1/live", {"after_s": -1}, 400),
        ("rooms/room-1/live", {"never": True, "after_s": 1}, 400),
        ("rooms/room-1/live", {"never": "yes"}, 400),
        ("rooms/room-1/live", {"when": 1}, 400),
        ("rooms/room-1/live", [1], 400),
        ("rooms/room-1/end", {"now": True}, 400),
        ("rooms/%ff/live", None, 400),
        ("rooms//live", None, 404),
        ("rooms/room-1/pause", None, 404),
    ],
)
def test_room_control_with_bad_input_changes_nothing(live_only, path, body, status):
    response = requests.post(f"{live_only.url}/_sandbox/{path}", json=body, timeout=5)

    assert response.status_code == status
    assert "message" in response.json()
    assert live_only.sessions() == {}
    assert live_only.room_state("room-1")["live_at"] is None


def test_reset_forgets_sessions_pending_rooms_and_the_processing_refusal(live_only):
    live_only.go_live("room-1")
    live_only.go_live("room-2", after_s=30)
    live_only.never_live("room-3")
    live_only.refuse_as_processing(count=5)

    assert requests.post(f"{live_only.url}/_sandbox/reset", timeout=5).json() == {"ok": True}

    assert live_only.sessions() == {}
    assert live_only.processing() == {"remaining_s": 0.0, "count": 0}
    assert [live_only.room_state(r)["live_at"] for r in ("room-2", "room-3")] == [None, None]
    assert live_only.room_state("room-3")["never"] is False


@pytest.mark.parametrize(
    "argv", [["--live-after", "-1"], ["--live-after", "x"], ["--max-recordings", "1.5"]]
)
def test_sandbox_command_refuses_bad_live_and_limit_flags(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "0", *argv])

    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err
