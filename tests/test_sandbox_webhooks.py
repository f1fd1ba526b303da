"""Tests of the sandbox's side of a recording's life: signed webhooks, its key, the listing.

A real sandbox on 127.0.0.1 and a real little webhook receiver (``http.server`` in a thread)
that keeps every request's raw bytes; signatures are checked with ``cryptography`` against the
PEM the sandbox serves at ``/v2/public/rsa-public-key``.
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tasks.sandbox import main
from tasks.sandbox.server import Faults, SandboxServer

API_KEY = "test-key"
SECRET = "test-secret-that-is-at-least-32-bytes-long"
ROOT = Path(__file__).resolve().parents[1]
RECORDING_EVENTS = [
    "recording-starting",
    "recording-started",
    "recording-stopping",
    "recording-stopped",
]


def make_token() -> str:
    now = int(time.time())
    claims = {
        "apikey": API_KEY,
        "permissions": ["allow_join"],
        "version": 2,
        "roles": ["crawler"],
        "iat": now,
        "exp": now + 600,
    }
    return jwt.encode(claims, SECRET, "HS256")


def wait_until(predicate: Callable[[], Any], timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    return predicate()


def verifies(public_pem: str, raw: bytes, signature: str | None) -> bool:
    """True when ``signature`` (base64) is the RSA-SHA256 PKCS#1 v1.5 signature of ``raw``."""
    key = serialization.load_pem_public_key(public_pem.encode())
    assert isinstance(key, rsa.RSAPublicKey)
    try:
        key.verify(base64.b64decode(signature or ""), raw, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


class Receiver:
    """A webhook receiver on 127.0.0.1 that keeps what it got and answers as told."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []  # raw, signature, content_type, path, t
        self.answers: deque[int] = deque()  # statuses to answer next, then 200
        self.delay_s = 0.0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.got.append(
                        {
                            "raw": raw,
                            "signature": self.headers.get("videosdk-signature"),
                            "content_type": self.headers.get("Content-Type"),
                            "path": self.path,
                            "t": time.monotonic(),
                        }
                    )
                    status = receiver.answers.popleft() if receiver.answers else 200
                time.sleep(receiver.delay_s)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/webhooks/videosdk"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.got)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r["raw"]) for r in self.requests()]

    def types(self) -> list[str]:
        return [e["webhookType"] for e in self.events()]

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        assert wait_until(lambda: len(self.requests()) >= count, timeout_s), self.types()
        return self.events()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.close()


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(api_key=API_KEY, secret=SECRET, seed=7) as server:
        yield server


def call(server: SandboxServer, action: str, room: str, **body: Any) -> requests.Response:
    return requests.post(
        f"{server.url}/v2/recordings/{action}",
        json={"roomId": room, **body},
        headers={"Authorization": make_token()},
        timeout=5,
    )


def listing(server: SandboxServer, token: str | None = None, **params: Any) -> requests.Response:
    headers = {"Authorization": make_token() if token is None else token}
    return requests.get(f"{server.url}/v2/recordings", params=params, headers=headers, timeout=5)


def public_key(server: SandboxServer) -> requests.Response:
    return requests.get(f"{server.url}/v2/public/rsa-public-key", timeout=5)


def control(server: SandboxServer, path: str, body: Any = None) -> requests.Response:
    return requests.post(f"{server.url}/_sandbox/{path}", json=body, timeout=5)


# Signed webhooks of a recording's life


def test_a_start_and_an_end_send_signed_webhooks_in_order(sandbox, receiver):
    assert call(sandbox, "start", "room-1", webhookUrl=receiver.url).status_code == 200
    assert call(sandbox, "end", "room-1").status_code == 200

    events = receiver.wait_for(5)

    assert [e["webhookType"] for e in events] == ["session-started", *RECORDING_EVENTS]
    [session_id] = {e["data"]["sessionId"] for e in events}
    assert {e["data"]["meetingId"] for e in events} == {"room-1"}
    assert [set(e["data"]) for e in events[1:4]] == [{"meetingId", "sessionId"}] * 3
    stopped = events[-1]["data"]
    assert stopped["fileUrl"].startswith(
        f"https://sandbox.videosdk.local/recordings/room-1/{session_id}/"
    )
    assert stopped["fileUrl"].endswith(stopped["filePath"].removeprefix("recordings/"))
    pem = public_key(sandbox).json()["publicKey"]
    assert pem == sandbox.public_key_pem and pem.startswith("-----BEGIN PUBLIC KEY-----")
    for got in receiver.requests():
        assert verifies(pem, got["raw"], got["signature"])
        assert got["content_type"] == "application/json"
        assert got["path"] == "/webhooks/videosdk"


def test_the_signature_covers_the_exact_bytes_sent_utf8_room_ids_unescaped(sandbox, receiver):
    room = "salle-é/日本"

    assert call(sandbox, "start", room, webhookUrl=receiver.url).status_code == 200

    receiver.wait_for(3)
    raw = receiver.requests()[1]["raw"]
    assert room.encode() in raw  # not \\u-escaped: a receiver must verify the raw bytes
    reencoded = json.dumps(json.loads(raw)).encode()
    pem = sandbox.public_key_pem
    assert verifies(pem, raw, receiver.requests()[1]["signature"])
    assert not verifies(pem, reencoded, receiver.requests()[1]["signature"])


def test_the_webhook_log_records_every_webhook_with_its_answer(sandbox, receiver):
    receiver.answers.extend([200, 202])
    call(sandbox, "start", "room-1", webhookUrl=receiver.url)
    receiver.wait_for(3)

    log = wait_until(lambda: len(sandbox.webhooks()) == 3 and sandbox.webhooks())

    assert [(e["webhookType"], e["status"], e["attempt"]) for e in log] == [
        ("session-started", 200, 1),
        ("recording-starting", 202, 1),
        ("recording-started", 200, 1),
    ]
    assert [e["seq"] for e in log] == [1, 2, 3]
    assert all(e["url"] == receiver.url and e["meetingId"] == "room-1" for e in log)
    assert [e["body"].encode() for e in log] == [r["raw"] for r in receiver.requests()]
    assert [e["signature"] for e in log] == [r["signature"] for r in receiver.requests()]
    assert not any(e["dropped"] or e["duplicate"] or e["error"] for e in log)
    over_http = requests.get(f"{sandbox.url}/_sandbox/webhooks", timeout=5).json()
    assert over_http == log


def test_a_start_answered_500_by_script_still_sends_the_webhooks_of_the_recording(
    sandbox, receiver
):
    sandbox.script({"status": 500, "start": True})

    assert call(sandbox, "start", "room-1", webhookUrl=receiver.url).status_code == 500

    events = receiver.wait_for(3)
    assert [e["webhookType"] for e in events] == ["session-started", *RECORDING_EVENTS[:2]]
    sandbox.script({"status": 200, "start": True})  # records already: no second recording
    assert call(sandbox, "start", "room-1", webhookUrl=receiver.url).status_code == 200
    time.sleep(0.2)
    assert len(receiver.requests()) == 3
    assert len(sandbox.recordings("room-1")) == 1


def test_ending_the_session_stops_the_recording_then_ends_the_session(sandbox, receiver):
    call(sandbox, "start", "room-1", webhookUrl=receiver.url)

    ended = control(sandbox, "rooms/room-1/end").json()

    events = receiver.wait_for(6)
    assert [e["webhookType"] for e in events] == [
        "session-started",
        *RECORDING_EVENTS,
        "session-ended",
    ]
    session_ended = events[-1]["data"]
    assert session_ended["sessionId"] == ended["ended_session_id"]
    assert session_ended["start"] == events[0]["data"]["start"]
    assert session_ended["end"] >= session_ended["start"]
    assert session_ended["end"].endswith("Z")


def test_failing_a_recording_sends_recording_failed_and_stops_it(sandbox, receiver):
    call(sandbox, "start", "room-1", webhookUrl=receiver.url)
    receiver.wait_for(3)

    failed = control(sandbox, "rooms/room-1/fail").json()

    events = receiver.wait_for(4)
    assert events[-1]["webhookType"] == "recording-failed"
    assert set(events[-1]["data"]) == {"meetingId", "sessionId"}
    assert failed["recording"] is False
    [listed] = sandbox.recordings("room-1")
    assert (listed["id"], listed["status"], listed["file"]) == (
        failed["failed_recording_id"],
        "failed",
        None,
    )
    assert call(sandbox, "end", "room-1").status_code == 400  # not recording any more
    assert sandbox.fail_recording("room-1") is None
    assert control(sandbox, "rooms/room-1/fail").json()["failed_recording_id"] is None
    assert call(sandbox, "start", "room-1").status_code == 200  # it may start again


def test_fail_recording_from_python_returns_the_recordings_id(sandbox, receiver):
    call(sandbox, "start", "room-1", webhookUrl=receiver.url)

    recording_id = sandbox.fail_recording("room-1")

    assert recording_id == sandbox.recordings("room-1")[0]["id"]
    assert receiver.wait_for(4)[-1]["webhookType"] == "recording-failed"


# Where webhooks go


def test_no_webhook_url_sends_nothing_but_the_recording_is_listed(sandbox):
    assert call(sandbox, "start", "room-1").status_code == 200
    assert call(sandbox, "end", "room-1").status_code == 200

    time.sleep(0.2)
    assert sandbox.webhooks() == []
    assert [r["status"] for r in listing(sandbox, roomId="room-1").json()["data"]] == ["stopped"]


def test_the_sandbox_wide_webhook_url_serves_starts_without_one_and_sessions(sandbox, receiver):
    sandbox.update_faults({"webhook_url": receiver.url})

    sandbox.go_live("room-a")  # no start yet: only the default URL knows of it
    call(sandbox, "start", "room-b")

    events = receiver.wait_for(4)
    assert [(e["webhookType"], e["data"]["meetingId"]) for e in events] == [
        ("session-started", "room-a"),
        ("session-started", "room-b"),
        ("recording-starting", "room-b"),
        ("recording-started", "room-b"),
    ]


def test_a_start_with_its_own_url_wins_over_the_default(sandbox, receiver):
    other = Receiver()
    try:
        sandbox.update_faults({"webhook_url": other.url})

        call(sandbox, "start", "room-1", webhookUrl=receiver.url)

        assert len(receiver.wait_for(3)) == 3
        assert other.requests() == []
    finally:
        other.close()


def test_a_room_that_goes_live_later_tells_the_url_of_its_refused_start_on_time(receiver):
    # Given a start refused because the room is not live, its webhookUrl remembered
    faults = Faults(require_live=True)
    with SandboxServer(api_key=API_KEY, secret=SECRET, faults=faults) as server:
        refused = call(server, "start", "room-1", webhookUrl=receiver.url)
        assert refused.status_code == 400
        # When the room goes live 0.3 s later, with nobody asking the sandbox anything
        server.go_live("room-1", after_s=0.3)
        began = time.monotonic()

        [event] = receiver.wait_for(1, timeout_s=3)

        # Then session-started arrives on time, and the session is the one the start gets
        assert 0.25 <= receiver.requests()[0]["t"] - began < 1.5
        assert event["webhookType"] == "session-started"
        assert call(server, "start", "room-1", webhookUrl=receiver.url).status_code == 200
        assert server.sessions()["room-1"]["session_id"] == event["data"]["sessionId"]


def test_live_after_also_sends_session_started_on_time(receiver):
    faults = Faults(require_live=True, live_after_s=0.3, webhook_url=receiver.url)
    with SandboxServer(api_key=API_KEY, secret=SECRET, faults=faults) as server:
        began = time.monotonic()
        assert call(server, "start", "room-1").status_code == 400

        [event] = receiver.wait_for(1, timeout_s=3)

        assert event["webhookType"] == "session-started"
        assert receiver.requests()[0]["t"] - began >= 0.25


# Faults of webhooks


def test_webhook_delay_holds_each_webhook_back_but_never_the_answer(sandbox, receiver):
    sandbox.faults.webhook_delay_s = 0.6

    began = time.monotonic()
    assert call(sandbox, "start", "room-1", webhookUrl=receiver.url).status_code == 200
    answered_s = time.monotonic() - began

    assert answered_s < 0.3
    time.sleep(0.3)
    assert receiver.requests() == []
    receiver.wait_for(3)
    assert receiver.requests()[0]["t"] - began >= 0.55


def test_a_slow_receiver_never_slows_the_api(sandbox, receiver):
    receiver.delay_s = 1.0
    call(sandbox, "start", "room-0", webhookUrl=receiver.url)

    began = time.monotonic()
    statuses = [call(sandbox, "start", f"room-{i}").status_code for i in range(1, 6)]

    assert statuses == [200] * 5
    assert time.monotonic() - began < 1.0


def test_drop_rate_one_sends_nothing_and_logs_every_drop(sandbox, receiver):
    sandbox.update_faults({"webhook_drop_rate": 1.0})

    call(sandbox, "start", "room-1", webhookUrl=receiver.url)
    call(sandbox, "end", "room-1")

    log = wait_until(lambda: len(sandbox.webhooks()) == 5 and sandbox.webhooks())
    assert [e["webhookType"] for e in log] == ["session-started", *RECORDING_EVENTS]
    assert all(e["dropped"] and e["status"] is None and e["attempt"] == 0 for e in log)
    time.sleep(0.2)
    assert receiver.requests() == []


def test_drop_rate_drops_about_that_fraction(sandbox, receiver):
    sandbox.update_faults({"webhook_drop_rate": 0.5})

    for i in range(20):
        call(sandbox, "start", f"room-{i}", webhookUrl=receiver.url)

    log = wait_until(lambda: len(sandbox.webhooks()) == 60 and sandbox.webhooks())
    dropped = sum(e["dropped"] for e in log)
    assert 15 <= dropped <= 45
    assert wait_until(lambda: len(receiver.requests()) == 60 - dropped)


def test_duplicate_rate_one_sends_every_webhook_twice_byte_for_byte(sandbox, receiver):
    sandbox.update_faults({"webhook_duplicate_rate": 1.0})

    call(sandbox, "start", "room-1", webhookUrl=receiver.url)

    got = receiver.wait_for(6)
    assert [e["webhookType"] for e in got] == [
        "session-started",
        "session-started",
        "recording-starting",
        "recording-starting",
        "recording-started",
        "recording-started",
    ]
    pairs = receiver.requests()
    for first, second in zip(pairs[::2], pairs[1::2], strict=True):
        assert (first["raw"], first["signature"]) == (second["raw"], second["signature"])
    log = wait_until(lambda: len(sandbox.webhooks()) == 6 and sandbox.webhooks())
    assert [e["duplicate"] for e in log] == [False, True] * 3
    assert [e["seq"] for e in log] == [1, 1, 2, 2, 3, 3]


def test_reorder_holds_a_recordings_webhooks_until_it_ends_then_shuffles_them(sandbox, receiver):
    sandbox.update_faults({"webhook_reorder": True})

    call(sandbox, "start", "room-1", webhookUrl=receiver.url)
    time.sleep(0.3)
    assert receiver.types() == ["session-started"]  # a session's events are not held
    call(sandbox, "end", "room-1")

    types = receiver.wait_for(5)
    late = [e["webhookType"] for e in types[1:]]
    assert sorted(late) == sorted(RECORDING_EVENTS)
    assert late != RECORDING_EVENTS
    pem = sandbox.public_key_pem
    assert all(verifies(pem, r["raw"], r["signature"]) for r in receiver.requests())


def test_reorder_of_a_failed_recording_sends_its_events_when_it_fails(sandbox, receiver):
    sandbox.update_faults({"webhook_reorder": True})
    call(sandbox, "start", "room-1", webhookUrl=receiver.url)

    sandbox.fail_recording("room-1")

    late = receiver.wait_for(4)[1:]
    assert sorted(e["webhookType"] for e in late) == sorted(
        ["recording-starting", "recording-started", "recording-failed"]
    )
    assert [e["webhookType"] for e in late] != [
        "recording-starting",
        "recording-started",
        "recording-failed",
    ]


def test_a_webhook_answered_5xx_is_retried_with_backoff_until_it_succeeds(sandbox, receiver):
    sandbox.update_faults({"webhook_retry_backoff_s": 0.2})
    receiver.answers.extend([503, 502])
    sandbox.go_live("room-1")
    sandbox.update_faults({"webhook_url": receiver.url})

    sandbox.end_session("room-1")  # one webhook: session-ended

    got = receiver.wait_for(3)
    assert [e["webhookType"] for e in got] == ["session-ended"] * 3
    times = [r["t"] for r in receiver.requests()]
    assert times[1] - times[0] >= 0.18 and times[2] - times[1] >= 0.38  # 0.2 s, then doubled
    log = wait_until(lambda: len(sandbox.webhooks()) == 3 and sandbox.webhooks())
    assert [(e["attempt"], e["status"]) for e in log] == [(1, 503), (2, 502), (3, 200)]
    assert len({e["seq"] for e in log}) == 1


def test_retries_stop_after_max_attempts_and_a_4xx_is_not_retried(sandbox, receiver):
    sandbox.update_faults(
        {"webhook_retry_backoff_s": 0.05, "webhook_max_attempts": 2, "webhook_url": receiver.url}
    )
    receiver.answers.extend([500, 500, 401])

    sandbox.go_live("room-1")  # its session-started: 500, 500, then given up
    receiver.wait_for(2)
    time.sleep(0.3)  # a third try would come within 0.1 s
    sandbox.go_live("room-2")  # its session-started: 401, never tried again
    receiver.wait_for(3)
    time.sleep(0.3)

    tries = [(e["meetingId"], e["attempt"], e["status"]) for e in sandbox.webhooks()]
    assert tries == [("room-1", 1, 500), ("room-1", 2, 500), ("room-2", 1, 401)]
    assert len(receiver.requests()) == 3


def test_an_unreachable_receiver_is_logged_with_the_error(sandbox):
    receiver = Receiver()
    url = receiver.url
    receiver.close()  # nothing listens there any more
    sandbox.update_faults({"webhook_retry_backoff_s": 0.01, "webhook_max_attempts": 2})

    sandbox.update_faults({"webhook_url": url})
    sandbox.go_live("room-1")

    log = wait_until(lambda: len(sandbox.webhooks()) == 2 and sandbox.webhooks())
    assert [(e["attempt"], e["status"]) for e in log] == [(1, None), (2, None)]
    assert all(e["error"].startswith("ConnectionError") for e in log)


@pytest.mark.parametrize(
    "changes",
    [
        {"webhook_drop_rate": 1.5},
        {"webhook_drop_rate": -0.1},
        {"webhook_duplicate_rate": "half"},
        {"webhook_delay_s": -1},
        {"webhook_reorder": "yes"},
        {"webhook_max_attempts": 0},
        {"webhook_max_attempts": 2.5},
        {"webhook_retry_backoff_s": None},
        {"webhook_url": ""},
        {"webhook_url": 5},
        {"public_key_format": "xml"},
    ],
)
def test_webhook_faults_with_bad_values_are_400_and_change_nothing(sandbox, changes):
    response = control(sandbox, "faults", changes)

    assert response.status_code == 400
    assert sandbox.faults == Faults()


def test_webhook_faults_are_settable_over_http(sandbox):
    changes = {
        "webhook_url": "http://127.0.0.1:9/hook",
        "webhook_delay_s": 0.5,
        "webhook_drop_rate": 0.1,
        "webhook_duplicate_rate": 0.2,
        "webhook_reorder": True,
        "webhook_max_attempts": 1,
        "webhook_retry_backoff_s": 0.0,
        "public_key_format": "text",
    }

    answered = control(sandbox, "faults", changes).json()

    assert {k: answered[k] for k in changes} == changes
    assert control(sandbox, "faults", {"webhook_url": None}).json()["webhook_url"] is None


def test_reset_forgets_webhooks_recordings_and_queued_webhooks(sandbox, receiver):
    call(sandbox, "start", "room-1", webhookUrl=receiver.url)
    receiver.wait_for(3)
    sandbox.faults.webhook_delay_s = 0.5
    call(sandbox, "end", "room-1")
    pem = sandbox.public_key_pem

    assert control(sandbox, "reset").json() == {"ok": True}

    time.sleep(0.8)
    assert len(receiver.requests()) == 3  # the queued stop webhooks were not sent
    assert sandbox.webhooks() == []
    assert sandbox.recordings("room-1") == []
    assert sandbox.public_key_pem == pem  # the key is the run's


def webhook_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sandbox-webhooks"]


def test_stopping_the_server_stops_its_webhook_thread(receiver):
    server = SandboxServer(api_key=API_KEY, secret=SECRET).start()
    before = webhook_threads()
    call(server, "start", "room-1", webhookUrl=receiver.url)
    receiver.wait_for(3)
    [thread] = [t for t in webhook_threads() if t not in before]

    server.stop()

    assert not thread.is_alive()


# The key: served, given, rotated


@pytest.mark.parametrize(
    ("form", "read"),
    [
        ("json", lambda r: r.json()["publicKey"]),
        ("data", lambda r: r.json()["data"]["publicKey"]),
        ("text", lambda r: r.text),
    ],
)
def test_the_public_key_is_served_in_the_format_asked(sandbox, form, read):
    sandbox.update_faults({"public_key_format": form})

    response = public_key(sandbox)

    assert response.status_code == 200
    expected = "text/plain" if form == "text" else "application/json"
    assert response.headers["Content-Type"] == expected
    pem = read(response)
    assert pem == sandbox.public_key_pem
    key = serialization.load_pem_public_key(pem.encode())
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048


def test_each_sandbox_run_has_its_own_key(sandbox):
    with SandboxServer(api_key=API_KEY, secret=SECRET) as other:
        assert other.public_key_pem != sandbox.public_key_pem


def test_a_private_key_given_signs_and_is_served(receiver):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1, as openssl genrsa writes it
        serialization.NoEncryption(),
    )
    expected = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with SandboxServer(api_key=API_KEY, secret=SECRET, private_key_pem=pem) as server:
        assert public_key(server).json()["publicKey"] == expected.decode()
        call(server, "start", "room-1", webhookUrl=receiver.url)

        receiver.wait_for(3)
        got = receiver.requests()
        assert all(verifies(expected.decode(), r["raw"], r["signature"]) for r in got)


def test_a_private_key_that_is_not_rsa_is_refused():
    with pytest.raises(ValueError, match="PEM"):
        SandboxServer(api_key=API_KEY, secret=SECRET, private_key_pem="not a key")


def test_a_rotated_key_signs_the_next_webhooks_and_is_served_at_once(sandbox, receiver):
    # Given a receiver that cached the key before the rotation
    cached = public_key(sandbox).json()["publicKey"]

    rotated = control(sandbox, "rsa-key/rotate").json()["publicKey"]
    call(sandbox, "start", "room-1", webhookUrl=receiver.url)

    receiver.wait_for(3)
    got = receiver.requests()
    # Then its cached key fails, and the key fetched again verifies
    assert rotated != cached
    assert not verifies(cached, got[0]["raw"], got[0]["signature"])
    fetched = public_key(sandbox).json()["publicKey"]
    assert fetched == rotated == sandbox.public_key_pem
    assert all(verifies(fetched, r["raw"], r["signature"]) for r in got)


def test_rotate_key_from_python_takes_a_given_key_and_refuses_a_bad_one(sandbox):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()

    new_public = sandbox.rotate_key(pem)

    assert new_public == public_key(sandbox).json()["publicKey"]
    assert control(sandbox, "rsa-key/rotate", {"privateKey": "junk"}).status_code == 400
    assert control(sandbox, "rsa-key/rotate", {"privateKey": 5}).status_code == 400
    assert control(sandbox, "rsa-key/rotate", {"key": pem}).status_code == 400
    assert sandbox.public_key_pem == new_public
    assert control(sandbox, "rsa-key/rotate", {"privateKey": pem}).json() == {
        "publicKey": new_public
    }


def test_a_webhook_signed_before_a_rotation_keeps_its_signature_on_retry(sandbox, receiver):
    sandbox.update_faults({"webhook_retry_backoff_s": 0.3, "webhook_url": receiver.url})
    receiver.answers.append(503)
    old = sandbox.public_key_pem
    sandbox.go_live("room-1")
    receiver.wait_for(1)

    sandbox.rotate_key()

    receiver.wait_for(2)
    first, retry = receiver.requests()
    assert (first["raw"], first["signature"]) == (retry["raw"], retry["signature"])
    assert verifies(old, retry["raw"], retry["signature"])


# GET /v2/recordings


def test_the_listing_shows_a_running_recording_then_the_stopped_one_with_its_file(sandbox):
    call(sandbox, "start", "room-1")

    running = listing(sandbox, roomId="room-1").json()

    assert running["pageInfo"] == {"currentPage": 1, "perPage": 20, "lastPage": 1, "total": 1}
    [item] = running["data"]
    assert (item["roomId"], item["status"], item["end"], item["file"]) == (
        "room-1",
        "started",
        None,
        None,
    )
    assert item["sessionId"] == sandbox.sessions()["room-1"]["session_id"]
    assert item["start"].endswith("Z") and item["start"] == item["createdAt"]
    call(sandbox, "end", "room-1")
    [stopped] = listing(sandbox, roomId="room-1").json()["data"]
    assert stopped["id"] == item["id"] and stopped["status"] == "stopped"
    assert stopped["end"] >= stopped["start"] and stopped["updatedAt"] == stopped["end"]
    assert stopped["file"]["fileUrl"].endswith(f"/room-1/{item['sessionId']}/{item['id']}.mp4")
    assert stopped["file"]["filePath"] == f"recordings/room-1/{item['sessionId']}/{item['id']}.mp4"
    assert stopped["file"]["type"] == "video/mp4"


def test_the_listing_is_newest_first_paged_and_filtered_by_session(sandbox):
    ids = []
    for _ in range(3):
        call(sandbox, "start", "room-1")
        ids.append(sandbox.recordings("room-1")[0]["id"])
        call(sandbox, "end", "room-1")
    old_session = sandbox.end_session("room-1")
    call(sandbox, "start", "room-1")  # a new session
    ids.append(sandbox.recordings("room-1")[0]["id"])

    everything = listing(sandbox, roomId="room-1").json()
    second = listing(sandbox, roomId="room-1", page=2, perPage=3).json()
    of_session = listing(sandbox, roomId="room-1", sessionId=old_session).json()

    assert [r["id"] for r in everything["data"]] == ids[::-1]
    assert [r["status"] for r in everything["data"]] == ["started"] + ["stopped"] * 3
    assert second["pageInfo"] == {"currentPage": 2, "perPage": 3, "lastPage": 2, "total": 4}
    assert [r["id"] for r in second["data"]] == [ids[0]]
    assert [r["id"] for r in of_session["data"]] == ids[2::-1]
    assert listing(sandbox, roomId="room-1", page=9).json()["data"] == []
    assert listing(sandbox, roomId="room-2").json() == {
        "pageInfo": {"currentPage": 1, "perPage": 20, "lastPage": 1, "total": 0},
        "data": [],
    }


def test_the_listing_reaches_room_ids_that_need_encoding_and_their_files_encode_them(sandbox):
    room = "team/a b?&é"
    call(sandbox, "start", room)
    call(sandbox, "end", room)

    [item] = listing(sandbox, roomId=room).json()["data"]

    assert item["roomId"] == room
    assert item["file"]["filePath"].startswith(f"recordings/{quote(room, safe='')}/")


@pytest.mark.parametrize(
    ("params", "token", "status"),
    [
        ({"roomId": "room-1"}, "", 401),
        ({"roomId": "room-1"}, "not.a.jwt", 401),
        ({}, None, 400),
        ({"roomId": ""}, None, 400),
        ({"roomId": "room-1", "page": "0"}, None, 400),
        ({"roomId": "room-1", "page": "x"}, None, 400),
        ({"roomId": "room-1", "perPage": "101"}, None, 400),
        ({"roomId": "room-1", "perPage": "-1"}, None, 400),
        ({"roomId": "missing-room"}, None, 404),
    ],
)
def test_the_listing_refuses_bad_calls_as_the_api_does(sandbox, params, token, status):
    response = listing(sandbox, token=token, **params)

    assert response.status_code == status
    assert "message" in response.json()


def test_the_listing_is_logged_as_a_call(sandbox):
    listing(sandbox, roomId="room-1")

    [logged] = sandbox.calls()

    assert (logged["path"], logged["room_id"], logged["status"]) == (
        "/v2/recordings",
        "room-1",
        200,
    )


def test_the_listing_keeps_a_bounded_history_per_room(sandbox):
    for _ in range(55):
        call(sandbox, "start", "room-1")
        call(sandbox, "end", "room-1")

    page = listing(sandbox, roomId="room-1", perPage=100).json()

    assert page["pageInfo"]["total"] == 50


def test_concurrent_recordings_each_send_a_complete_signed_sequence(sandbox, receiver):
    rooms = [f"room-{i}" for i in range(12)]

    def life(room: str) -> None:
        call(sandbox, "start", room, webhookUrl=receiver.url)
        call(sandbox, "end", room)

    threads = [threading.Thread(target=life, args=(room,)) for room in rooms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    events = receiver.wait_for(5 * len(rooms), timeout_s=10)
    pem = sandbox.public_key_pem
    assert all(verifies(pem, r["raw"], r["signature"]) for r in receiver.requests())
    for room in rooms:
        types = [e["webhookType"] for e in events if e["data"]["meetingId"] == room]
        assert types == ["session-started", *RECORDING_EVENTS]
        assert [r["status"] for r in listing(sandbox, roomId=room).json()["data"]] == ["stopped"]


# The command line


def test_sandbox_command_takes_the_webhook_and_key_flags(receiver, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "sandbox.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    flags = [
        "--port", "0", "--api-key", API_KEY, "--secret", SECRET,
        "--webhook-url", receiver.url, "--webhook-duplicate-rate", "1",
        "--webhook-delay", "0.1", "--webhook-max-attempts", "2", "--webhook-retry-backoff", "0.1",
        "--public-key-format", "text", "--rsa-private-key-file", str(key_file),
    ]  # fmt: skip
    code = f"from tasks.sandbox import main; raise SystemExit(main({flags!r}))"
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
            url = proc.stdout.readline().strip().rsplit(" ", 1)[1]

            served = requests.get(f"{url}/v2/public/rsa-public-key", timeout=5)
            requests.post(f"{url}/_sandbox/rooms/room-1/live", timeout=5).raise_for_status()
            events = receiver.wait_for(2)

            assert served.text == public.decode()
            assert [e["webhookType"] for e in events] == ["session-started"] * 2  # duplicated
            got = receiver.requests()[0]
            assert verifies(public.decode(), got["raw"], got["signature"])
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize(
    "argv",
    [
        ["--webhook-drop-rate", "2"],
        ["--webhook-duplicate-rate", "x"],
        ["--webhook-delay", "-1"],
        ["--webhook-max-attempts", "0"],
        ["--webhook-retry-backoff", "soon"],
        ["--public-key-format", "xml"],
        ["--rsa-private-key-file", "/nonexistent/key.pem"],
    ],
)
def test_sandbox_command_refuses_bad_webhook_flags(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "0", *argv])

    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_sandbox_command_refuses_a_key_file_that_holds_no_rsa_key(tmp_path, capsys):
    key_file = tmp_path / "not-a-key.pem"
    key_file.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")

    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "0", "--rsa-private-key-file", str(key_file)])

    assert exit_info.value.code == 2
    assert "--rsa-private-key-file" in capsys.readouterr().err
