from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis

from tasks.delivery.dispatcher import MIN_PAUSE_S, Dispatcher
from tasks.job import Status
from tasks.store.connections import own_client
from tasks.store.jobs import Claim, JobStore
from tasks.store.ratelimit import RedisRateLimiter


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(rdb: redis.Redis, clock: Clock) -> JobStore:
    return JobStore(client=rdb, prefix="t", ttl_s=3600, clock=clock)


def free_slot(store: JobStore) -> tuple[list[str], list[object]]:
    """A GCRA step of a limiter far above any test's rate: the slot is always free."""
    return RedisRateLimiter(client=store.client, rate_per_s=1e6, prefix="t").step(max_wait_s=0)


def claim_with_slot(
    store: JobStore,
    job_id: str,
    token: str = "a",
    *,
    max_attempts: int = 3,
    rate_step: tuple[list[str], list[object]] | None = None,
) -> Claim:
    """A claim that may begin the first attempt: a free slot unless ``rate_step`` says else."""
    return store.claim(
        job_id,
        token=token,
        lease_s=5,
        rate_step=rate_step or free_slot(store),
        max_attempts=max_attempts,
        max_lost_deliveries=3,
    )


def new(store: JobStore, room: str = "room-1", **kw: object) -> str:
    job, created = store.create(room_id=room, request={"roomId": room}, **kw)  # type: ignore[arg-type]
    assert created
    return job.id


def test_create_stores_a_queued_record_with_contract_fields(store: JobStore) -> None:
    job_id = new(store)
    job = store.get(job_id)
    assert job is not None
    data = job.to_dict()
    assert data["status"] == "queued"
    assert data["attempts"] == 0
    assert data["request"] == {"roomId": "room-1"}
    assert data["finished_at"] is None and data["error"] is None and data["http_status"] is None
    assert data["created_at"].endswith("Z")
    assert not any(k.startswith("_") for k in data)


def test_record_expires_with_the_ttl(store: JobStore, rdb: redis.Redis) -> None:
    job_id = new(store)
    assert 3590 <= rdb.ttl(f"t:job:{job_id}") <= 3600
    store.update(job_id, {"status": "running"})
    assert 3590 <= rdb.ttl(f"t:job:{job_id}") <= 3600, "updates keep the original expiry"


def test_same_idempotency_key_returns_the_existing_job(store: JobStore) -> None:
    first = new(store, idempotency_key="abc")
    again, created = store.create(room_id="room-1", request={}, idempotency_key="abc")
    assert not created and again.id == first
    assert len(store.list()) == 1


def test_idempotency_is_atomic_under_concurrent_creates(store: JobStore) -> None:
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        job, _ = store.create(room_id="r", request={}, idempotency_key="same")
        ids.append(job.id)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1


def test_status_never_goes_backwards(store: JobStore) -> None:
    job_id = new(store)
    done = store.update(job_id, {"status": "succeeded"}, allowed_from={Status.QUEUED})
    assert done.applied and done.job is not None and done.job.finished_at is not None
    late = store.update(
        job_id, {"status": "running"}, allowed_from={Status.QUEUED, Status.RETRYING}
    )
    assert not late.applied and late.reason == "status"
    job = store.get(job_id)
    assert job is not None and job.status is Status.SUCCEEDED


def test_update_with_a_lease_applies_only_for_its_holder(store: JobStore) -> None:
    job_id = new(store)
    assert store.claim(job_id, token="a", lease_s=10).kind == "claimed"
    assert store.claim(job_id, token="b", lease_s=10).kind == "leased"
    assert not store.update(job_id, {"status": "running"}, lease_token="b").applied
    assert store.update(job_id, {"status": "running"}, lease_token="a").applied


def test_claim_refuses_finished_and_not_yet_due_jobs(store: JobStore, clock: Clock) -> None:
    finished = new(store)
    store.update(finished, {"status": "failed"})
    assert store.claim(finished, token="t", lease_s=5).kind == "finished"
    scheduled = new(store, run_at_s=clock.now + 60)
    assert store.claim(scheduled, token="t", lease_s=5).kind == "not_due"
    assert store.claim("nope", token="t", lease_s=5).kind == "missing"


def test_claim_counts_deliveries(store: JobStore) -> None:
    job_id = new(store)
    store.claim(job_id, token="a", lease_s=0.05)
    claim = store.claim(job_id, token="b", lease_s=5)
    assert claim.kind in {"leased", "claimed"}
    store.client.delete(f"t:lease:{job_id}")
    claim = store.claim(job_id, token="c", lease_s=5)
    assert claim.kind == "claimed" and claim.job is not None and claim.job.deliveries >= 2


