"""Recurring schedules: zoned cron fire times, validation, storage in redbeat's shape, firing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from redbeat.decoder import RedBeatJSONDecoder
from redbeat.schedulers import RedBeatConfig

import tasks
from tasks.api import enqueue_recording
from tasks.errors import BrokerUnavailable, ConfigurationError, ValidationError
from tasks.job import Job, utc_iso
from tasks.schedules.api import store
from tasks.schedules.cron import Every, parse_cron
from tasks.schedules.firing import fire_due, fire_key
from tasks.schedules.store import fire_times
from tasks.settings import Settings
from worker.config import celery_config


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def fires(expression: str, tz: str, start: str, count: int) -> list[str]:
    cron, moment, out = parse_cron(expression, tz), at(start), []
    for _ in range(count):
        following = cron.next_after(moment)
        assert following is not None
        out.append(following.isoformat().replace("+00:00", "Z"))
        moment = following
    return out


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


def test_a_time_in_the_spring_gap_fires_after_it_and_a_repeated_time_fires_once() -> None:
    # 02:30 does not exist on 2026-03-29 in Berlin: it fires at 03:30 CEST (01:30Z)
    assert fires("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 2) == [
        "2026-03-29T01:30:00Z",
        "2026-03-30T00:30:00Z",
    ]
    # 02:30 happens twice on 2026-10-25: it fires at the first (CEST), not again an hour later
    assert fires("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2) == [
        "2026-10-25T00:30:00Z",
        "2026-10-26T01:30:00Z",
    ]


def test_day_of_month_and_weekday_both_restricted_match_either_as_in_cron() -> None:
    # 2026-01-02 is a Friday, 2026-01-13 a Tuesday
    assert fires("0 12 13 * FRI", "UTC", "2026-01-01T00:00:00Z", 3) == [
        "2026-01-02T12:00:00Z",
        "2026-01-09T12:00:00Z",
        "2026-01-13T12:00:00Z",
    ]


def test_after_downtime_only_the_latest_missed_time_is_due() -> None:
    cron = parse_cron("0 9 * * *", "Europe/Berlin")
    after, now = at("2026-03-27T08:00:00Z"), at("2026-03-31T12:00:00Z")
    assert cron.latest_due(after, now) == at("2026-03-31T07:00:00Z")
    assert cron.latest_due(now, now + timedelta(hours=1)) is None
    every = Every(2)
    assert every.latest_due(after, after + timedelta(seconds=7.5)) == after + timedelta(seconds=6)
    assert every.latest_due(after, after + timedelta(seconds=1.9)) is None


def test_an_interval_is_due_on_its_grid_not_on_the_clock_of_its_last_firing() -> None:
    last = at("2026-01-01T00:00:00Z")
    every = Every(2, nowfun=lambda: last + timedelta(seconds=2.3))
    due, next_s = every.is_due(last)
    assert due and next_s == pytest.approx(1.7)
    assert every.next_after(last + timedelta(seconds=2)) == last + timedelta(seconds=4)


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
    assert (
        definition(rdb, "standup")["options"]["recorder"]["revision"]
        != first["options"]["recorder"]["revision"]
    )


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
    assert rdb.zscore(store().schedule_key, store().key("paused")) == -1


def test_remove_says_whether_there_was_such_a_schedule(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    tasks.add_schedule("standup", "room-1", every_s=60)
    assert tasks.remove_schedule("standup") is True
    assert tasks.remove_schedule("standup") is False
    assert tasks.get_schedule("standup") is None
    assert rdb.keys("*") == []


def test_schedules_live_under_the_project_prefix_where_redbeat_looks(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    from worker.app import app

    tasks.add_schedule("standup", "room-1", every_s=60)
    assert all(k.startswith(b"recorder:redbeat:") for k in rdb.keys("*"))
    conf = RedBeatConfig(app)
    assert (conf.schedule_key, conf.lock_key) == (store().schedule_key, "recorder:redbeat::lock")
    assert app.conf.redbeat_redis_url == recorder_env["REDIS_URL"]


# -- firing --------------------------------------------------------------------------------------


def definition(rdb: redis.Redis, name: str) -> dict[str, Any]:
    raw = rdb.hget(store().key(name), "definition")
    assert raw is not None
    return json.loads(raw, cls=RedBeatJSONDecoder)  # type: ignore[no-any-return]


def fire(rdb: redis.Redis, name: str, now: datetime, **overrides: Any) -> Job | None:
    """What beat does for a due entry, from the entry as stored."""
    entry = definition(rdb, name)
    meta = json.loads(rdb.hget(store().key(name), "meta") or b"{}", cls=RedBeatJSONDecoder)
    spec = entry["options"]["recorder"]
    args: dict[str, Any] = {
        "name": name,
        "kwargs": entry["kwargs"],
        "spec": spec,
        "times": fire_times(spec),
        "last_run_at": meta["last_run_at"],
        "now": now,
        "enqueue": enqueue_recording,
    }
    return fire_due(store(), **{**args, **overrides})


def test_a_firing_is_a_job_keyed_by_its_scheduled_time(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    tasks.add_schedule("tick", "room-1", every_s=10, config={"mode": "audio"})
    entry_meta = rdb.hget(store().key("tick"), "meta")
    now = datetime.now(UTC) + timedelta(seconds=25)  # two periods have passed: fire the latest
    job = fire(rdb, "tick", now)
    assert job is not None
    start = json.loads(entry_meta or b"{}", cls=RedBeatJSONDecoder)["last_run_at"]
    fired_at = start + timedelta(seconds=20)
    assert job.idempotency_key == fire_key("tick", fired_at)
    assert job.idempotency_key.startswith("schedule:tick:") and job.idempotency_key.endswith("Z")
    assert (job.schedule, job.room_id, job.request) == (
        "tick",
        "room-1",
        {"roomId": "room-1", "config": {"mode": "audio"}},
    )
    # the firing is recorded: the next is one period on, and nothing is due before it
    recorded = tasks.get_schedule("tick")
    assert recorded is not None
    assert recorded.next_run_at == utc_iso((fired_at + timedelta(seconds=10)).timestamp())
    assert fire(rdb, "tick", now) is None
    # a second beat (or a restart) firing the same time gets the same job
    again = fire_due(
        store(),
        name="tick",
        kwargs=definition(rdb, "tick")["kwargs"],
        spec=definition(rdb, "tick")["options"]["recorder"],
        times=Every(10),
        last_run_at=start,
        now=now,
        enqueue=enqueue_recording,
    )
    assert again is not None and again.id == job.id
    assert len(tasks.list_jobs()) == 1


def test_a_firing_redis_refuses_is_not_recorded_so_the_next_tick_retries_it(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    tasks.add_schedule("tick", "room-1", every_s=10)
    before = rdb.hgetall(store().key("tick"))

    def refuse(**_: Any) -> Job:
        raise BrokerUnavailable("Redis did not take the job")

    with pytest.raises(BrokerUnavailable):
        fire(rdb, "tick", datetime.now(UTC) + timedelta(seconds=11), enqueue=refuse)
    assert rdb.hgetall(store().key("tick")) == before
    assert fire(rdb, "tick", datetime.now(UTC) + timedelta(seconds=11)) is not None


def test_a_firing_never_revives_a_removed_or_replaced_schedule(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    tasks.add_schedule("tick", "room-1", every_s=10)
    spec = definition(rdb, "tick")["options"]["recorder"]
    later = datetime.now(UTC) + timedelta(seconds=11)
    tasks.add_schedule("tick", "room-2", every_s=60)  # replaced while the old one fires
    replaced = rdb.hgetall(store().key("tick"))
    assert store().mark_fired("tick", spec["revision"], later, later) is False
    assert rdb.hgetall(store().key("tick")) == replaced
    tasks.remove_schedule("tick")
    assert store().mark_fired("tick", spec["revision"], later, later) is False
    assert rdb.keys("*") == []


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
