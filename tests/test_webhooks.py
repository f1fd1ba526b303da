"""The webhook receiver and the recording state, without HTTP: real Redis, real RSA signatures.

Webhooks are signed as VideoSDK (and the sandbox) signs them: ``tasks.sandbox.signing.Signer``
over the compact JSON bytes of ``tasks.sandbox.webhooks.encode``. Keys are pinned, or fetched
over HTTP from a real sandbox. "Nothing stored" is checked on the whole test db, key by key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import pytest
import redis
import requests

import tasks
from tasks import runtime
from tasks.delivery.reconciler import events_of
from tasks.errors import (
    InvalidWebhookBody,
    InvalidWebhookSignature,
    WebhookKeyUnavailable,
    WebhookTooLarge,
)
from tasks.job import Job, Kind, Status
from tasks.sandbox.server import SandboxServer
from tasks.sandbox.signing import Signer
from tasks.sandbox.webhooks import encode
from tasks.store.jobs import JobStore
from tasks.webhooks.app import PATH, create_app
from tasks.webhooks.keys import REFETCH_MIN_S, PublicKeys, pem_of_answer, signature_ok
from tasks.webhooks.receiver import MAX_BODY_BYTES, WebhookReceiver
from tests.conftest import reset_process

PREFIX = "recorder"


class Clock:
    """A clock the test moves (for the refetch throttle)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def signer() -> Signer:
    signer = Signer()
    signer.public_key_pem  # noqa: B018  the key is made once for the module
    return signer


@pytest.fixture(scope="module")
def forger() -> Signer:
    """Another RSA key: what an attacker who knows the scheme but not the key can sign."""
    return Signer()


@pytest.fixture
def store(rdb: redis.Redis) -> JobStore:
    return JobStore(client=rdb, prefix=PREFIX, ttl_s=3600)


@pytest.fixture
def told() -> list[Job]:
    return []


@pytest.fixture
def receiver(store: JobStore, signer: Signer, told: list[Job]) -> WebhookReceiver:
    keys = PublicKeys(pinned_pem=signer.public_key_pem)
    return WebhookReceiver(store=store, keys=keys, notify=told.append)


def event(kind: str, room: str, session: str = "sess-1", **more: str) -> dict[str, Any]:
    return {"webhookType": kind, "data": {"meetingId": room, "sessionId": session, **more}}


def signed(signer: Signer, body: dict[str, Any] | bytes) -> tuple[bytes, str]:
    raw = body if isinstance(body, bytes) else encode(body)
    return raw, signer.sign(raw)


def stopped_event(room: str, session: str = "sess-1") -> dict[str, Any]:
    path = f"recordings/{room}/{session}/r1.mp4"
    return event(
        "recording-stopped",
        room,
        session,
        fileUrl=f"https://files.example/{path}",
        filePath=path,
    )


def started_job(store: JobStore, room: str, **fields: Any) -> Job:
    """A start job of ``room`` whose start call was made and succeeded."""
    job, _ = store.create(room_id=room, request={"roomId": room}, fields=fields)
    update = store.update(job.id, {"status": "succeeded"}, count_attempt=True)
    assert update.applied and update.job is not None
    return update.job


def snapshot(db: redis.Redis) -> dict[bytes, Any]:
    """Every key of the test db with its serialized value."""
    keys: list[Any] = db.keys()
    return {key: db.dump(key) for key in sorted(keys)}


def get(store: JobStore, job_id: str) -> Job:
    job = store.get(job_id)
    assert job is not None
    return job


# -- verification --------------------------------------------------------------------------------


def test_a_verified_event_moves_the_rooms_start_job_to_started(
    receiver: WebhookReceiver, store: JobStore, signer: Signer, told: list[Job]
) -> None:
    job = started_job(store, "room-a")
    applied = receiver.handle(*signed(signer, event("recording-started", "room-a")))
    assert applied.outcome == "applied" and applied.job is not None
    recording = get(store, job.id).recording
    assert recording is not None
    assert recording["status"] == "started" and recording["session_id"] == "sess-1"
    assert recording["file_url"] is None and recording["updated_at"].endswith("Z")
    assert [j.id for j in told] == [job.id]


