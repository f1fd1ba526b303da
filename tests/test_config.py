"""Configuration: every variable of ``Settings.from_env``, Redis URL forms, Celery's options."""

from __future__ import annotations

import gc
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.transport import redis as kombu_redis
from redis.sentinel import SentinelConnectionPool

from tasks.errors import ConfigurationError
from tasks.settings import (
    CONCURRENCY_MAX,
    CONCURRENCY_MIN,
    DEFAULT_API_BASE,
    DEFAULT_REDIS_URL,
    Secret,
    Settings,
    parse_rate,
    sized_concurrency,
)
from tasks.store.connections import parse_sentinel_url, redis_client
from tests.conftest import reset_process
from worker import signals
from worker.config import celery_config

SECRET = "s3cr3t-config-test-value"


def from_env(**env: str) -> Settings:
    return Settings.from_env(env)


# -- defaults and every variable ------------------------------------------------------------------


def test_defaults_with_an_empty_environment() -> None:
    s = from_env()
    assert s.redis_url == DEFAULT_REDIS_URL == "redis://127.0.0.1:6379/0"
    assert s.api_base == DEFAULT_API_BASE == "https://api.videosdk.live"
    assert s.api_key is None and s.secret is None
    assert (s.rate_limit, s.rate_per_s, s.rate_burst) == ("10/s", 10.0, 1)
    assert (s.max_attempts, s.max_lost_deliveries, s.backoff_max_s) == (8, 3, 60.0)
    assert (s.connect_timeout_s, s.read_timeout_s, s.inline_wait_max_s) == (5.0, 30.0, 3.0)
    assert (s.sweep_interval_s, s.job_ttl_s) == (10.0, 30 * 24 * 3600)
    assert (s.worker_pool, s.worker_concurrency) == ("threads", None)  # None: sized at start
    assert (s.start_window_s, s.not_live_patterns[0]) == (600.0, "no active session")
    assert (s.sentinel_master, s.log_format, s.key_prefix) == (None, "text", "recorder")
    assert s.queue == "recorder"
    assert (s.beat_max_interval_s, s.beat_lock_timeout_s) == (5.0, 25)


def test_every_variable_is_read() -> None:
    s = from_env(
        REDIS_URL="redis://:pw@redis:6379/2",
        VIDEOSDK_API_BASE="http://sandbox:8090/",
        VIDEOSDK_API_KEY="key",
        VIDEOSDK_SECRET=SECRET,
        RECORDER_RATE_LIMIT="600/m",
        RECORDER_RATE_BURST="5",
        RECORDER_MAX_ATTEMPTS="3",
        RECORDER_MAX_LOST_DELIVERIES="2",
        RECORDER_SWEEP_INTERVAL="1.5",
        RECORDER_BACKOFF_MAX="10",
        RECORDER_JOB_TTL="86400",
        RECORDER_CONNECT_TIMEOUT="2",
        RECORDER_READ_TIMEOUT="15",
        RECORDER_INLINE_WAIT_MAX="0",
        RECORDER_POOL="prefork",
        RECORDER_CONCURRENCY="4",
        REDIS_SENTINEL_MASTER="mymaster",
        RECORDER_LOG_FORMAT="JSON",
        RECORDER_KEY_PREFIX="rec2",
        RECORDER_QUEUE="rec2-queue",
        RECORDER_BEAT_MAX_INTERVAL="2",
        RECORDER_BEAT_LOCK_TIMEOUT="10",
    )
    assert s.redis_url == "redis://:pw@redis:6379/2"
    assert s.api_base == "http://sandbox:8090"  # no trailing slash, so paths join cleanly
    assert s.api_key == "key" and s.secret == SECRET
    assert (s.rate_limit, s.rate_per_s, s.rate_burst) == ("600/m", 10.0, 5)
    assert (s.max_attempts, s.max_lost_deliveries, s.backoff_max_s) == (3, 2, 10.0)
    assert (s.sweep_interval_s, s.job_ttl_s) == (1.5, 86400)
    assert (s.connect_timeout_s, s.read_timeout_s, s.inline_wait_max_s) == (2.0, 15.0, 0.0)
    assert (s.worker_pool, s.worker_concurrency) == ("prefork", 4)
    assert (s.sentinel_master, s.log_format, s.key_prefix) == ("mymaster", "json", "rec2")
    assert s.queue == "rec2-queue"
    assert (s.beat_max_interval_s, s.beat_lock_timeout_s) == (2.0, 10)
    assert s.lease_s == 0 + 2 + 15 + 5


