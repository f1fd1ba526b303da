"""Recurring schedules: zoned cron fire times (DST included), validation, storage, firing."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery.schedules import crontab
from redbeat.schedulers import RedBeatConfig, RedBeatSchedulerEntry

import tasks
from tasks.api import producer
from tasks.errors import BrokerUnavailable, ConfigurationError, ValidationError
from tasks.job import Job, Status, utc_iso
from tasks.schedules.api import store
from tasks.schedules.cron import Every, parse_cron
from tasks.schedules.firing import Fired, fire, fire_due, fire_key, plan, publish_all, validated
from tasks.schedules.store import ScheduleStore
from tasks.settings import Settings
from worker.config import celery_config
from worker.schedule import LEGACY_FIRE_TASK, RecorderScheduler


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def fires(expression: str, tz: str, start: str, count: int) -> list[str]:
    cron, moment, out = parse_cron(expression, tz), at(start), []
    for _ in range(count):
        following = cron.next_after(moment)
        assert following is not None
        out.append(iso(following))
        moment = following
    return out


def night(rdb: redis.Redis, cron: str, tz: str, start: datetime, end: datetime) -> list[str]:
    """The fire times beat records for a schedule stored at ``start`` and ticking every minute
    until ``end`` (its store and its firing, on a clock of our own)."""
    clock = [start.timestamp()]
    schedules = ScheduleStore(client=rdb, prefix="recorder", clock=lambda: clock[0])
    schedules.put(validated("night", "room-1", cron=cron, timezone=tz, options={}))
    fired: list[str] = []

    def enqueue(**kwargs: Any) -> Any:
        fired.append(kwargs["idempotency_key"].removeprefix("schedule:night:").replace(".000", ""))
        return SimpleNamespace(id=str(len(fired)), room_id=kwargs["room_id"])

    while clock[0] < end.timestamp():
        clock[0] += 60
        fire_due(schedules, now=datetime.fromtimestamp(clock[0], UTC), enqueue=enqueue)
    return fired


# -- fire times ----------------------------------------------------------------------------------


def test_berlin_monday_9am_is_0800z_in_winter_and_0700z_in_summer() -> None:
    # DST starts 2026-03-29 (Sunday): the Monday before is CET, the Monday after CEST
    assert fires("0 9 * * MON", "Europe/Berlin", "2026-03-20T00:00:00Z", 3) == [
        "2026-03-23T08:00:00Z",
        "2026-03-30T07:00:00Z",
        "2026-04-06T07:00:00Z",
    ]
    # DST ends 2026-10-25 (Sunday)
    assert fires("0 9 * * MON", "Europe/Berlin", "2026-10-16T00:00:00Z", 3) == [
        "2026-10-19T07:00:00Z",
        "2026-10-26T08:00:00Z",
        "2026-11-02T08:00:00Z",
    ]


# Europe/Berlin 2026: clocks go back at 03:00 CEST on 10-25 (01:00Z), so 02:00-02:59 happens
# twice (00:00-00:59Z in CEST, 01:00-01:59Z in CET); they go forward at 02:00 CET on 03-29
# (01:00Z), so 02:00-02:59 does not exist.


def test_hourly_and_quarter_hourly_keep_firing_on_real_time_through_the_berlin_fall_back() -> None:
    # 02:00 CEST, 02:00 CET, 03:00 CET: an hour apart each, no two-hour silence
    assert fires("0 * * * *", "Europe/Berlin", "2026-10-24T22:30:00Z", 5) == [
        "2026-10-24T23:00:00Z",
        "2026-10-25T00:00:00Z",
        "2026-10-25T01:00:00Z",
        "2026-10-25T02:00:00Z",
        "2026-10-25T03:00:00Z",
    ]
    # every 15 minutes of real time through both passes of 02:00-02:59
    quarter = fires("*/15 * * * *", "Europe/Berlin", "2026-10-24T23:50:00Z", 10)
    expected = at("2026-10-25T00:00:00Z")
    assert quarter == [iso(expected + timedelta(minutes=15 * i)) for i in range(10)]


def test_a_fixed_time_in_the_repeated_hour_fires_once_at_its_first_occurrence() -> None:
    # 02:30 happens twice on 2026-10-25: it fires at the first (CEST), not again an hour later
    assert fires("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2) == [
        "2026-10-25T00:30:00Z",
        "2026-10-26T01:30:00Z",
    ]


def test_hourly_and_quarter_hourly_go_straight_across_the_berlin_spring_gap() -> None:
    # 01:00 CET, then 03:00 CEST an hour of real time later
    assert fires("0 * * * *", "Europe/Berlin", "2026-03-28T23:30:00Z", 3) == [
        "2026-03-29T00:00:00Z",
        "2026-03-29T01:00:00Z",
        "2026-03-29T02:00:00Z",
    ]
    assert fires("*/15 * * * *", "Europe/Berlin", "2026-03-29T00:40:00Z", 3) == [
        "2026-03-29T00:45:00Z",
        "2026-03-29T01:00:00Z",
        "2026-03-29T01:15:00Z",
    ]


def test_a_fixed_time_in_the_spring_gap_fires_just_after_the_change() -> None:
    # 02:30 does not exist on 2026-03-29 in Berlin: it fires at 03:00 CEST (01:00Z)
    assert fires("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 2) == [
        "2026-03-29T01:00:00Z",
        "2026-03-30T00:30:00Z",
    ]


def test_a_fixed_time_in_new_york_fires_once_on_both_dst_changes_of_2026() -> None:
    # 01:30 happens twice on 2026-11-01 (EDT 05:30Z, EST 06:30Z): once, at the first
    assert fires("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2) == [
        "2026-11-01T05:30:00Z",
        "2026-11-02T06:30:00Z",
    ]
    # 02:30 does not exist on 2026-03-08: it fires at 03:00 EDT (07:00Z)
    assert fires("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 2) == [
        "2026-03-08T07:00:00Z",
        "2026-03-09T06:30:00Z",
    ]


@pytest.mark.parametrize(
    ("cron", "start", "end", "expected"),
    [
        # fall back: hourly and every 15 minutes of real time; the fixed time once
        ("0 * * * *", "2026-10-24T23:00:30Z", "2026-10-25T03:30:00Z",
         [f"2026-10-25T0{h}:00:00Z" for h in range(4)]),
        ("*/15 * * * *", "2026-10-24T23:50:30Z", "2026-10-25T02:10:00Z",
         [iso(at("2026-10-25T00:00:00Z") + timedelta(minutes=15 * i)) for i in range(9)]),
        ("30 2 * * *", "2026-10-24T12:00:30Z", "2026-10-25T12:00:00Z", ["2026-10-25T00:30:00Z"]),
        # spring forward: no gap in real time; the skipped fixed time just after the change
        ("0 * * * *", "2026-03-28T23:00:30Z", "2026-03-29T02:30:00Z",
         [f"2026-03-29T0{h}:00:00Z" for h in range(3)]),
        ("*/15 * * * *", "2026-03-29T00:20:30Z", "2026-03-29T01:20:00Z",
         [f"2026-03-29T{hm}:00Z" for hm in ("00:30", "00:45", "01:00", "01:15")]),
        ("30 2 * * *", "2026-03-28T12:00:30Z", "2026-03-29T12:00:00Z", ["2026-03-29T01:00:00Z"]),
    ],
)  # fmt: skip
def test_beat_fires_through_a_berlin_dst_night_as_cron_does(
    rdb: redis.Redis, cron: str, start: str, end: str, expected: list[str]
) -> None:
    # Given a schedule stored at ``start``, when beat ticks every minute until ``end``
    fired = night(rdb, cron, "Europe/Berlin", at(start), at(end))
    # Then it fires exactly the expected times, each once
    assert fired == expected


def test_day_of_month_and_weekday_both_restricted_match_either_as_in_cron() -> None:
    # 2026-01-02 is a Friday, 2026-01-13 a Tuesday
    assert fires("0 12 13 * FRI", "UTC", "2026-01-01T00:00:00Z", 3) == [
        "2026-01-02T12:00:00Z",
        "2026-01-09T12:00:00Z",
        "2026-01-13T12:00:00Z",
    ]
    # cron allows 7 for Sunday; 2026-01-04 is a Sunday
    assert fires("0 9 * * 7", "UTC", "2026-01-01T00:00:00Z", 1) == ["2026-01-04T09:00:00Z"]


def test_after_downtime_only_the_latest_missed_time_is_due() -> None:
    cron = parse_cron("0 9 * * *", "Europe/Berlin")
    after, now = at("2026-03-27T08:00:00Z"), at("2026-03-31T12:00:00Z")
    assert cron.latest_due(after, now) == at("2026-03-31T07:00:00Z")
    assert cron.due(after, now) == (at("2026-03-31T07:00:00Z"), at("2026-04-01T07:00:00Z"))
    assert cron.latest_due(now, now + timedelta(hours=1)) is None
    every = Every(2)
    assert every.latest_due(after, after + timedelta(seconds=7.5)) == after + timedelta(seconds=6)
    assert every.latest_due(after, after + timedelta(seconds=1.9)) is None
    # a beat back during the repeated hour after days away: the first 02:30 of that night
    fixed = parse_cron("30 2 * * *", "Europe/Berlin")
    assert fixed.latest_due(at("2026-10-21T00:30:00Z"), at("2026-10-25T01:10:00Z")) == at(
        "2026-10-25T00:30:00Z"
    )


def test_an_interval_is_due_on_its_grid_not_on_the_clock_of_its_last_firing() -> None:
    last = at("2026-01-01T00:00:00Z")
    assert Every(2).due(last, last + timedelta(seconds=2.3)) == (
        last + timedelta(seconds=2),
        last + timedelta(seconds=4),
    )
    assert Every(2).due(last, last + timedelta(seconds=1)) == (None, last + timedelta(seconds=2))


# -- the API -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"cron": "0 9 * * MON", "timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"cron": "0 9 * * MON", "timezone": ""}, "timezone"),
        ({"cron": "0 9 * * MON", "every_s": 60}, "cron"),
        ({}, "cron"),
        ({"every_s": 0}, "every_s"),
        ({"every_s": "60"}, "every_s"),
        ({"every_s": True}, "every_s"),
        ({"every_s": 60, "config": {"layout": {"type": "HEX"}}}, "config.layout.type"),
        ({"every_s": 60, "webhook_url": "ftp://x"}, "webhook_url"),
        ({"every_s": 60, "idempotency_key": "k"}, "idempotency_key"),
        ({"every_s": 60, "enabled": "yes"}, "enabled"),
    ],
)
def test_bad_input_names_the_field_and_stores_nothing(
    recorder_env: dict[str, str], rdb: redis.Redis, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        tasks.add_schedule("standup", "room-1", **kwargs)
    assert caught.value.field == field
    assert rdb.keys("*") == []


@pytest.mark.parametrize("name", ["", ":schedule", "a b", "x" * 101, None])
def test_a_bad_name_is_refused(recorder_env: dict[str, str], name: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        tasks.add_schedule(name, "room-1", every_s=60)
    assert caught.value.field == "name"


def test_an_existing_name_is_replaced(recorder_env: dict[str, str], rdb: redis.Redis) -> None:
    tasks.add_schedule("standup", "room-1", cron="0 9 * * MON", timezone="Europe/Berlin")
    first = definition(rdb, "standup")
    replaced = tasks.add_schedule("standup", "room-2", every_s=30, summary={"enabled": True})
    assert [s.name for s in tasks.list_schedules()] == ["standup"]
    assert tasks.get_schedule("standup") == replaced
    assert (replaced.room_id, replaced.cron, replaced.every_s) == ("room-2", None, 30)
    assert replaced.options == {"summary": {"enabled": True}}
    assert definition(rdb, "standup")["revision"] != first["revision"]


def test_list_shows_the_next_run_in_utc(recorder_env: dict[str, str]) -> None:
    added = tasks.add_schedule(
        "standup", "room-1", cron="0 9 * * MON", timezone="Europe/Berlin", template_url=None
    )
    expected = parse_cron("0 9 * * MON", "Europe/Berlin").next_after(datetime.now(UTC))
    assert expected is not None
    [listed] = tasks.list_schedules()
    assert listed == added
    assert at(listed.next_run_at or "") == expected
    assert listed.next_run_at is not None and listed.next_run_at.endswith("Z")
    assert listed.to_dict() == {
        "name": "standup",
        "room_id": "room-1",
        "cron": "0 9 * * MON",
        "every_s": None,
        "timezone": "Europe/Berlin",
        "enabled": True,
        "options": {},
        "next_run_at": listed.next_run_at,
    }


def test_a_disabled_schedule_has_no_next_run_and_is_never_due(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    schedule = tasks.add_schedule("paused", "room-1", every_s=60, enabled=False)
    assert schedule.next_run_at is None and schedule.enabled is False
    assert rdb.zscore(store().due_key, "paused") is None
    assert store().due_names(datetime.now(UTC) + timedelta(days=400)) == []


def test_remove_says_whether_there_was_such_a_schedule(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    tasks.add_schedule("standup", "room-1", every_s=60)
    assert tasks.remove_schedule("standup") is True
    assert tasks.remove_schedule("standup") is False
    assert tasks.get_schedule("standup") is None
    assert rdb.keys("*") == []


def test_schedules_live_in_our_own_keys_and_redbeat_keeps_only_its_lock(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    from worker.app import app

    tasks.add_schedule("standup", "room-1", every_s=60)
    tasks.add_schedule("paused", "room-2", cron="0 9 * * *", enabled=False)
    assert sorted(rdb.keys("*")) == [
        b"recorder:schedules",
        b"recorder:schedules:due",
        b"recorder:schedules:last",
    ]
    assert RedBeatConfig(app).lock_key == "recorder:redbeat::lock"
    assert app.conf.redbeat_redis_url == recorder_env["REDIS_URL"]


def test_thousands_of_schedules_are_listed_in_well_under_a_second(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    # Given 2,000 schedules (the issue: 7 s for 1,500 while each was read on its own)
    schedules = store()
    for i in range(2000):
        schedules.put(validated(f"s{i:04}", "room-1", cron="* * * * *", options={}))
    # When they are listed
    started = time.perf_counter()
    listed = tasks.list_schedules()
    took_s = time.perf_counter() - started
    # Then all of them, by name, with their next run, quickly (a generous bound for a busy CI)
    assert [s.name for s in listed] == [f"s{i:04}" for i in range(2000)]
    assert all(s.next_run_at and s.next_run_at.endswith(":00.000Z") for s in listed)
    assert took_s < 1.0


# -- firing --------------------------------------------------------------------------------------


def definition(rdb: redis.Redis, name: str) -> dict[str, Any]:
    raw = rdb.hget(store().definitions_key, name)
    assert raw is not None
    return json.loads(raw)  # type: ignore[no-any-return]


def enqueue(room_id: str, **kwargs: Any) -> Job:
    """What beat enqueues with: the public API's producer (``due_at`` included)."""
    return producer().enqueue(room_id, **kwargs)