@pytest.mark.parametrize(
    "signature",
    [None, "", "   ", "not base64!", "AAAA", "Zm9yZ2Vk"],
    ids=["missing", "empty", "blank", "not-base64", "short", "garbage"],
)
def test_a_missing_or_malformed_signature_is_refused_and_nothing_is_stored(
    receiver: WebhookReceiver,
    store: JobStore,
    rdb: redis.Redis,
    told: list[Job],
    signature: str | None,
) -> None:
    started_job(store, "room-a")
    before = snapshot(rdb)
    with pytest.raises(InvalidWebhookSignature):
        receiver.handle(encode(event("recording-started", "room-a")), signature)
    assert snapshot(rdb) == before and told == []


def test_a_body_signed_with_another_key_is_refused_and_nothing_is_stored(
    receiver: WebhookReceiver, store: JobStore, rdb: redis.Redis, forger: Signer
) -> None:
    started_job(store, "room-a")
    before = snapshot(rdb)
    with pytest.raises(InvalidWebhookSignature) as caught:
        receiver.handle(*signed(forger, event("recording-stopped", "room-a")))
    assert isinstance(caught.value, ValueError)  # the contract: tasks.InvalidWebhookSignature
    assert snapshot(rdb) == before


def test_a_signature_of_other_bytes_is_refused(
    receiver: WebhookReceiver, store: JobStore, rdb: redis.Redis, signer: Signer
) -> None:
    # Given a genuine signature of one body, sent with the same event re-encoded (a space more)
    started_job(store, "room-a")
    raw, signature = signed(signer, event("recording-started", "room-a"))
    before = snapshot(rdb)
    with pytest.raises(InvalidWebhookSignature):
        receiver.handle(raw.replace(b",", b", ", 1), signature)
    assert snapshot(rdb) == before


def test_a_body_over_one_mebibyte_is_refused_before_verifying(
    receiver: WebhookReceiver, store: JobStore, rdb: redis.Redis, signer: Signer
) -> None:
    started_job(store, "room-a")
    padded = event("recording-started", "room-a", pad="x" * MAX_BODY_BYTES)
    before = snapshot(rdb)
    with pytest.raises(WebhookTooLarge):
        receiver.handle(*signed(signer, padded))
    assert snapshot(rdb) == before
    exactly = encode(event("recording-started", "room-a"))
    exactly += b" " * (MAX_BODY_BYTES - len(exactly))  # JSON allows trailing white space
    assert receiver.handle(exactly, signer.sign(exactly)).outcome == "applied"


@pytest.mark.parametrize(
    "raw",
    [b"[1, 2]", b'"recording-started"', b"42", b"null", b"{not json", b"\xff\xfe"],
    ids=["array", "string", "number", "null", "broken", "not-utf8"],
)
def test_a_verified_body_that_is_not_a_json_object_is_refused_and_nothing_is_stored(
    receiver: WebhookReceiver, store: JobStore, rdb: redis.Redis, signer: Signer, raw: bytes
) -> None:
    started_job(store, "room-a")
    before = snapshot(rdb)
    with pytest.raises(InvalidWebhookBody):
        receiver.handle(*signed(signer, raw))
    assert snapshot(rdb) == before


@pytest.mark.parametrize(
    "body",
    [
        {"webhookType": "participant-joined", "data": {"meetingId": "room-a"}},
        {"webhookType": "recording-started"},
        {"webhookType": "recording-started", "data": {"meetingId": ""}},
        {"webhookType": 7, "data": {"meetingId": "room-a"}},
        {"data": ["room-a"]},
        {},
    ],
    ids=["unknown-type", "no-data", "empty-room", "type-not-text", "data-not-object", "empty"],
)
def test_a_verified_event_we_cannot_use_is_acknowledged_and_changes_nothing(
    receiver: WebhookReceiver, store: JobStore, rdb: redis.Redis, signer: Signer, body: Any
) -> None:
    started_job(store, "room-a")
    before = snapshot(rdb)
    assert receiver.handle(*signed(signer, body)).outcome == "ignored"
    assert snapshot(rdb) == before