def test_blank_numbers_mean_the_default() -> None:
    assert from_env(RECORDER_MAX_ATTEMPTS="", RECORDER_BACKOFF_MAX="  ").max_attempts == 8


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RECORDER_RATE_LIMIT", "ten per second"),
        ("RECORDER_RATE_LIMIT", "0/s"),
        ("RECORDER_RATE_BURST", "0"),
        ("RECORDER_RATE_BURST", "1.5"),
        ("RECORDER_MAX_ATTEMPTS", "many"),
        ("RECORDER_MAX_ATTEMPTS", "0"),
        ("RECORDER_MAX_LOST_DELIVERIES", "0"),
        ("RECORDER_SWEEP_INTERVAL", "0.01"),
        ("RECORDER_BACKOFF_MAX", "-1"),
        ("RECORDER_JOB_TTL", "59"),
        ("RECORDER_CONNECT_TIMEOUT", "0"),
        ("RECORDER_READ_TIMEOUT", "soon"),
        ("RECORDER_INLINE_WAIT_MAX", "-0.5"),
        ("RECORDER_CONCURRENCY", "0"),
        ("RECORDER_LOG_FORMAT", "xml"),
        ("RECORDER_BEAT_MAX_INTERVAL", "0"),
        ("RECORDER_BEAT_LOCK_TIMEOUT", "0"),
        ("RECORDER_BEAT_LOCK_TIMEOUT", "9"),  # less than twice the 5 s tick
    ],
)
def test_a_bad_value_is_a_configuration_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        from_env(**{name: value})


@pytest.mark.parametrize(
    ("text", "per_s"),
    [("10/s", 10.0), ("600/m", 10.0), ("3600/h", 1.0), (" 2.5 / s ", 2.5), ("1/m", 1 / 60)],
)
def test_parse_rate(text: str, per_s: float) -> None:
    assert parse_rate(text) == pytest.approx(per_s)


@pytest.mark.parametrize("text", ["", "10", "10/d", "-1/s", "0/m", "1/s/s", "x/s"])
def test_parse_rate_refuses_malformed_rates(text: str) -> None:
    with pytest.raises(ConfigurationError, match="RECORDER_RATE_LIMIT"):
        parse_rate(text)


# -- the secret -----------------------------------------------------------------------------------


def test_the_secret_is_read_from_a_file_and_stripped(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(f"  {SECRET}\n", encoding="utf-8")
    assert from_env(VIDEOSDK_SECRET_FILE=str(path)).secret == SECRET


def test_the_secret_variable_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("from-the-file", encoding="utf-8")
    assert from_env(VIDEOSDK_SECRET=SECRET, VIDEOSDK_SECRET_FILE=str(path)).secret == SECRET


def test_an_empty_secret_file_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(" \n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"VIDEOSDK_SECRET_FILE=.* is empty"):
        from_env(VIDEOSDK_SECRET_FILE=str(path))


def test_a_missing_secret_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"VIDEOSDK_SECRET_FILE=.*cannot be read"):
        from_env(VIDEOSDK_SECRET_FILE=str(tmp_path / "nope"))


def test_the_secret_never_shows_in_a_repr() -> None:
    s = from_env(VIDEOSDK_API_KEY="key", VIDEOSDK_SECRET=SECRET)
    assert SECRET not in repr(s) and SECRET not in f"{s!r}"
    assert SECRET not in repr(s.secret) and SECRET not in repr({"secret": s.secret})
    assert isinstance(s.secret, Secret) and str(s.secret) == SECRET  # still usable for signing


def test_require_credentials_names_what_is_missing() -> None:
    with pytest.raises(ConfigurationError, match="VIDEOSDK_API_KEY"):
        from_env(VIDEOSDK_SECRET=SECRET).require_credentials()
    with pytest.raises(ConfigurationError, match="VIDEOSDK_SECRET"):
        from_env(VIDEOSDK_API_KEY="key").require_credentials()
    assert from_env(VIDEOSDK_API_KEY="key", VIDEOSDK_SECRET=SECRET).require_credentials() == (
        "key",
        SECRET,
    )


# -- Redis URLs: built, never connected ----------------------------------------------------------


def pool_kwargs(client: redis.Redis) -> dict[str, Any]:
    return dict(client.connection_pool.connection_kwargs)


def test_redis_url_with_password_and_db() -> None:
    client = redis_client("redis://:pw@host:6379/2")
    kwargs = pool_kwargs(client)
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "host",
        6379,
        2,
        "pw",
    )
    assert client.connection_pool.connection_class is redis.Connection
    assert kwargs["socket_timeout"] > 0 and kwargs["socket_connect_timeout"] > 0


