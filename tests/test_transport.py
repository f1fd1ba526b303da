"""The broker transport (``worker.transport``): one Redis client object per channel and pool."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Producer, Queue

from worker import transport
from worker.app import app as worker_app

QUEUE = "recorder-test-transport"


def new_app() -> Celery:
    return Celery("transport-test", set_as_current=False, amqp="worker.transport:AMQP")


@pytest.fixture
def connection(redis_url: str) -> Iterator[Connection]:
    with new_app().connection_for_write(redis_url) as conn:
        yield conn
        conn.default_channel.client.delete(QUEUE)


class CountingClient(redis.Redis):
    """``redis.Redis`` that counts how many of it were built."""

    built = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).built += 1
        super().__init__(*args, **kwargs)


def test_the_apps_connections_use_our_transports_and_keep_their_urls() -> None:
    for url, cls in (
        ("redis://:pw@h:6379/3", transport.Transport),
        ("rediss://:pw@h:6380/0?ssl_cert_reqs=required", transport.Transport),
        ("sentinel://h1:26379/1;sentinel://h2:26380/1", transport.SentinelTransport),
    ):
        conn = new_app().connection_for_write(url)  # builds its transport, connects not
        assert type(conn.transport) is cls, url
        # what the banner and Flower's broker page show: the URL's own scheme, masked
        scheme = url.split("://")[0]
        assert conn.as_uri().startswith(f"{scheme}://"), conn.as_uri()
        assert "pw" not in conn.as_uri()
    # the app the worker runs builds them too
    assert isinstance(worker_app.connection_for_write("redis://h:6379/0"), transport.Connection)


def test_the_producer_pool_publishes_on_our_transport(redis_url: str) -> None:
    # send_task, beat and the dispatcher publish on producers from the app's pool
    app = new_app()
    app.conf.broker_url = redis_url
    with app.producer_or_acquire() as producer:
        assert isinstance(producer.connection, transport.PooledConnection)
        assert isinstance(producer.channel, transport.Channel)


def test_a_hundred_publishes_and_acks_build_one_client(connection: Connection) -> None:
    channel = connection.default_channel
    assert isinstance(channel, transport.Channel)
    CountingClient.built = 0
    channel.Client = CountingClient  # this test's channel only: count what kombu builds
    # When 100 messages are published, consumed and acked on one channel
    queue = Queue(QUEUE, Exchange(QUEUE), routing_key=QUEUE)
    producer = Producer(channel, exchange=queue.exchange, routing_key=QUEUE)
    for i in range(100):
        producer.publish({"i": i}, declare=[queue], serializer="json")
    got: list[int] = []
    for _ in range(100):
        message = queue(channel).get(no_ack=False)
        assert message is not None
        got.append(message.payload["i"])
        message.ack()
    # Then every one went through, and kombu built one client for all of them (kombu as shipped
    # builds one per publish, per message handed out and per ack: 300 here)
    assert sorted(got) == list(range(100))
    assert CountingClient.built == 1
    assert channel.client.llen(QUEUE) == 0


def test_a_new_pool_gets_a_new_client(connection: Connection) -> None:
    channel = connection.default_channel
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as again:
        assert first is again and first.connection_pool is channel.pool
    given = redis.Redis(connection_pool=channel.pool)
    with channel.conn_or_acquire(given) as client:
        assert client is given
    # When kombu drops the channel's pool (it does after a lost connection, or in a forked child)
    channel._disconnect_pools()
    # Then the next operation runs on a client of the new pool
    with channel.conn_or_acquire() as after:
        assert after is not first and after.connection_pool is channel.pool
        assert after.ping()
