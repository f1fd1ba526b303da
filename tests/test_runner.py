"""The retry policy and outcomes of one delivery: real Runner, real Redis, real HTTP sandbox."""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
import redis
import requests
from tenacity import RetryCallState, Retrying, stop_after_delay

from tasks.delivery.runner import Runner
from tasks.delivery.state import DeliveryState
from tasks.errors import ClaimFailed
from tasks.job import Job, Kind, Status
from tasks.sandbox.server import SandboxServer
from tasks.store import connections
from tasks.store.jobs import JobStore
from tasks.store.ratelimit import RedisRateLimiter
from tasks.videosdk.client import ApiClient
from tasks.videosdk.tokens import TokenMinter
from tests.conftest import API_KEY, SECRET

MakeRunner = Callable[..., Runner]


@pytest.fixture
def store(rdb: redis.Redis) -> JobStore:
    return JobStore(client=rdb, prefix="t", ttl_s=3600)


@pytest.fixture
def make_runner(rdb: redis.Redis, store: JobStore, sandbox: SandboxServer) -> MakeRunner:
    def make(**overrides: Any) -> Runner:
        minter = TokenMinter(api_key=API_KEY, secret=overrides.pop("secret", SECRET))
        client = ApiClient(
            base_url=sandbox.url,
            minter=minter,
            connect_timeout_s=1,
            read_timeout_s=overrides.pop("read_timeout_s", 2),
        )
        limiter = RedisRateLimiter(
            client=rdb, rate_per_s=overrides.pop("rate_per_s", 1000), prefix="t"
        )
        options: dict[str, Any] = {
            "max_attempts": 8,
            "backoff_max_s": 0.05,
            "inline_wait_max_s": 3.0,
            "lease_s": 10.0,
            "rng": random.Random(3),
        }
        options.update(overrides)
        return Runner(store=store, client=client, limiter=limiter, minter=minter, **options)

    return make


def enqueue(store: JobStore, room: str = "room-1") -> str:
    job, _ = store.create(room_id=room, request={"roomId": room})
    return job.id


def job(store: JobStore, job_id: str) -> Job:
    found = store.get(job_id)
    assert found is not None
    return found


def starts(sandbox: SandboxServer) -> list[dict[str, Any]]:
    return [c for c in sandbox.calls() if c["path"].endswith("/start")]


