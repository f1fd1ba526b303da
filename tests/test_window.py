"""Start windows: not-live refusals waited out, ``expired`` jobs, and bad windows refused.

Real Runner, real Redis, real HTTP sandbox (answers scripted), as in ``test_runner``.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from tasks.delivery.producer import Producer
from tasks.delivery.state import attempts_used
from tasks.errors import ConfigurationError, ValidationError
from tasks.job import DEFAULT_START_WINDOW_S, Status
from tasks.sandbox.server import SandboxServer
from tasks.settings import Settings
from tasks.store.jobs import JobStore
from tasks.store.scripts import CLAIM_LUA
from tasks.window import (
    SEND_MARGIN_S,
    WAITS_S,
    check_start_window,
    wait_s,
    window_fields,
)
from tests.test_runner import MakeRunner, job, make_runner, starts, store

__all__ = ["make_runner", "store"]  # fixtures shared with test_runner

NOT_LIVE = {"status": 400, "body": {"message": "No active session found for this room"}}
PROCESSING = {
    "status": 400,
    "body": {"message": "Previous recording session is being processed, please try again "
             "after few seconds"},
}  # fmt: skip
LIMIT = {
    "status": 400,
    "body": {"message": "You have reached max limit of recording on organization"},
}


def enqueue(
    store: JobStore, room: str = "room-1", *, due_s: float | None = None, window_s: float = 600
) -> str:
    """A queued job whose window opens at ``due_s`` (default now)."""
    fields = window_fields(time.time() if due_s is None else due_s, window_s)
    created, _ = store.create(room_id=room, request={"roomId": room}, fields=fields)
    return created.id


def make_due_now(store: JobStore, job_id: str) -> None:
    """Bring a deferred job's next try forward (the dispatcher would, at its due time)."""
    assert store.update(job_id, {}, due_at_s=time.time() - 0.001).applied


