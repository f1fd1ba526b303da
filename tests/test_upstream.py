"""The workaround of kombu#970 (``worker.upstream.GuardedQoS``): still needed, and in use.

The bug: on a channel kombu closed when its connection was lost, its Redis ``QoS`` raises
AttributeError from ``ack``, ``reject`` and ``restore_unacked``, which ends a worker. It is
reproduced here on a real channel closed by kombu: kombu as shipped still raises (so the guard
is still needed), the guarded class logs instead, and the app's channels use the guarded class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import kombu
import pytest
from celery import Celery
from kombu import Connection
from kombu.transport import redis as kombu_redis

from worker import transport
from worker.upstream import GuardedQoS

#: what the guard covers: kombu's QoS method, called as a worker (or kombu) calls it
CALLS: dict[str, Callable[[Any], Any]] = {
    "ack": lambda qos: qos.ack("tag-1"),
    "reject": lambda qos: qos.reject("tag-1", requeue=True),
    "restore_unacked": lambda qos: qos.restore_unacked(),
}


@pytest.fixture
def closed_channel(redis_url: str) -> Iterator[Any]:
    """A channel of our transport that kombu has closed, as after a lost connection."""
    app = Celery("upstream-test", set_as_current=False, amqp="worker.transport:AMQP")
    with app.connection_for_read(redis_url) as conn:
        channel = conn.channel()
        channel.close()
        assert channel.connection is None
        yield channel


@pytest.mark.parametrize("name", sorted(CALLS))
def test_kombu_as_shipped_still_raises_on_a_closed_channel(redis_url: str, name: str) -> None:
    # when this stops failing, kombu fixed kombu#970: delete GuardedQoS (and this file)
    with Connection(redis_url) as conn:
        channel = conn.channel()
        assert type(channel.qos) is kombu_redis.QoS
        channel.close()
        with pytest.raises(AttributeError):
            CALLS[name](channel.qos)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_the_guarded_qos_logs_instead_of_raising(
    closed_channel: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    qos = closed_channel.qos
    assert isinstance(qos, GuardedQoS)
    with caplog.at_level(logging.WARNING, logger="worker.upstream"):
        assert CALLS[name](qos) is None
    assert "kombu#970" in caplog.text


def test_an_attribute_error_on_an_open_channel_is_not_hidden(redis_url: str) -> None:
    app = Celery("upstream-test", set_as_current=False, amqp="worker.transport:AMQP")
    with app.connection_for_read(redis_url) as conn:
        qos = conn.channel().qos
        qos.channel.connection.client = None  # this test's channel: an unrelated AttributeError
        with pytest.raises(AttributeError):
            qos.ack("tag-1")


def test_the_apps_channels_use_the_guard_on_every_scheme() -> None:
    assert transport.Channel.QoS is GuardedQoS
    assert transport.SentinelChannel.QoS is GuardedQoS


def test_kombu_is_still_in_the_series_the_guard_was_checked_on() -> None:
    # kombu#970 was seen on 5.7.0 and the pin is kombu>=5.7,<5.8: on an upgrade, check the
    # upstream issue again and move this line with the pin (or delete the workaround)
    assert kombu.VERSION[:2] == (5, 7)