def test_lists_newest_first_by_room_and_status(store: JobStore, clock: Clock) -> None:
    ids = []
    for i in range(5):
        clock.now += 1
        ids.append(new(store, room="a" if i % 2 == 0 else "b"))
    store.update(ids[4], {"status": "failed"})
    assert [j.id for j in store.list()] == ids[::-1]
    assert [j.id for j in store.list(room_id="a")] == [ids[4], ids[2], ids[0]]
    assert [j.id for j in store.list(room_id="a", status=Status.QUEUED)] == [ids[2], ids[0]]
    assert [j.id for j in store.list(status=Status.FAILED)] == [ids[4]]
    assert [j.id for j in store.list(limit=2)] == [ids[4], ids[3]]
    assert store.counts()["queued"] == 4 and store.counts()["failed"] == 1


def test_expired_jobs_leave_the_indexes(store: JobStore, clock: Clock, rdb: redis.Redis) -> None:
    old = new(store)
    rdb.delete(f"t:job:{old}")  # as its TTL would
    clock.now += 3601
    new(store)
    assert old not in [j.id for j in store.list()]
    assert rdb.zscore("t:jobs", old) is None
    assert store.counts()["queued"] == 1


def test_due_jobs_are_dispatched_once_even_with_racing_dispatchers(
    store: JobStore, clock: Clock
) -> None:
    ids = {new(store, room=f"r{i}", run_at_s=clock.now + 5) for i in range(50)}
    assert store.pop_due() == []
    clock.now += 5
    got: list[str] = []
    barrier = threading.Barrier(4)

    def pop() -> None:
        barrier.wait()
        items = store.pop_due(limit=20)
        got.extend(i for i, _room, _token in items)
        store.dispatched(items)

    threads = [threading.Thread(target=pop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got_again = [i for i, _r, _t in store.pop_due(limit=100)]
    assert sorted(got + got_again) == sorted(ids)
    assert len(got + got_again) == len(ids)
    assert all(store.get(i).status is Status.QUEUED for i in ids)  # type: ignore[union-attr]


def test_unconfirmed_dispatch_is_handed_out_again(store: JobStore, clock: Clock) -> None:
    job_id = new(store, run_at_s=clock.now + 1)
    clock.now += 1
    assert [i for i, _r, _t in store.pop_due()] == [job_id]
    assert store.pop_due() == []
    clock.now += 31  # the dispatcher died before publishing
    assert [i for i, _r, _t in store.pop_due()] == [job_id]


def test_a_dispatcher_batch_that_raised_is_handed_out_again_whole(
    store: JobStore, clock: Clock
) -> None:
    # Given three due jobs and a batch whose messages cannot be written when it closes
    ids = sorted(new(store, room=f"r{i}", run_at_s=clock.now + 1) for i in range(3))
    clock.now += 1
    published: list[str] = []

    @contextmanager
    def failing_batch() -> Iterator[Callable[[str, str], None]]:
        yield lambda job_id, _room: published.append(job_id)
        raise ConnectionError("a batch of due jobs was not published: refused")

    dispatcher = Dispatcher(store=store, publish=lambda *_: None, open_batch=failing_batch)
    with pytest.raises(ConnectionError):
        dispatcher.run_once()
    # Then none of them is confirmed: each is handed out again, not left without a message
    assert sorted(published) == ids
    assert store.pop_due() == []
    clock.now += 31
    assert sorted(i for i, _r, _t in store.pop_due()) == ids


def test_a_dispatcher_holds_a_backlog_back_until_the_queue_drains(
    store: JobStore, clock: Clock
) -> None:
    # Given 450 jobs due at once, batches of 200, and a queue that takes 300 messages ahead
    for i in range(450):
        new(store, room=f"r{i}", run_at_s=clock.now + 1)
    clock.now += 1
    queue: list[str] = []
    dispatcher = Dispatcher(
        store=store,
        publish=lambda job_id, _room: queue.append(job_id),
        queue_depth=lambda: len(queue),
        queue_ahead=300,
        batch=200,
    )
    # When it turns: a full batch, then the queue holds 200 (< 300): one more batch, then 400
    assert dispatcher.run_once() == 400
    assert dispatcher.pause_s() == dispatcher.interval_s  # a backlog: no hurry to look again
    assert dispatcher.run_once() == 0  # the queue has not drained
    # Then the rest goes once the workers have taken messages, and the backlog is gone
    del queue[:350]
    assert dispatcher.run_once() == 50
    assert store.due_count() == 0


def test_a_dispatcher_turns_again_when_the_earliest_job_falls_due(
    store: JobStore, clock: Clock
) -> None:
    dispatcher = Dispatcher(store=store, publish=lambda *_: None)
    assert dispatcher.pause_s() == dispatcher.interval_s  # nothing waits
    new(store, run_at_s=clock.now + 0.12)
    assert dispatcher.pause_s() == pytest.approx(0.12, abs=1e-3)
    new(store, run_at_s=clock.now + 0.03)
    assert dispatcher.pause_s() == pytest.approx(0.03, abs=1e-3)
    clock.now += 0.05  # one is due, not published yet: as soon as may be
    assert dispatcher.pause_s() == MIN_PAUSE_S
    assert dispatcher.run_once() == 1
    assert dispatcher.pause_s() == pytest.approx(0.07, abs=1e-3)
    clock.now += 0.07
    assert dispatcher.run_once() == 1
    assert dispatcher.pause_s() == dispatcher.interval_s


def test_cancelled_jobs_are_never_dispatched(store: JobStore, clock: Clock) -> None:
    job_id = new(store, run_at_s=clock.now + 1)
    result = store.update(
        job_id, {"status": "cancelled"}, allowed_from={Status.SCHEDULED}, clear_due=True
    )
    assert result.applied
    clock.now += 2
    assert store.pop_due() == []


def test_a_new_queued_job_is_not_in_the_due_set_and_a_scheduled_one_is(
    store: JobStore, clock: Clock, rdb: redis.Redis
) -> None:
    new(store)  # its message is the producer's to publish
    scheduled = new(store, run_at_s=clock.now + 60)
    assert rdb.zrange("t:due", 0, -1, withscores=True) == [
        (scheduled.encode(), (clock.now + 60) * 1000)
    ]


def test_sweep_finds_a_claimed_job_whose_holder_died(
    store: JobStore, clock: Clock, rdb: redis.Redis
) -> None:
    job_id = new(store)
    store.claim(job_id, token="host:1:2:dead", lease_s=5)
    assert store.sweep(held_quiet_s=1, queued_quiet_s=900) == 0, "the lease is live"
    rdb.delete(f"t:lease:{job_id}")  # as its expiry would
    clock.now += 2
    assert store.sweep(held_quiet_s=1, queued_quiet_s=900) == 1
    assert [i for i, _r, _t in store.pop_due()] == [job_id]
    again = store.claim(job_id, token="host:3:4:new", lease_s=5)
    assert again.kind == "claimed" and again.job is not None
    assert again.job.lost_deliveries == 1 and again.job.deliveries == 2


def test_sweep_republishes_a_queued_job_only_after_the_quiet_period_and_once(
    store: JobStore, clock: Clock
) -> None:
    job_id = new(store)
    assert store.sweep(held_quiet_s=1, queued_quiet_s=900) == 0
    clock.now += 901
    assert store.sweep(held_quiet_s=1, queued_quiet_s=900) == 1
    store.dispatched(store.pop_due())
    clock.now += 10
    assert store.sweep(held_quiet_s=1, queued_quiet_s=900) == 0
    clock.now += 901
    assert store.sweep(held_quiet_s=1, queued_quiet_s=900) == 1, "still lost: once more"
    assert job_id


def confirmed(store: JobStore, clock: Clock) -> str:
    """A queued job, as the producer stores it before publishing its message."""
    job, _ = store.create(room_id="r", request={"roomId": "r"})
    return job.id


def test_sweep_republishes_a_quiet_job_at_once_when_the_queue_is_empty(
    store: JobStore, clock: Clock
) -> None:
    # Given a published job nobody claimed (its message was acked without a claim, or taken
    # by a worker that was then killed)
    job_id = confirmed(store, clock)
    clock.now += 16
    # Then with messages still waiting in the queue it may simply be in line
    assert store.sweep(held_quiet_s=1, queued_quiet_s=900, lost_quiet_s=15) == 0
    # but with the queue empty its message is gone: it goes back to the due set
    assert store.sweep(held_quiet_s=1, queued_quiet_s=900, lost_quiet_s=15, queue_empty=True) == 1
    assert [i for i, _r, _t in store.pop_due()] == [job_id]


def test_sweep_republishes_a_job_published_well_before_one_already_claimed(
    store: JobStore, clock: Clock
) -> None:
    # Given a job whose message is gone, and a later one a worker has claimed (first in,
    # first out: the lost one's message left the queue before it)
    lost = confirmed(store, clock)
    clock.now += 20
    store.claim(confirmed(store, clock), token="h:1:2:a", lease_s=30)
    clock.now += 1
    assert store.sweep(held_quiet_s=1, queued_quiet_s=900, lost_quiet_s=15) == 1
    assert [i for i, _r, _t in store.pop_due()] == [lost]


def test_sweep_leaves_a_job_in_line_behind_claimed_ones_alone(
    store: JobStore, clock: Clock
) -> None:
    # Given a backlog: the claimed job was published before the waiting one
    first = confirmed(store, clock)
    clock.now += 20
    confirmed(store, clock)
    clock.now += 60
    store.claim(first, token="h:1:2:a", lease_s=30)
    assert store.sweep(held_quiet_s=1, queued_quiet_s=900, lost_quiet_s=15) == 0


def test_a_claim_retried_after_its_reply_was_lost_gets_the_same_claim(
    store: JobStore, rdb: redis.Redis
) -> None:
    job_id = new(store)
    first = claim_with_slot(store, job_id)
    again = claim_with_slot(store, job_id)  # the same token: its first try had landed
    assert (again.kind, again.began) == ("claimed", True) == (first.kind, first.began)
    assert again.job is not None and again.job.attempts == 1 and again.job.lost_deliveries == 0


def test_sweep_leaves_finished_and_released_jobs_alone(
    store: JobStore, clock: Clock, rdb: redis.Redis
) -> None:
    job_id = new(store)
    store.claim(job_id, token="a", lease_s=5)
    store.update(job_id, {"status": "succeeded"}, lease_token="a", release_lease=True)
    assert rdb.zcard("t:held") == 0
    clock.now += 10_000
    assert store.sweep(held_quiet_s=1, queued_quiet_s=900) == 0


def test_claim_can_begin_the_first_attempt_in_the_same_round_trip(
    store: JobStore, rdb: redis.Redis
) -> None:
    job_id = new(store)
    claim = claim_with_slot(store, job_id)
    assert claim.kind == "claimed" and claim.began and claim.job is not None
    assert claim.job.status is Status.RUNNING and claim.job.attempts == 1 and claim.job.in_flight
    assert rdb.zscore("t:status:running", job_id) is not None
    assert rdb.zscore("t:status:queued", job_id) is None


def test_claim_begins_nothing_without_a_free_rate_slot_and_takes_none_then(
    store: JobStore, rdb: redis.Redis
) -> None:
    first, second = new(store), new(store, "room-2")
    limiter = RedisRateLimiter(client=rdb, rate_per_s=0.5, prefix="t")  # one slot per 2 s
    one = claim_with_slot(store, first, rate_step=limiter.step(max_wait_s=0))
    tat = rdb.get("t:rl:tat")
    two = claim_with_slot(store, second, "b", rate_step=limiter.step(max_wait_s=0))
    assert one.began and not two.began
    assert two.kind == "claimed" and two.job is not None and two.job.status is Status.QUEUED
    assert rdb.get("t:rl:tat") == tat  # the refused claim reserved nothing


def test_a_claim_of_a_finished_job_takes_no_rate_slot(store: JobStore, rdb: redis.Redis) -> None:
    job_id = new(store)
    store.update(job_id, {"status": "succeeded"})
    claim = claim_with_slot(store, job_id)
    assert claim.kind == "finished" and rdb.exists("t:rl:tat") == 0


def test_claim_begins_nothing_when_the_delivery_will_not_call(store: JobStore) -> None:
    job_id = new(store)
    store.update(job_id, {"status": "retrying"}, count_attempt=True)
    claim = claim_with_slot(store, job_id, max_attempts=1)
    assert claim.kind == "claimed" and not claim.began
    assert claim.job is not None and claim.job.attempts == 1


def test_a_begun_claim_after_a_lost_call_marks_the_job_maybe_started(store: JobStore) -> None:
    job_id = new(store)
    store.update(job_id, {"status": "running", "in_flight": True}, count_attempt=True)
    claim = claim_with_slot(store, job_id, "b", max_attempts=8)
    assert claim.began and claim.job is not None and claim.job.maybe_started


def test_metrics_travel_with_an_update_even_when_it_is_refused(
    store: JobStore, rdb: redis.Redis
) -> None:
    job_id = new(store)
    store.update(job_id, {"status": "succeeded"})
    refused = store.update(
        job_id, {"status": "failed"}, allowed_from={Status.RUNNING}, metrics={"calls:200": 2}
    )
    assert not refused.applied
    assert rdb.hget("t:metrics", "calls:200") == b"2"


def test_each_thread_keeps_one_connection_for_the_job_scripts_and_returns_it_at_its_end(
    store: JobStore,
) -> None:
    job_id = new(store)
    pool = store.client.connection_pool
    clients: list[redis.Redis] = []

    def deliver() -> None:
        for _ in range(3):
            assert store.update(job_id, {}).applied
        clients.append(own_client(store.client))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first, second = clients
    assert first is not second and first.connection is not second.connection
    assert {first.connection, second.connection} <= pool._in_use_connections  # type: ignore[attr-defined]
    clients.clear()
    del first, second
    gc.collect()  # the threads' clients are gone: their connections are back in the pool
    mine = own_client(store.client).connection  # this thread's own (it created the job)
    assert pool._in_use_connections <= {mine}  # type: ignore[attr-defined]