def jobs_of(name: str) -> list[Job]:
    return [j for j in tasks.list_jobs(limit=1000) if j.schedule == name]


def test_a_firing_is_a_job_keyed_by_its_scheduled_time(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    added = tasks.add_schedule("tick", "room-1", every_s=10, config={"mode": "audio"})
    [entry] = store().entries(["tick"])
    start = entry.last_run_at
    assert added.next_run_at == utc_iso((start + timedelta(seconds=10)).timestamp())
    now = start + timedelta(seconds=25)  # two periods have passed: fire the latest only
    assert fire_due(store(), now=now, enqueue=enqueue) == Fired(fired=1)
    [job] = jobs_of("tick")
    fired_at = start + timedelta(seconds=20)
    assert job.idempotency_key == fire_key("tick", fired_at)
    assert job.idempotency_key.startswith("schedule:tick:") and job.idempotency_key.endswith("Z")
    assert (job.schedule, job.room_id, job.request) == (
        "tick",
        "room-1",
        {"roomId": "room-1", "config": {"mode": "audio"}},
    )
    # its start window opens at the scheduled time, not when beat got round to it
    window_s = job.to_dict()["start_window_s"]
    assert job.to_dict()["start_deadline"] == utc_iso(fired_at.timestamp() + window_s)
    # the firing is recorded: the next is one period on, and nothing is due before it
    recorded = tasks.get_schedule("tick")
    assert recorded is not None
    assert recorded.next_run_at == utc_iso((fired_at + timedelta(seconds=10)).timestamp())
    assert fire_due(store(), now=now, enqueue=enqueue) == Fired()
    # a second beat (or a restart) firing the same time from the same state gets the same job
    assert fire(plan(entry, now), enqueue) is True
    assert [j.id for j in jobs_of("tick")] == [job.id]


def test_a_schedules_start_window_is_given_to_each_firing(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    added = tasks.add_schedule("windowed", "room-1", every_s=10, start_window_s=900)
    assert added.options == {"start_window_s": 900}
    [entry] = store().entries(["windowed"])
    fired_at = entry.last_run_at + timedelta(seconds=10)
    assert fire_due(store(), now=fired_at, enqueue=enqueue) == Fired(fired=1)
    [job] = jobs_of("windowed")
    assert job.to_dict()["start_window_s"] == 900
    assert job.to_dict()["start_deadline"] == utc_iso(fired_at.timestamp() + 900)
    with pytest.raises(ValidationError) as caught:
        tasks.add_schedule("windowed", "room-1", every_s=10, start_window_s=0)
    assert caught.value.field == "start_window_s"


def test_a_firing_redis_refuses_is_not_recorded_so_the_next_tick_retries_it(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    tasks.add_schedule("tick", "room-1", every_s=10)
    before = {key: rdb.dump(key) for key in rdb.keys("*")}

    def refuse(**_: Any) -> Job:
        raise BrokerUnavailable("Redis did not take the job")

    later = datetime.now(UTC) + timedelta(seconds=11)
    assert fire_due(store(), now=later, enqueue=refuse) == Fired(failed=1)
    assert {key: rdb.dump(key) for key in rdb.keys("*")} == before
    assert fire_due(store(), now=later, enqueue=enqueue) == Fired(fired=1)


def test_a_firing_never_revives_a_removed_or_replaced_schedule(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    tasks.add_schedule("tick", "room-1", every_s=10)
    revision = definition(rdb, "tick")["revision"]
    later = datetime.now(UTC) + timedelta(seconds=11)
    tasks.add_schedule("tick", "room-2", every_s=60)  # replaced while the old one fires
    replaced = {key: rdb.dump(key) for key in rdb.keys("*")}
    assert store().mark_fired("tick", revision, later, later) is False
    assert {key: rdb.dump(key) for key in rdb.keys("*")} == replaced
    tasks.remove_schedule("tick")
    assert store().mark_fired("tick", revision, later, later) is False
    assert rdb.keys("*") == []


def test_a_name_left_in_the_due_set_without_a_schedule_is_dropped_not_fired(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    rdb.zadd(store().due_key, {"ghost": 1.0})
    assert fire_due(store(), now=datetime.now(UTC), enqueue=enqueue) == Fired()
    assert rdb.keys("*") == []


def test_due_schedules_fire_in_chunks_with_the_callers_heartbeat_before_each_step(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    for i in range(7):
        tasks.add_schedule(f"s{i}", f"room-{i}", every_s=5)
    steps: list[int] = []
    later = datetime.now(UTC) + timedelta(seconds=6)
    fired = fire_due(
        store(),
        now=later,
        enqueue=enqueue,
        chunk=3,
        heartbeat=lambda: steps.append(len(tasks.list_jobs(limit=100))),
    )
    assert fired == Fired(fired=7)
    # before each chunk is read and before each firing: beat keeps its lock there
    assert steps == [0, 0, 1, 2, 3, 3, 4, 5, 6, 6]
    assert sorted(j.room_id for j in tasks.list_jobs(limit=100)) == [f"room-{i}" for i in range(7)]


def test_a_message_that_cannot_be_published_is_left_to_the_sweeper_and_the_rest_go_out() -> None:
    published: list[str] = []

    def publish(job_id: str, room_id: str) -> None:
        if job_id == "j1":
            raise ConnectionError("Redis went away")
        published.append(job_id)

    steps: list[int] = []
    pending = [(f"j{i}", f"room-{i}") for i in range(5)]
    failed = publish_all(pending, publish, heartbeat=lambda: steps.append(1))
    assert (failed, published, len(steps)) == (1, ["j0", "j2", "j3", "j4"], 5)


def test_beat_moves_schedules_of_earlier_versions_out_of_redbeats_keys(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    from worker.app import app

    # Given a schedule as an earlier version stored it: a redbeat entry, written by redbeat
    last_run_at = datetime.now(UTC) - timedelta(minutes=3)
    legacy = RedBeatSchedulerEntry(
        "standup",
        LEGACY_FIRE_TASK,
        crontab(minute="0", hour="9"),
        kwargs={"room_id": "room-1", "config": {"mode": "audio"}},
        options={"recorder": {"cron": "0 9 * * *", "timezone": "Europe/Berlin", "revision": "r"}},
        app=app,
    )
    legacy.last_run_at = last_run_at
    legacy.save()
    assert rdb.exists("recorder:redbeat:standup")
    # When beat starts
    RecorderScheduler(app=app, lazy=True)._adopt_redbeat_entries()
    # Then the schedule is ours, with its options and timing, and redbeat's entry is gone
    moved = tasks.get_schedule("standup")
    assert moved is not None
    assert (moved.room_id, moved.cron, moved.timezone, moved.options) == (
        "room-1",
        "0 9 * * *",
        "Europe/Berlin",
        {"config": {"mode": "audio"}},
    )
    [entry] = store().entries(["standup"])
    assert entry.last_run_at == last_run_at
    assert not rdb.exists("recorder:redbeat:standup")
    assert rdb.zcard("recorder:redbeat::schedule") == 0


def test_beat_settings_come_from_the_environment_with_a_known_takeover_bound() -> None:
    config = celery_config(Settings.from_env({"REDIS_URL": "redis://h:6379/3"}))
    assert config["beat_scheduler"] == "worker.schedule:RecorderScheduler"
    assert (config["redbeat_redis_url"], config["redbeat_key_prefix"]) == (
        "redis://h:6379/3",
        "recorder:redbeat:",
    )
    assert (config["redbeat_lock_timeout"], config["beat_max_loop_interval"]) == (25, 5.0)
    with pytest.raises(ConfigurationError, match="RECORDER_BEAT_LOCK_TIMEOUT"):
        Settings.from_env({"RECORDER_BEAT_LOCK_TIMEOUT": "6", "RECORDER_BEAT_MAX_INTERVAL": "5"})
    sentinel = celery_config(
        Settings(redis_url="sentinel://:pw@s1:26379/2;sentinel://s2:26380", sentinel_master="m")
    )
    assert sentinel["redbeat_redis_url"] == "redis-sentinel://"
    assert sentinel["redbeat_redis_options"] == {
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 10,
        "sentinels": [("s1", 26379), ("s2", 26380)],
        "service_name": "m",
        "db": 2,
        "password": "pw",
    }


def test_a_schedules_stop_and_notify_task_go_with_each_firing(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    added = tasks.add_schedule(
        "class", "room-1", every_s=10, max_duration_s=2700, notify_task="myapp.on_recording"
    )
    assert added.options == {"max_duration_s": 2700, "notify_task": "myapp.on_recording"}
    [entry] = store().entries(["class"])
    assert fire_due(store(), now=entry.last_run_at + timedelta(seconds=10), enqueue=enqueue)
    [job] = jobs_of("class")
    assert (job.max_duration_s, job.notify_task) == (2700, "myapp.on_recording")
    for bad in ({"max_duration_s": 0}, {"notify_task": "not a task"}):
        with pytest.raises(ValidationError) as caught:
            tasks.add_schedule("class", "room-1", every_s=10, **bad)  # type: ignore[arg-type]
        assert caught.value.field == next(iter(bad))


def test_a_slot_missed_while_no_beat_ran_is_fired_only_while_its_window_is_open(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    # Given two schedules added 3.5 minutes ago (their latest slot 30 s ago), and no beat
    three_min_ago = ScheduleStore(
        client=rdb, prefix=store().prefix, clock=lambda: time.time() - 210
    )
    for name, window_s in (("open", 600), ("closed", 10)):
        three_min_ago.put(
            validated(name, f"room-{name}", every_s=60, start_window_s=window_s, options={})
        )
    [opened, closed] = store().entries(["open", "closed"])
    # When beat comes back now
    fire_due(store(), now=datetime.now(UTC), enqueue=enqueue)
    # Then the slot whose 10-minute window is open is a normal job, fired once...
    [late] = jobs_of("open")
    slot = opened.last_run_at + timedelta(seconds=180)  # the latest missed slot
    assert late.status is Status.QUEUED and late.idempotency_key == fire_key("open", slot)
    # ...and the one whose 10 s window closed leaves one expired job, never a call
    [missed] = jobs_of("closed")
    assert missed.status is Status.EXPIRED and missed.attempts == 0
    assert missed.idempotency_key == fire_key("closed", closed.last_run_at + timedelta(seconds=180))
    assert missed.error is not None and "fired by its schedule" in missed.error["message"]
    assert rdb.zscore(f"{store().prefix}:due", missed.id) is None
    # a second beat firing the same state again gets the same two jobs
    fire_due(store(), now=datetime.now(UTC), enqueue=enqueue)
    assert len(jobs_of("open")) == 1 and len(jobs_of("closed")) == 1