def test_rediss_url_uses_tls_and_requires_a_certificate() -> None:
    client = redis_client("rediss://host:6380/0?ssl_cert_reqs=required")
    assert client.connection_pool.connection_class is redis.SSLConnection
    kwargs = pool_kwargs(client)
    assert kwargs["ssl_cert_reqs"] == "required" and kwargs["port"] == 6380


def test_unix_socket_url() -> None:
    client = redis_client("unix:///tmp/redis.sock?db=1")
    assert client.connection_pool.connection_class is redis.UnixDomainSocketConnection
    kwargs = pool_kwargs(client)
    assert (kwargs["path"], kwargs["db"]) == ("/tmp/redis.sock", 1)


SENTINEL_URL = "sentinel://:pw@h1:26379/1;sentinel://h2:26380"


def test_sentinel_url_is_parsed_into_hosts_password_and_db() -> None:
    assert parse_sentinel_url(SENTINEL_URL) == ([("h1", 26379), ("h2", 26380)], "pw", 1)
    assert parse_sentinel_url("sentinel://h1") == ([("h1", 26379)], None, 0)


def test_sentinel_url_gives_a_client_of_the_named_master() -> None:
    client = redis_client(SENTINEL_URL, sentinel_master="mymaster")
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (1, "pw")
    hosts = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in pool.sentinel_manager.sentinels
    ]
    assert hosts == [("h1", 26379), ("h2", 26380)]


def test_sentinel_url_without_a_master_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="REDIS_SENTINEL_MASTER"):
        redis_client(SENTINEL_URL)


@pytest.mark.parametrize(
    "url",
    ["sentinel://h1:26379;redis://h2:6379", "sentinel://h1:26379/x", "sentinel://:pw@/1"],
)
def test_a_malformed_sentinel_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        redis_client(url, sentinel_master="mymaster")


def test_a_url_that_is_not_redis_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        redis_client("http://host:6379/0")


# -- Celery's options ----------------------------------------------------------------------------


def broker_connparams(conf: dict[str, object]) -> dict[str, Any]:
    """The keyword arguments kombu would give redis-py for the broker, without connecting."""
    app = Celery("config-test", set_as_current=False)
    app.config_from_object(conf)
    connection = app.connection_for_write()
    channel = kombu_redis.Channel.__new__(kombu_redis.Channel)  # __init__ would connect
    channel.connection = connection.transport
    return channel._connparams()  # type: ignore[no-any-return]


def test_celery_config_names_the_sentinel_master() -> None:
    conf = celery_config(from_env(REDIS_URL=SENTINEL_URL, REDIS_SENTINEL_MASTER="mymaster"))
    assert conf["broker_url"] == SENTINEL_URL
    assert conf["broker_transport_options"]["master_name"] == "mymaster"  # type: ignore[index]
    # redbeat takes Sentinel in its own spelling
    assert conf["redbeat_redis_url"] == "redis-sentinel://"
    options = conf["redbeat_redis_options"]
    assert options["sentinels"] == [("h1", 26379), ("h2", 26380)]  # type: ignore[index]
    assert options["service_name"] == "mymaster" and options["db"] == 1  # type: ignore[index]


def test_celery_config_without_sentinel_names_no_master() -> None:
    conf = celery_config(from_env())
    assert "master_name" not in conf["broker_transport_options"]  # type: ignore[operator]
    assert "broker_use_ssl" not in conf
    assert broker_connparams(conf)["connection_class"] is redis.Connection