# -- the window's arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), "600", True, [1]])
def test_a_start_window_must_be_a_positive_number_of_seconds(bad: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        check_start_window(bad)
    assert caught.value.field == "start_window_s"


def test_waits_grow_to_their_cap_and_never_pass_the_deadline() -> None:
    rng = random.Random(1)
    waits = [wait_s("not_live", n, now_s=0, deadline_s=1e9, rng=rng) for n in range(1, 12)]
    assert 1.0 <= waits[0] <= 2.0
    assert all(w <= WAITS_S["not_live"][1] for w in waits) and max(waits) >= 15
    assert wait_s("recording_limit", 1, now_s=0, deadline_s=1e9, rng=rng) >= 7.5
    assert wait_s("not_live", 9, now_s=100, deadline_s=103, rng=rng) <= 3.05


def test_the_default_window_comes_from_recorder_start_window() -> None:
    assert Settings.from_env({}).start_window_s == DEFAULT_START_WINDOW_S
    assert Settings.from_env({"RECORDER_START_WINDOW": "15m"}).start_window_s == 900
    with pytest.raises(ConfigurationError, match="RECORDER_START_WINDOW"):
        Settings.from_env({"RECORDER_START_WINDOW": "-1"})
    extra = Settings.from_env({"RECORDER_NOT_LIVE_PATTERNS": "Host Absent, ,x"})
    assert extra.not_live_patterns[-2:] == ("host absent", "x")


# -- the producer --------------------------------------------------------------------------------


def test_bad_start_window_is_refused_before_anything_is_stored(
    store: JobStore, rdb: redis.Redis
) -> None:
    published: list[str] = []
    producer = Producer(store=store, publish=lambda job_id, room: published.append(job_id))
    for bad in (0, -1, "soon"):
        with pytest.raises(ValidationError, match="start_window_s"):
            producer.enqueue("room-1", start_window_s=bad)  # type: ignore[arg-type]
    assert rdb.keys("t:*") == [] and published == []


def test_a_job_whose_window_closed_before_it_was_enqueued_is_stored_expired_unpublished(
    store: JobStore,
) -> None:
    published: list[str] = []
    producer = Producer(store=store, publish=lambda job_id, room: published.append(job_id))
    slot = datetime.now(UTC) - timedelta(minutes=30)
    late = producer.enqueue("room-1", due_at=slot, start_window_s=600, schedule="standup")
    assert late.status is Status.EXPIRED and late.finished_at is not None
    assert late.error is not None and late.error["type"] == "expired"
    assert "fired by its schedule 1200s after" in late.error["message"]
    assert published == [] and store.due_count() == 0
    # the window is measured from run_at: a job due in an hour has its whole window ahead
    ahead = producer.enqueue("room-2", run_at=datetime.now(UTC) + timedelta(hours=1))
    assert ahead.status is Status.SCHEDULED and ahead.start_window_s == 600
    assert ahead.start_deadline is not None and ahead.start_deadline > ahead.run_at  # type: ignore[operator]


# -- the runner ----------------------------------------------------------------------------------


def test_not_live_is_waited_out_in_redis_without_using_attempts(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer, rdb: redis.Redis
) -> None:
    # Given a room that is not live for three tries, and a budget of ONE attempt
    sandbox.script(NOT_LIVE, NOT_LIVE, NOT_LIVE)
    job_id = enqueue(store)
    runner = make_runner(max_attempts=1)
    for refusal in range(1, 4):
        t0 = time.time()
        assert runner.run(job_id).word == "deferred"
        waiting = job(store, job_id)
        # then it waits in the due set (no lease, no worker slot), retrying, as not_live
        assert waiting.status is Status.RETRYING and waiting.error["type"] == "not_live"  # type: ignore[index]
        assert waiting.attempts == refusal and attempts_used(waiting) == 0
        due_s = rdb.zscore("t:due", job_id) / 1000  # type: ignore[operator]
        assert 0.5 <= due_s - t0 <= WAITS_S["not_live"][0] * 2 ** (refusal - 1) + 0.5
        assert rdb.get(f"t:lease:{job_id}") is None
        make_due_now(store, job_id)
    # when the host has joined, the next try starts the recording on that one attempt
    assert runner.run(job_id).word == "succeeded"
    assert job(store, job_id).attempts == 4 and len(starts(sandbox)) == 4


@pytest.mark.parametrize(
    ("answer", "error_type"), [(PROCESSING, "session_processing"), (LIMIT, "recording_limit")]
)
def test_account_wide_refusals_wait_in_the_window(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer, rdb: redis.Redis,
    answer: dict[str, Any], error_type: str,
) -> None:  # fmt: skip
    sandbox.script(answer)
    job_id = enqueue(store)
    t0 = time.time()
    assert make_runner(max_attempts=1).run(job_id).word == "deferred"
    waiting = job(store, job_id)
    assert waiting.error["type"] == error_type and attempts_used(waiting) == 0  # type: ignore[index]
    first_s = WAITS_S[error_type][0]
    assert first_s / 2 - 0.5 <= rdb.zscore("t:due", job_id) / 1000 - t0 <= first_s + 0.5  # type: ignore[operator]


def test_a_never_live_room_expires_at_its_deadline_with_no_call_after_it(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer, rdb: redis.Redis
) -> None:
    sandbox.script(*[NOT_LIVE] * 10)
    job_id = enqueue(store, window_s=1.5)
    deadline_s = job(store, job_id).extra["_deadline"] / 1000
    runner = make_runner()
    while (word := runner.run(job_id).word) == "deferred":
        due_s = rdb.zscore("t:due", job_id) / 1000  # type: ignore[operator]
        assert due_s <= deadline_s + 0.06  # the next try never waits past the window
        time.sleep(max(0.0, due_s - time.time()))
    assert word == "expired"
    ended = job(store, job_id)
    assert ended.status is Status.EXPIRED and ended.finished_at is not None
    assert ended.error is not None and ended.error["type"] == "expired"
    assert "never went live" in ended.error["message"]
    assert all(call["t"] <= deadline_s for call in starts(sandbox))
    assert rdb.zscore("t:due", job_id) is None and rdb.get(f"t:lease:{job_id}") is None


def test_a_job_reaching_a_worker_after_its_window_expires_with_zero_calls(
    make_runner: MakeRunner, store: JobStore, sandbox: SandboxServer
) -> None:
    # Given a job due an hour ago with a 10-minute window (a backlog after an outage)
    job_id = enqueue(store, due_s=time.time() - 3600, window_s=600)
    delivered = make_runner().run(job_id)
    assert delivered.word == "expired" and delivered.job is not None
    assert delivered.job.status is Status.EXPIRED and delivered.job.attempts == 0
    assert "reached a worker 3000s after" in delivered.job.error["message"]  # type: ignore[index]
    assert starts(sandbox) == []
    # and it is finished: another delivery of its message leaves it alone
    assert make_runner().run(job_id).word == "skipped:finished"


def test_the_claim_and_the_runner_keep_the_same_margin_before_the_deadline() -> None:
    assert f"rec._deadline - {round(SEND_MARGIN_S * 1000)}" in CLAIM_LUA
