"""Beat with real processes: one-off dispatch, recurring schedules, two beats and a takeover,
and a thousand schedules due on the same minute."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
import redis

import tasks
from tasks import runtime
from tasks.job import Job, Status
from tasks.sandbox.server import SandboxServer
from tasks.schedules.api import store
from tasks.schedules.firing import validated
from tests.conftest import ROOT, WorkerProcess, wait_for
from tests.integration.conftest import BEAT_LOCK_TIMEOUT_S, BEAT_MAX_INTERVAL_S, BeatProcess

pytestmark = pytest.mark.integration

StartBeat = Callable[..., BeatProcess]
StartWorker = Callable[..., WorkerProcess]
#: a standby beat fires within this long of the active one's death (see worker.schedule).
TAKEOVER_S = BEAT_LOCK_TIMEOUT_S + BEAT_MAX_INTERVAL_S
#: allowance for a loaded 2-core machine (process scheduling, Redis round trips).
SLACK_S = 2.0
_FIRED = re.compile(r"schedule (\S+) fired for (\S+):")
#: schedules due on one minute in the scale test, and how soon after it all their jobs exist
#: (the benchmark, tests/benchmarks/beat_scale.py, measures 10,000)
MANY = 1000
MANY_FIRED_WITHIN_S = 10.0
LOCK_KEY = "recorder:redbeat::lock"


def jobs_of(name: str) -> list[Job]:
    """The schedule's jobs, oldest fire time first."""
    jobs = [j for j in tasks.list_jobs(limit=1000) if j.schedule == name]
    return sorted(jobs, key=fire_time)


def fire_time(job: Job) -> float:
    """The scheduled fire time, read back from the job's idempotency key."""
    assert job.idempotency_key is not None
    prefix = f"schedule:{job.schedule}:"
    assert job.idempotency_key.startswith(prefix)
    return datetime.fromisoformat(job.idempotency_key[len(prefix) :]).timestamp()


def created(job: Job) -> float:
    return datetime.fromisoformat(job.created_at).timestamp()


def fired_in(log: str) -> set[str]:
    return {m.group(2) for m in _FIRED.finditer(log)}