# -- forward-only state --------------------------------------------------------------------------


def test_a_whole_life_ends_stopped_with_the_file_and_is_counted(
    receiver: WebhookReceiver, store: JobStore, rdb: redis.Redis, signer: Signer, told: list[Job]
) -> None:
    job = started_job(store, "room-a")
    for kind in ("recording-starting", "recording-started", "recording-stopping"):
        assert receiver.handle(*signed(signer, event(kind, "room-a"))).outcome == "applied"
    applied = receiver.handle(*signed(signer, stopped_event("room-a")))
    assert applied.outcome == "applied" and applied.previous == "stopping"
    recording = get(store, job.id).recording
    assert recording is not None and recording["status"] == "stopped"
    assert recording["file_url"] == "https://files.example/recordings/room-a/sess-1/r1.mp4"
    assert recording["file_path"] == "recordings/room-a/sess-1/r1.mp4"
    assert recording["started_at"] and recording["stopped_at"]
    assert [(j.recording or {}).get("status") for j in told] == [
        "starting",
        "started",
        "stopping",
        "stopped",
    ]
    assert store.recording_counts()["stopped"] == 1
    raw = rdb.get(f"{PREFIX}:job:{job.id}")
    assert isinstance(raw, bytes) and b"recordings/room-a/sess-1/r1.mp4" in raw


def test_duplicates_and_late_events_never_move_the_state_back(
    receiver: WebhookReceiver, store: JobStore, rdb: redis.Redis, signer: Signer, told: list[Job]
) -> None:
    job = started_job(store, "room-a")
    stopped = signed(signer, stopped_event("room-a"))
    assert receiver.handle(*stopped).outcome == "applied"
    settled = snapshot(rdb)
    told.clear()
    # When the same event comes again, and the earlier ones arrive late, in any order
    late = ["recording-started", "recording-starting", "recording-stopping", "recording-started"]
    outcomes = [receiver.handle(*stopped).outcome]
    outcomes += [receiver.handle(*signed(signer, event(k, "room-a"))).outcome for k in late]
    outcomes.append(receiver.handle(*signed(signer, event("recording-failed", "room-a"))).outcome)
    # Then nothing changes: not the record, not an index, and nobody is told
    assert outcomes == ["unchanged"] * 6
    assert snapshot(rdb) == settled and told == []
    assert (get(store, job.id).recording or {})["status"] == "stopped"


def test_shuffled_events_reach_the_same_final_state_as_ordered_ones(
    receiver: WebhookReceiver, store: JobStore, signer: Signer
) -> None:
    kinds = ["recording-starting", "recording-started", "recording-stopping"]
    orders = [
        [stopped_event("r0"), *(event(k, "r0") for k in kinds)],
        [event(kinds[1], "r1"), stopped_event("r1"), event(kinds[0], "r1"), event(kinds[2], "r1")],
        [event(kinds[2], "r2"), event(kinds[0], "r2"), stopped_event("r2"), event(kinds[1], "r2")],
    ]
    for room, order in zip(("r0", "r1", "r2"), orders, strict=True):
        job = started_job(store, room)
        for body in order + order:  # every one twice as well
            receiver.handle(*signed(signer, body))
        recording = get(store, job.id).recording
        assert recording is not None and recording["status"] == "stopped", room
        assert recording["file_url"] == f"https://files.example/recordings/{room}/sess-1/r1.mp4"


def test_a_failed_recording_is_final_and_keeps_what_was_known(
    receiver: WebhookReceiver, store: JobStore, signer: Signer
) -> None:
    job = started_job(store, "room-a")
    receiver.handle(*signed(signer, event("recording-started", "room-a")))
    assert receiver.handle(*signed(signer, event("recording-failed", "room-a"))).outcome == (
        "applied"
    )
    assert receiver.handle(*signed(signer, stopped_event("room-a"))).outcome == "unchanged"
    recording = get(store, job.id).recording
    assert recording is not None and recording["status"] == "failed"
    assert recording["session_id"] == "sess-1" and recording["failed_at"]
    assert recording["file_url"] is None