def test_celery_config_passes_a_rediss_url_through_and_verifies_certificates() -> None:
    url = "rediss://:pw@host:6380/0?ssl_cert_reqs=required"
    conf = celery_config(from_env(REDIS_URL=url))
    assert conf["broker_url"] == url
    assert conf["redbeat_redis_url"] == "rediss://host:6380/0?ssl_cert_reqs=required"
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    params = broker_connparams(conf)
    assert params["connection_class"] is redis.SSLConnection
    assert params["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_a_rediss_url_without_cert_reqs_still_verifies_the_broker() -> None:
    # kombu alone would fall back to CERT_NONE (no verification) here
    params = broker_connparams(celery_config(from_env(REDIS_URL="rediss://host:6380/0")))
    assert params["connection_class"] is redis.SSLConnection
    assert params["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_celery_config_turns_on_the_events_flower_needs() -> None:
    conf = celery_config(from_env())
    assert conf["task_send_sent_event"] is True and conf["worker_send_task_events"] is True
    assert conf["task_serializer"] == conf["event_serializer"] == "json"


@pytest.mark.parametrize(
    ("url", "clean_url", "credentials"),
    [
        ("redis://:p%40ss@redis:6379/2", "redis://redis:6379/2", {"password": "p@ss"}),
        (
            "redis://user:pw@redis:6379/0",
            "redis://redis:6379/0",
            {"username": "user", "password": "pw"},
        ),
        (
            "rediss://:pw@redis:6380/0?ssl_cert_reqs=required",
            "rediss://redis:6380/0?ssl_cert_reqs=required",
            {"password": "pw"},
        ),
        ("redis://redis:6379/0", "redis://redis:6379/0", {}),
    ],
)
def test_the_beat_redis_password_moves_out_of_the_url(
    url: str, clean_url: str, credentials: dict[str, str]
) -> None:
    conf = celery_config(from_env(REDIS_URL=url))
    assert conf["redbeat_redis_url"] == clean_url
    options = conf["redbeat_redis_options"]
    assert {k: options[k] for k in ("username", "password") if k in options} == credentials  # type: ignore[operator, index]


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("redis://:hunter2-pw@redis:6379/0", ["hunter2-pw"]),
        ("redis://:Tr0ub@dor&3@redis:6379/0", ["Tr0ub", "dor&3"]),  # a raw "@" in the password
    ],
)
def test_the_configuration_a_worker_shows_others_holds_no_password(
    url: str, parts: list[str]
) -> None:
    # what `celery inspect conf` and Flower's /api/workers print
    app = Celery("config-test", set_as_current=False)
    app.config_from_object(celery_config(from_env(REDIS_URL=url)))
    table = repr(app.conf.table(with_defaults=True, censored=True))
    assert not [part for part in parts if part in table]


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8080", "ftp://api.example.com", "https://", "http://host:99999", "api"]
)
def test_a_malformed_api_base_is_a_configuration_error_naming_the_variable(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^VIDEOSDK_API_BASE must be an http"):
        from_env(VIDEOSDK_API_BASE=url)


def test_the_api_base_keeps_its_path_without_the_trailing_slash() -> None:
    assert from_env(VIDEOSDK_API_BASE="http://127.0.0.1:8080/v/").api_base == (
        "http://127.0.0.1:8080/v"
    )


def test_auto_concurrency_follows_the_rate_limit_and_the_api_latency() -> None:
    # Little's law with half as much again: 200/s x 0.25 s = 50 in flight -> 75 slots
    assert sized_concurrency(200, 0.25) == 75
    assert sized_concurrency(200, None) == 150  # nothing measured: 0.5 s assumed
    assert sized_concurrency(10, 0.3) == CONCURRENCY_MIN  # never below the old fixed 32
    assert sized_concurrency(10_000, 2.0) == CONCURRENCY_MAX
    assert from_env(RECORDER_CONCURRENCY="auto").worker_concurrency is None
    assert from_env(RECORDER_CONCURRENCY="12").worker_concurrency == 12


def test_a_worker_process_may_hold_a_connection_per_thread_of_its_largest_pool() -> None:
    # each thread keeps its own connection: a pool sized to CONCURRENCY_MAX must not meet
    # redis-py's MaxConnectionsError (its default limit is 100)
    client = redis_client("redis://127.0.0.1:6379/0")
    assert client.connection_pool.max_connections >= CONCURRENCY_MAX + 16


@pytest.fixture
def interpreter_restored() -> Iterator[None]:
    switch_s, thresholds = sys.getswitchinterval(), gc.get_threshold()
    yield
    sys.setswitchinterval(switch_s)
    gc.set_threshold(*thresholds)


@pytest.mark.parametrize(("pool", "tuned"), [("threads", True), ("prefork", False)])
def test_a_thread_pool_worker_tunes_the_gil_switch_and_the_garbage_collector(
    pool: str,
    tuned: bool,
    recorder_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    interpreter_restored: None,
) -> None:
    monkeypatch.setenv("RECORDER_POOL", pool)
    reset_process()
    sys.setswitchinterval(0.005)
    gc.set_threshold(700, 10, 10)
    signals.tune_the_interpreter()
    assert (sys.getswitchinterval() == signals.SWITCH_INTERVAL_S) is tuned
    assert gc.get_threshold() == ((signals.GC_THRESHOLD_0, 10, 10) if tuned else (700, 10, 10))