def test_success_records_the_response(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    job_id = enqueue(store)
    assert make_runner().run(job_id).word == "succeeded"
    done = job(store, job_id)
    assert done.status is Status.SUCCEEDED and done.attempts == 1 and done.http_status == 200
    assert done.response == "Recording started successfully"
    assert done.finished_at is not None and done.error is None
    assert sandbox.recording_rooms() == {"room-1"}


def test_503_three_times_then_200_succeeds_on_the_fourth_attempt(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    sandbox.script({"status": 503}, {"status": 503}, {"status": 503})
    job_id = enqueue(store)
    assert make_runner().run(job_id).word == "succeeded"
    assert job(store, job_id).attempts == 4
    assert [c["status"] for c in starts(sandbox)] == [503, 503, 503, 200]


NOT_LIVE = {"status": 400, "body": {"message": "No active session found for this room"}}


@pytest.mark.parametrize(
    ("answers", "words", "rate_per_s"),
    [
        ([], ["succeeded"], 1000),
        ([{"status": 503}], ["succeeded"], 1000),  # retried
        ([{"status": 400}], ["failed"], 1000),  # a refusal ends the attempts
        ([{"status": 503}] * 3, ["failed"], 1000),  # attempts used up
        ([{"status": 429, "headers": {"Retry-After": "30"}}], ["deferred"], 1000),  # a backoff
        ([NOT_LIVE], ["failed"], 1000),  # a window refusal (no window on this record: failed)
        ([], ["succeeded", "deferred"], 0.1),  # the rate limit saturated: the second deferred
    ],
    ids=["ok", "retried", "refused", "attempts-used-up", "backoff", "not-live", "rate-limited"],
)
def test_a_delivery_leaves_nothing_for_the_garbage_collector(
    make_runner: MakeRunner,
    store: JobStore,
    sandbox: SandboxServer,
    answers: list[dict[str, Any]],
    words: list[str],
    rate_per_s: float,
) -> None:
    """A delivery's objects are freed by reference counting as it ends, however it ends: none
    is left in a reference cycle for the collector (whose collections of ~20 objects a job
    stopped a 200/s worker for 40-60 ms)."""
    runner = make_runner(max_attempts=3, rate_per_s=rate_per_s, inline_wait_max_s=0.5)
    sandbox.script(*answers)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection would free is kept in gc.garbage
    try:
        ended = [runner.run(enqueue(store, f"room-{i}")).word for i in range(len(words))]
        gc.collect()
        left = [
            type(o).__name__
            for o in gc.garbage
            if isinstance(o, DeliveryState | Job | Retrying | RetryCallState | Exception)
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert ended == words
    assert left == []


def test_deliveries_in_threads_keep_their_own_attempts(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    """One retry controller serves every thread of a worker: each delivery still counts and
    stops on its own attempts, whatever the others' budgets."""
    runner = make_runner(max_attempts=3)
    job_ids = [enqueue(store, f"room-{i}") for i in range(6)]
    # Given half the jobs with an attempt used already, so the budgets differ
    for job_id in job_ids[::2]:
        assert store.update(job_id, {}, count_attempt=True).applied
    sandbox.faults.error_rate = 1.0  # every unscripted start answers a 5xx
    words: list[str] = []
    threads = [
        threading.Thread(target=lambda j=j: words.append(runner.run(j).word)) for j in job_ids
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # Then each made the attempts left to it, two or three, and no more
    assert words == ["failed"] * 6
    assert [job(store, j).attempts for j in job_ids] == [3] * 6
    assert len(starts(sandbox)) == 15  # 3 x 2 + 3 x 3


def test_429_retry_after_seconds_is_honoured(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    sandbox.script({"status": 429, "headers": {"Retry-After": "1"}})
    job_id = enqueue(store)
    assert make_runner().run(job_id).word == "succeeded"
    first, second = starts(sandbox)
    assert second["t"] - first["t"] >= 1.0


def test_429_retry_after_http_date_is_honoured(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    # HTTP-dates have whole seconds: 3 s ahead is at least 2 s of wait
    when = format_datetime(datetime.fromtimestamp(time.time() + 3, UTC), usegmt=True)
    sandbox.script({"status": 429, "headers": {"Retry-After": when}})
    job_id = enqueue(store)
    assert make_runner().run(job_id).word == "succeeded"
    first, second = starts(sandbox)
    assert second["t"] - first["t"] >= 2.0


def test_429_pauses_other_workers_too(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    sandbox.script({"status": 429, "headers": {"Retry-After": "1"}})
    first = enqueue(store, "room-a")
    make_runner(max_attempts=1).run(first)  # fails, but sets the shared cool-down
    t0 = time.time()
    other = enqueue(store, "room-b")
    assert make_runner().run(other).word == "succeeded"  # a second "worker"
    assert starts(sandbox)[-1]["t"] - t0 >= 0.8


def test_400_is_not_retried(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    sandbox.script({"status": 400, "body": {"message": "bad roomId"}})
    job_id = enqueue(store)
    assert make_runner().run(job_id).word == "failed"
    failed = job(store, job_id)
    assert failed.attempts == 1 and failed.http_status == 400
    assert failed.error == {"type": "invalid_params", "message": "HTTP 400: bad roomId"}
    assert len(starts(sandbox)) == 1


def test_404_room_not_found_fails_at_once(make_runner: MakeRunner, store: JobStore) -> None:
    job_id = enqueue(store, "missing-room")
    assert make_runner().run(job_id).word == "failed"
    assert job(store, job_id).error["type"] == "room_not_found"  # type: ignore[index]


def test_attempts_are_exhausted_after_max_attempts(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    sandbox.script(*[{"status": 502}] * 5)
    job_id = enqueue(store)
    assert make_runner(max_attempts=3).run(job_id).word == "failed"
    failed = job(store, job_id)
    assert failed.attempts == 3 and len(starts(sandbox)) == 3
    assert failed.error is not None and failed.error["type"] == "server_error"
    assert failed.error["message"].startswith("gave up after 3 attempts")


def test_timeout_then_already_started_means_succeeded(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    # Given the first call starts the recording but answers after the client gave up
    sandbox.script({"delay_s": 2.0, "start": True, "status": 200})
    job_id = enqueue(store)
    # When the retry is refused as "already started"
    assert make_runner(read_timeout_s=0.5).run(job_id).word == "succeeded"
    # Then the job succeeded: its own first attempt started the recording
    done = job(store, job_id)
    assert done.attempts == 2 and done.maybe_started and done.http_status == 400
    assert [c["status"] for c in starts(sandbox)][1] == 400


def test_already_recording_with_no_earlier_attempt_fails(
    make_runner: MakeRunner, store: JobStore
) -> None:
    first, second = enqueue(store, "room-x"), enqueue(store, "room-x")
    runner = make_runner()
    assert runner.run(first).word == "succeeded"
    assert runner.run(second).word == "failed"
    assert job(store, second).error["type"] == "already_recording"  # type: ignore[index]


def test_401_re_mints_the_token_once(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    sandbox.script({"status": 401})
    runner = make_runner()
    job_id = enqueue(store)
    assert runner.run(job_id).word == "succeeded"
    assert runner.minter.minted == 2 and job(store, job_id).attempts == 2


def test_a_wrong_secret_fails_after_one_re_mint(make_runner: MakeRunner, store: JobStore) -> None:
    job_id = enqueue(store)
    assert make_runner(secret="wrong-" + SECRET).run(job_id).word == "failed"
    failed = job(store, job_id)
    assert failed.attempts == 2 and failed.error["type"] == "unauthorized"  # type: ignore[index]


def test_a_long_backoff_hands_the_job_back_instead_of_holding_the_slot(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer, rdb: redis.Redis
) -> None:
    sandbox.script({"status": 429, "headers": {"Retry-After": "30"}})
    job_id = enqueue(store)
    t0 = time.monotonic()
    assert make_runner().run(job_id).word == "deferred"
    assert time.monotonic() - t0 < 2
    waiting = job(store, job_id)
    assert waiting.status is Status.RETRYING and waiting.attempts == 1
    assert waiting.error["type"] == "rate_limited"  # type: ignore[index]
    assert waiting.next_attempt_at is not None
    assert rdb.zscore("t:due", job_id) is not None
    assert rdb.get(f"t:lease:{job_id}") is None


def test_a_rate_limit_wait_does_not_use_an_attempt(
    make_runner: MakeRunner, store: JobStore, rdb: redis.Redis
) -> None:
    runner = make_runner(rate_per_s=0.1, inline_wait_max_s=0.5)
    assert runner.run(enqueue(store, "room-a")).word == "succeeded"
    second = enqueue(store, "room-b")
    assert runner.run(second).word == "deferred"
    waiting = job(store, second)
    assert waiting.status is Status.QUEUED and waiting.attempts == 0
    assert waiting.error["type"] == "rate_limit_wait"  # type: ignore[index]
    assert 8 < rdb.zscore("t:due", second) / 1000 - time.time() <= 10  # type: ignore[operator]


def test_a_finished_job_is_never_called_again(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    job_id = enqueue(store)
    runner = make_runner()
    runner.run(job_id)
    assert runner.run(job_id).word == "skipped:finished"
    assert len(starts(sandbox)) == 1


def test_a_cancelled_job_never_reaches_the_api(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    job_id = enqueue(store)
    store.update(job_id, {"status": "cancelled"})
    assert make_runner().run(job_id).word == "skipped:finished"
    assert starts(sandbox) == []


def test_a_call_cut_short_by_a_dead_worker_counts_as_maybe_started(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    # Given a delivery died mid-call after the API had started the recording
    job_id = enqueue(store)
    store.update(job_id, {"status": "running", "in_flight": True}, count_attempt=True)
    token = TokenMinter(api_key=API_KEY, secret=SECRET).token()
    started = requests.post(
        sandbox.url + "/v2/recordings/start",
        json={"roomId": "room-1"},
        headers={"Authorization": token},
        timeout=5,
    )
    assert started.status_code == 200
    # When the job is delivered again and the API refuses it as already recording
    assert make_runner().run(job_id).word == "succeeded"
    # Then it succeeded, with the refusal as its last response
    done = job(store, job_id)
    assert done.attempts == 2 and done.maybe_started and done.http_status == 400


def test_a_delivery_while_another_holds_the_job_waits_for_its_lease(
    make_runner: MakeRunner, store: JobStore, rdb: redis.Redis, sandbox: SandboxServer
) -> None:
    job_id = enqueue(store)
    assert store.claim(job_id, token="other-worker", lease_s=5).kind == "claimed"
    assert make_runner().run(job_id).word == "skipped:leased"
    assert starts(sandbox) == []
    due_s = rdb.zscore("t:due", job_id) / 1000  # type: ignore[operator]
    assert 4 < due_s - time.time() <= 5.5


def test_a_claim_that_fails_on_a_stale_connection_is_retried_and_the_job_runs(
    make_runner: MakeRunner,
    store: JobStore,
    sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the first claim hits a connection Redis closed while it restarted
    job_id = enqueue(store)
    claim = store.claim
    failures = [redis.ConnectionError("Connection closed by server.")]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return claim(*args, **kwargs)

    monkeypatch.setattr(store, "claim", flaky)
    # Then the claim is tried again and the delivery goes on
    assert make_runner().run(job_id).word == "succeeded"
    assert len(sandbox.calls()) == 1


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("refused"),
        redis.exceptions.OutOfMemoryError("OOM command not allowed"),
    ],
)
def test_a_claim_redis_never_takes_raises_claim_failed_and_stores_nothing(
    make_runner: MakeRunner,
    store: JobStore,
    sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    job_id = enqueue(store)
    before = store.get(job_id)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(store, "claim", down)
    monkeypatch.setattr(
        connections, "THROUGH_OUTAGE", connections.THROUGH_OUTAGE.copy(stop=stop_after_delay(0.3))
    )
    with pytest.raises(ClaimFailed):
        make_runner().run(job_id)
    assert store.get(job_id) == before and sandbox.calls() == []


def test_an_unexpected_exception_in_an_attempt_is_a_recorded_internal_error_retried(
    make_runner: MakeRunner,
    store: JobStore,
    sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a client that fails once on something no API answer explains
    runner = make_runner()
    real = runner.client.call
    surprises = [OverflowError("cannot convert float infinity to integer")]

    def call(kind: Kind, body: dict[str, Any]) -> Any:
        if surprises:
            raise surprises.pop()
        return real(kind, body)

    monkeypatch.setattr(runner.client, "call", call)
    # Then that attempt is a failed attempt like a 5xx, and the next one succeeds
    job_id = enqueue(store)
    assert runner.run(job_id).word == "succeeded"
    job = store.get(job_id)
    assert job is not None and job.attempts == 2 and job.maybe_started
    assert len(sandbox.calls()) == 1


def test_a_delivery_that_always_fails_unexpectedly_ends_failed_as_internal_error_not_lost(
    make_runner: MakeRunner,
    store: JobStore,
    sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = make_runner(max_attempts=3)

    def call(kind: Kind, body: dict[str, Any]) -> Any:
        raise requests.exceptions.InvalidSchema("No connection adapters for 'ftp://u:pw@host'")

    monkeypatch.setattr(runner.client, "call", call)
    job_id = enqueue(store)
    assert runner.run(job_id).word == "failed"
    job = store.get(job_id)
    assert job is not None and job.error is not None and job.attempts == 3
    assert job.error["type"] == "internal_error" and job.lost_deliveries == 0
    assert "InvalidSchema" in job.error["message"] and "pw@" not in job.error["message"]
    assert sandbox.calls() == []


def test_a_throttle_answering_retry_after_zero_is_waited_out_with_the_ordinary_backoff(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    # Given an API that takes one start every 2 s and answers the rest 429 "Retry-After: 0"
    sandbox.faults.rate_limit_per_s = 0.5
    sandbox.faults.retry_after_s = 0.0
    runner = make_runner(backoff_max_s=1.0)
    assert runner.run(enqueue(store, "room-a")).word == "succeeded"
    # Then a start refused that way waits its backoff each time, and gets through
    job_id = enqueue(store, "room-b")
    assert runner.run(job_id).word == "succeeded"
    job = store.get(job_id)
    assert job is not None and 2 <= job.attempts <= 8
    assert [c["status"] for c in sandbox.calls()][-1] == 200


@pytest.mark.parametrize("api_clock_offset_s", [-2.0, -20.0, 2.0, 20.0])
def test_a_few_seconds_of_clock_skew_with_the_api_fail_no_job(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer, api_clock_offset_s: float
) -> None:
    # Given an API whose clock runs behind (or ahead of) ours, refusing tokens "not yet valid"
    sandbox.faults.clock_offset_s = api_clock_offset_s
    runner = make_runner()
    # Then fresh tokens are accepted all the same
    outcomes = [runner.run(enqueue(store, f"room-{i}")).word for i in range(4)]
    assert outcomes == ["succeeded"] * 4
    assert {c["status"] for c in sandbox.calls()} == {200}


def test_a_cooldown_begun_while_waiting_for_the_slot_holds_the_call_until_it_ends(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    # Given a job waiting for its slot, during which another worker's 429 asks for 0.4 s of quiet
    began: list[float] = []
    runner: Runner

    def sleep(seconds: float) -> None:
        if not began:
            runner.limiter.on_rate_limited(0.4)
            began.append(time.time())
        time.sleep(seconds)

    runner = make_runner(rate_per_s=20, sleep=sleep)
    job_id = enqueue(store)
    assert runner.limiter.acquire(max_wait_s=1).reserved  # the next slot is 50 ms away
    # When it runs
    assert runner.run(job_id).word == "succeeded"
    # Then its one call left after the cool-down, and the attempt began once, after it too
    (call,) = starts(sandbox)
    assert began and call["t"] >= began[0] + 0.4
    assert job(store, job_id).attempts == 1


def test_the_write_ahead_is_refused_during_a_cooldown(store: JobStore, rdb: redis.Redis) -> None:
    limiter = RedisRateLimiter(client=rdb, rate_per_s=10, prefix="t")
    job_id = enqueue(store)
    limiter.on_rate_limited(30.0)
    running = {"status": Status.RUNNING.value}
    refused = store.update(
        job_id, running, count_attempt=True, unless_cooldown=limiter.cooldown_key
    )
    assert not refused.applied and refused.reason == "cooldown"
    assert job(store, job_id).status is Status.QUEUED and job(store, job_id).attempts == 0
    rdb.delete(limiter.cooldown_key)  # the cool-down is over
    begun = store.update(job_id, running, count_attempt=True, unless_cooldown=limiter.cooldown_key)
    assert begun.applied and begun.job is not None and begun.job.attempts == 1