def test_an_event_applies_to_the_rooms_most_recent_start_job_that_made_a_call(
    receiver: WebhookReceiver, store: JobStore, signer: Signer
) -> None:
    # Given an old start, the start that made the call, a stop job and a newer start not yet run
    old = started_job(store, "room-a")
    time.sleep(0.002)
    current = started_job(store, "room-a")
    time.sleep(0.002)
    stop, _ = store.create(
        room_id="room-a", request={"roomId": "room-a"}, fields={"kind": Kind.STOP.value}
    )
    store.update(stop.id, {"status": "succeeded"}, count_attempt=True)
    time.sleep(0.002)
    queued, _ = store.create(room_id="room-a", request={"roomId": "room-a"})
    # When the recording starts
    applied = receiver.handle(*signed(signer, event("recording-started", "room-a")))
    # Then the start job that called the API has it, and no other job
    assert applied.job is not None and applied.job.id == current.id
    assert (get(store, current.id).recording or {})["status"] == "started"
    assert all(get(store, i).recording is None for i in (old.id, stop.id, queued.id))


def test_events_of_a_room_without_a_job_are_kept_apart_forward_only(
    receiver: WebhookReceiver, store: JobStore, signer: Signer
) -> None:
    first = receiver.handle(*signed(signer, event("recording-started", "nobody's")))
    assert first.outcome == "orphan" and first.job is None
    assert receiver.handle(*signed(signer, stopped_event("nobody's"))).outcome == "orphan"
    late = receiver.handle(*signed(signer, event("recording-started", "nobody's")))
    assert late.outcome == "orphan_unchanged"
    orphan = store.orphan_recording("nobody's")
    assert orphan is not None and orphan["status"] == "stopped" and orphan["file_url"]
    assert store.list(room_id="nobody's") == []


# -- session-started wakes a job waiting for the room --------------------------------------------


def waiting_job(store: JobStore, room: str, wait_s: float = 30.0) -> Job:
    """A start job refused as not live, parked in the due set for ``wait_s``."""
    job, _ = store.create(room_id=room, request={"roomId": room})
    error = {"type": "not_live", "message": "HTTP 400: No active session found for this room"}
    update = store.update(
        job.id,
        {"status": "retrying", "error": error},
        count_attempt=True,
        due_at_s=store.clock() + wait_s,
    )
    assert update.applied and update.job is not None
    return update.job


def test_session_started_makes_a_job_waiting_for_the_room_due_at_once(
    receiver: WebhookReceiver, store: JobStore, rdb: redis.Redis, signer: Signer
) -> None:
    job = waiting_job(store, "class-1", wait_s=30)
    due_before = rdb.zscore(f"{PREFIX}:due", job.id)
    assert due_before is not None and due_before > (time.time() + 25) * 1000
    woken = receiver.handle(*signed(signer, event("session-started", "class-1")))
    assert woken.outcome == "woken" and woken.job is not None and woken.job.id == job.id
    due_now = rdb.zscore(f"{PREFIX}:due", job.id)
    assert due_now is not None and due_now <= time.time() * 1000
    after = get(store, job.id)
    assert after.status is Status.RETRYING and after.attempts == job.attempts
    assert after.next_attempt_at is not None


@pytest.mark.parametrize("state", ["succeeded", "retrying-5xx", "queued"])
def test_session_started_leaves_every_other_job_alone(
    receiver: WebhookReceiver, store: JobStore, rdb: redis.Redis, signer: Signer, state: str
) -> None:
    if state == "succeeded":
        started_job(store, "class-1")
    elif state == "queued":
        store.create(room_id="class-1", request={"roomId": "class-1"})
    else:
        job, _ = store.create(room_id="class-1", request={"roomId": "class-1"})
        error = {"type": "server_error", "message": "HTTP 503"}
        store.update(job.id, {"status": "retrying", "error": error}, due_at_s=time.time() + 30)
    before = snapshot(rdb)
    for kind in ("session-started", "session-ended"):
        assert receiver.handle(*signed(signer, event(kind, "class-1"))).outcome == "noted"
    assert snapshot(rdb) == before