def test_a_one_off_job_is_dispatched_once_within_2s_of_its_due_time(
    start_beat: StartBeat, start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    start_worker()
    start_beat()
    due = datetime.now(UTC) + timedelta(seconds=3)
    job = tasks.enqueue_recording("room-once", run_at=due)
    assert job.status is Status.SCHEDULED

    done = wait_for(lambda: (j := tasks.get_job(job.id)) and j.finished and j, timeout_s=15)
    assert done.status is Status.SUCCEEDED
    assert (done.deliveries, done.attempts) == (1, 1)
    calls = [c for c in sandbox.calls() if c["room_id"] == "room-once"]
    assert len(calls) == 1
    assert due.timestamp() <= calls[0]["t"] <= due.timestamp() + 2.0


def test_beat_alone_dispatches_a_one_off_job_once(start_beat: StartBeat, rdb: redis.Redis) -> None:
    # Given no worker at all: only beat's dispatcher can move the job
    start_beat()
    due = datetime.now(UTC) + timedelta(seconds=3)
    job = tasks.enqueue_recording("room-beat-only", run_at=due)

    def queued_at() -> float | None:
        current = tasks.get_job(job.id)
        return time.time() if current and current.status is Status.QUEUED else None

    moved_at = wait_for(queued_at, timeout_s=10, interval_s=0.02)
    assert due.timestamp() <= moved_at <= due.timestamp() + 2.0
    queue = runtime.config().queue
    wait_for(lambda: rdb.llen(queue) >= 1, timeout_s=5)
    time.sleep(1.5)  # three more dispatcher passes: none may publish it again
    messages = [json.loads(raw) for raw in rdb.lrange(queue, 0, -1)]
    assert [m["headers"]["id"] for m in messages] == [job.id]


def test_an_every_2s_schedule_fires_separate_jobs_until_removed(
    start_beat: StartBeat, start_worker: StartWorker
) -> None:
    start_worker()
    start_beat()
    added_at = time.time()
    tasks.add_schedule("tick", "room-tick", every_s=2)

    jobs = wait_for(lambda: len(js := jobs_of("tick")) >= 3 and js, timeout_s=8)
    assert time.time() - added_at <= 8 + SLACK_S
    assert len({j.id for j in jobs}) == len(jobs)
    assert {j.room_id for j in jobs} == {"room-tick"}
    times = [fire_time(j) for j in jobs]
    # scheduled times on a 2 s grid from the moment it was added, not the clock at firing
    assert {round(b - a, 3) for a, b in pairwise(times)} == {2.0}
    assert added_at + 2 - 0.5 <= times[0] <= added_at + 2 + 0.5

    # each firing is its own job that reaches the API: the first starts the recording, the
    # later ones find it running (the sandbox keeps a room recording until it is stopped)
    def first_three_finished() -> list[Job] | None:
        three = jobs_of("tick")[:3]
        return three if all(j.finished for j in three) else None

    first, *later = wait_for(first_three_finished, timeout_s=15)
    assert first.status is Status.SUCCEEDED
    assert all((j.error or {}).get("type") == "already_recording" for j in later)

    # When it is removed, it fires no more
    assert tasks.remove_schedule("tick") is True
    removed_at = time.time()
    time.sleep(2 * 2 + BEAT_MAX_INTERVAL_S)  # two more periods and a tick: the observation window
    assert max(fire_time(j) for j in jobs_of("tick")) <= removed_at
    assert tasks.list_schedules() == []


def test_a_schedule_lives_in_redis_across_a_beat_restart(start_beat: StartBeat) -> None:
    beat = start_beat()
    tasks.add_schedule("keep", "room-keep", every_s=2)
    wait_for(lambda: jobs_of("keep"), timeout_s=8)
    beat.stop()
    stopped_at = time.time()

    start_beat()
    wait_for(lambda: fire_time(jobs_of("keep")[-1]) > stopped_at, timeout_s=8)
    assert [s.name for s in tasks.list_schedules()] == ["keep"]
    jobs = jobs_of("keep")
    assert len({fire_time(j) for j in jobs}) == len(jobs)
    assert not list(ROOT.glob("celerybeat-schedule*")), "beat must keep no local schedule file"


def test_two_beats_fire_each_time_once_and_a_standby_takes_over_after_sigkill(
    start_beat: StartBeat,
) -> None:
    # Given two beats, one holding the lock
    leader = start_beat()
    standby = start_beat(leader=False)
    tasks.add_schedule("ha", "room-ha", every_s=1)
    wait_for(lambda: len(jobs_of("ha")) >= 3, timeout_s=8)
    assert not standby.leading and not fired_in(standby.log())

    # When the leader is killed without a chance to release its lock
    leader.stop(signal.SIGKILL)
    killed_at = time.time()

    # Then the standby fires the next times, within the takeover bound
    def after_kill() -> list[Job]:
        return [j for j in jobs_of("ha") if created(j) > killed_at]

    wait_for(lambda: len(after_kill()) >= 2, timeout_s=TAKEOVER_S + 2 + SLACK_S)
    assert standby.leading
    assert min(created(j) for j in after_kill()) - killed_at <= TAKEOVER_S + SLACK_S
    # and every fire time produced exactly one job, fired by exactly one beat
    jobs = jobs_of("ha")
    assert len({fire_time(j) for j in jobs}) == len(jobs)
    assert not fired_in(leader.log()) & fired_in(standby.log())


@pytest.mark.timeout(180)  # waits for the next minute
def test_a_thousand_schedules_due_on_one_minute_all_fire_and_beat_keeps_its_lock(
    start_beat: StartBeat,
) -> None:
    # Given a leader whose lock lasts 2 s (firing 1,000 outlasts that unless the lock is
    # extended while it fires) and a standby that takes the lock the moment it lapses
    short_lock = {"RECORDER_BEAT_LOCK_TIMEOUT": "2", "RECORDER_BEAT_MAX_INTERVAL": "1"}
    leader = start_beat(**short_lock)
    standby = start_beat(leader=False, **short_lock)
    if 60 - time.time() % 60 < 5:  # leave time to add them all before the minute they share
        time.sleep(60 - time.time() % 60 + 0.5)
    minute = (int(time.time()) // 60 + 1) * 60
    schedules = store()
    for i in range(MANY):
        schedules.put(validated(f"m{i:04}", f"room-{i}", cron="* * * * *", options={}))
    assert time.time() < minute

    # When that minute comes, then every one fires that minute's job, once
    def all_fired() -> list[Job] | None:
        jobs = [j for j in tasks.list_jobs(limit=MANY) if j.schedule]
        return jobs if len(jobs) >= MANY else None

    jobs = wait_for(all_fired, timeout_s=minute - time.time() + 30, interval_s=0.5)
    assert sorted(j.schedule or "" for j in jobs) == [f"m{i:04}" for i in range(MANY)]
    assert {fire_time(j) for j in jobs} == {minute}
    assert max(created(j) for j in jobs) - minute <= MANY_FIRED_WITHIN_S
    # and the leader kept its lock throughout: the standby never took it, nobody stopped
    time.sleep(2 * 2)
    assert leader.proc.poll() is None and standby.proc.poll() is None
    assert not standby.leading
    assert "lost the lock" not in leader.log()


def test_a_beat_whose_lock_was_taken_fires_nothing_until_it_gets_it_back(
    start_beat: StartBeat, rdb: redis.Redis
) -> None:
    # Given a beat firing a schedule every second
    beat = start_beat()
    tasks.add_schedule("held", "room-held", every_s=1)
    wait_for(lambda: len(jobs_of("held")) >= 2, timeout_s=8)

    # When another holder has the lock for 4 s (as after a stall longer than the lock timeout)
    rdb.set(LOCK_KEY, "another-beat", px=4000)
    taken_at = time.time()
    wait_for(lambda: "lost the lock" in beat.log(), timeout_s=BEAT_MAX_INTERVAL_S + 2)
    lost_seen_at = time.time()

    # Then it fires nothing while the other holds it, stays up, and takes the lock back after
    wait_for(lambda: beat.log().count("beat: Acquired lock") >= 2, timeout_s=4 + TAKEOVER_S)
    wait_for(lambda: max(created(j) for j in jobs_of("held")) > taken_at + 4, timeout_s=5)
    assert beat.proc.poll() is None
    assert not [j for j in jobs_of("held") if lost_seen_at < created(j) < taken_at + 4]