# -- the key: pinned, fetched, rotated -----------------------------------------------------------


class CountingFetch:
    """``requests.get`` that counts its calls (the real one, over HTTP)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, url: str, **kwargs: Any) -> requests.Response:
        self.calls += 1
        return requests.get(url, **kwargs)


@pytest.fixture
def vsdk() -> Signer:
    """VideoSDK's signing key in the key tests: the sandbox is given it, so the test signs too."""
    return Signer()


@pytest.fixture
def key_sandbox(vsdk: Signer) -> Iterator[SandboxServer]:
    with SandboxServer(
        api_key="k", secret="s" * 32, private_key_pem=vsdk.private_key_pem
    ) as server:
        yield server


@pytest.mark.parametrize("form", ["json", "data", "text"])
def test_the_key_is_fetched_from_the_api_in_each_of_its_forms(
    key_sandbox: SandboxServer, vsdk: Signer, store: JobStore, form: str
) -> None:
    key_sandbox.faults.public_key_format = form
    fetch = CountingFetch()
    keys = PublicKeys(api_base=key_sandbox.url, fetch=fetch)
    receiver = WebhookReceiver(store=store, keys=keys)
    started_job(store, "room-a")
    raw, signature = signed(vsdk, event("recording-started", "room-a"))
    assert receiver.handle(raw, signature).outcome == "applied"
    assert receiver.handle(raw, signature).outcome == "unchanged"
    assert fetch.calls == 1  # cached


def test_a_rotated_key_is_fetched_again_once_then_forgeries_do_not_refetch(
    key_sandbox: SandboxServer, vsdk: Signer, store: JobStore, rdb: redis.Redis, forger: Signer
) -> None:
    # Given a receiver that fetched the key a moment ago
    fetch, clock = CountingFetch(), Clock()
    keys = PublicKeys(api_base=key_sandbox.url, fetch=fetch, clock=clock)
    receiver = WebhookReceiver(store=store, keys=keys)
    started_job(store, "room-a")
    receiver.handle(*signed(vsdk, event("recording-starting", "room-a")))
    assert fetch.calls == 1
    # When VideoSDK rotates its key and signs the next webhook with it, seconds later
    clock.now += 5
    rotated = Signer()
    key_sandbox.rotate_key(rotated.private_key_pem)
    applied = receiver.handle(*signed(rotated, event("recording-started", "room-a")))
    # Then the key was fetched again exactly once, and the next webhooks need no fetch
    assert applied.outcome == "applied" and fetch.calls == 2
    assert receiver.handle(*signed(rotated, stopped_event("room-a"))).outcome == "applied"
    assert fetch.calls == 2
    # And forgeries refetch at most once per REFETCH_MIN_S
    before = snapshot(rdb)
    for _ in range(5):
        with pytest.raises(InvalidWebhookSignature):
            receiver.handle(*signed(forger, event("recording-failed", "room-a")))
    assert fetch.calls == 2
    clock.now += REFETCH_MIN_S
    with pytest.raises(InvalidWebhookSignature):
        receiver.handle(*signed(forger, event("recording-failed", "room-a")))
    assert fetch.calls == 3 and snapshot(rdb) == before


def test_webhooks_that_failed_with_the_old_key_while_another_refetched_it_verify(
    key_sandbox: SandboxServer, vsdk: Signer
) -> None:
    # Given two webhooks signed with a rotated key, both checked against the old cached key
    fetch = CountingFetch()
    keys = PublicKeys(api_base=key_sandbox.url, fetch=fetch)
    old = keys.current()
    rotated = Signer()
    key_sandbox.rotate_key(rotated.private_key_pem)
    raw, signature = signed(rotated, event("recording-started", "room-a"))
    assert not signature_ok(old, raw, signature)
    # When the first refetches the key, and then the second asks for it again
    first, second = keys.refreshed(), keys.refreshed()
    # Then both verify with the new key, fetched once
    assert first is not None and signature_ok(first, raw, signature)
    assert second is not None and signature_ok(second, raw, signature)
    assert fetch.calls == 2


def test_a_pinned_key_is_never_fetched(signer: Signer, store: JobStore, forger: Signer) -> None:
    fetch = CountingFetch()
    keys = PublicKeys(pinned_pem=signer.public_key_pem, api_base="http://127.0.0.1:9", fetch=fetch)
    receiver = WebhookReceiver(store=store, keys=keys)
    with pytest.raises(InvalidWebhookSignature):
        receiver.handle(*signed(forger, event("recording-started", "room-a")))
    assert receiver.handle(*signed(signer, event("recording-started", "x"))).outcome == "orphan"
    assert fetch.calls == 0 and keys.pinned


def test_a_key_that_cannot_be_fetched_is_key_unavailable_and_nothing_is_stored(
    store: JobStore, rdb: redis.Redis, signer: Signer
) -> None:
    # port 9 (discard) on the loopback: nothing listens
    receiver = WebhookReceiver(store=store, keys=PublicKeys(api_base="http://127.0.0.1:9"))
    before = snapshot(rdb)
    with pytest.raises(WebhookKeyUnavailable):
        receiver.handle(*signed(signer, event("recording-started", "room-a")))
    assert snapshot(rdb) == before


def test_the_key_answer_parser_takes_pem_text_or_json_and_refuses_the_rest(signer: Signer) -> None:
    pem = signer.public_key_pem
    assert pem_of_answer(pem) == pem.strip()
    assert pem_of_answer(json.dumps({"publicKey": pem})) == pem
    assert pem_of_answer(json.dumps({"data": {"publicKey": pem}})) == pem
    for bad in ("{}", '{"data": "x"}', "[]"):
        with pytest.raises(ValueError):
            pem_of_answer(bad)


# -- the public API: tasks.handle_webhook with the process's settings ----------------------------


def test_handle_webhook_verifies_with_the_pinned_key_and_tells_the_notify_task(
    recorder_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    rdb: redis.Redis,
    signer: Signer,
    forger: Signer,
) -> None:
    # Given a pinned key and a job whose notify_task is myapp.on_rec
    monkeypatch.setenv("VIDEOSDK_WEBHOOK_PUBLIC_KEY", signer.public_key_pem)
    monkeypatch.setenv("RECORDER_NOTIFY_QUEUE", "app-notifications")
    reset_process()
    job, _ = runtime.store().create(
        room_id="room-n", request={"roomId": "room-n"}, fields={"notify_task": "myapp.on_rec"}
    )
    runtime.store().update(job.id, {"status": "succeeded"}, count_attempt=True)
    with pytest.raises(tasks.InvalidWebhookSignature):
        tasks.handle_webhook(*signed(forger, stopped_event("room-n")))
    assert rdb.llen("app-notifications") == 0
    # When a genuine event arrives
    applied = tasks.handle_webhook(*signed(signer, stopped_event("room-n")))
    # Then the job is stopped and one Celery message for myapp.on_rec carries the job
    assert applied.outcome == "applied"
    recording = tasks.get_recording("room-n")
    assert recording is not None and recording["status"] == "stopped"
    messages = [json.loads(m) for m in rdb.lrange("app-notifications", 0, -1)]
    assert len(messages) == 1 and messages[0]["headers"]["task"] == "myapp.on_rec"
    (sent,), _, _ = json.loads(base64.b64decode(messages[0]["body"]))
    assert sent["id"] == job.id and sent["recording"]["status"] == "stopped"
    assert sent["recording"]["file_url"].startswith("https://files.example/recordings/room-n")


# -- the ASGI app (driven without a server) ------------------------------------------------------


def asgi_post(
    handle: Callable[[bytes, str | None], Any],
    chunks: list[bytes],
    headers: dict[str, str],
) -> tuple[int, dict[str, Any], int]:
    """POST ``chunks`` to the app; (status, JSON answer, chunks the app read)."""
    app = create_app(lambda: handle)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    read = 0
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {
                "type": "http.request",
                "body": chunks[read - 1],
                "more_body": read < len(chunks),
            }
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), read


def test_the_app_refuses_a_streamed_body_over_the_limit_without_reading_it_all(
    receiver: WebhookReceiver,
) -> None:
    chunk = b"x" * 65536
    chunks = [chunk] * 64  # 4 MiB, no Content-Length
    status, answer, read = asgi_post(receiver.handle, chunks, {"videosdk-signature": "AAAA"})
    assert status == 413 and "body over" in answer["error"]
    assert read == MAX_BODY_BYTES // len(chunk) + 1
    declared = {"content-length": str(MAX_BODY_BYTES + 1), "videosdk-signature": "AAAA"}
    status, _, read = asgi_post(receiver.handle, [b"{}"], declared)
    assert status == 413 and read == 0


def test_the_app_maps_each_refusal_to_its_status(
    receiver: WebhookReceiver, store: JobStore, signer: Signer
) -> None:
    started_job(store, "room-a")
    raw, signature = signed(signer, event("recording-started", "room-a"))
    assert asgi_post(receiver.handle, [raw], {})[:2] == (
        401,
        {"error": "no videosdk-signature header"},
    )
    assert asgi_post(receiver.handle, [raw], {"videosdk-signature": "AAAA"})[0] == 401
    array = b"[]"
    assert asgi_post(receiver.handle, [array], {"videosdk-signature": signer.sign(array)})[0] == 400
    ok = asgi_post(receiver.handle, [raw[:10], raw[10:]], {"videosdk-signature": signature})
    assert ok[:2] == (200, {"outcome": "applied"})
    unavailable = WebhookReceiver(store=store, keys=PublicKeys(api_base="http://127.0.0.1:9"))
    assert asgi_post(unavailable.handle, [raw], {"videosdk-signature": signature})[0] == 503


# -- reconciliation ------------------------------------------------------------------------------


def test_reconciliation_fills_a_lost_recording_from_the_api_listing(
    recorder_env: dict[str, str], sandbox: SandboxServer
) -> None:
    # Given a recording the API made and stopped, whose webhooks never came
    runtime.api_client().start_recording({"roomId": "room-r"})
    sandbox.end_session("room-r")
    listed = sandbox.recordings("room-r")[0]
    job = started_job(runtime.store(), "room-r")
    # When the reconciler looks the job up
    assert runtime.reconciler().reconcile(job.id) == 1
    # Then its recording is what the API lists, and a second look makes no call
    recording = get(runtime.store(), job.id).recording
    assert recording is not None and recording["status"] == "stopped"
    assert recording["file_url"] == listed["file"]["fileUrl"]
    assert recording["session_id"] == listed["sessionId"]
    assert runtime.reconciler().reconcile(job.id) == 0
    assert [c["path"] for c in sandbox.calls()].count("/v2/recordings") == 1


def test_a_listed_entry_stands_for_the_events_it_implies() -> None:
    file = {"fileUrl": "https://f/x.mp4", "filePath": "x.mp4"}
    assert [k for k, _ in events_of({"status": "stopped", "file": file})] == [
        "recording-started",
        "recording-stopped",
    ]
    assert [k for k, _ in events_of({"status": "started", "file": None})] == ["recording-started"]
    assert [k for k, _ in events_of({"status": "FAILED"})] == ["recording-failed"]
    assert events_of({"sessionId": "s", "file": file})[1][1]["fileUrl"] == "https://f/x.mp4"


def test_the_receiver_answers_503_when_redis_does_not_take_the_event(signer: Signer) -> None:
    # Given a receiver whose store cannot reach Redis (nothing listens on the port)
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    receiver = WebhookReceiver(
        store=JobStore(client=down, prefix="t"),
        keys=PublicKeys(pinned_pem=signer.public_key_pem),
    )
    raw, signature = signed(
        signer, {"webhookType": "recording-started", "data": {"meetingId": "r"}}
    )
    app = create_app(lambda: receiver.handle)
    answers: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        answers.append(message)

    scope = {
        "type": "http", "method": "POST", "path": PATH, "query_string": b"",
        "http_version": "1.1", "headers": [
            (b"videosdk-signature", signature.encode()),
            (b"content-length", str(len(raw)).encode()),
        ],
    }  # fmt: skip
    # When it posts a verified event, then it is answered 503 (VideoSDK retries), not 500
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert answers[0]["status"] == 503
