"""RabbitMQ waits that block on the socket, and publishes that do not queue on one lock.

A fetch waits on its connection for as long as it is asked to (no 50 ms polling), so
another thread that needs the connection must be able to end that wait; a thread that
publishes while the connection is busy goes out on a spare one; a broadcast reader
that has read nothing yet does not re-scan the whole stream at each poll.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from chard.brokers import open_broker
from chard.brokers.amqp import AmqpBroker
from chard.brokers.base import BROADCAST_START, OutgoingMessage
from chard.protocol.message import TaskMessage
from tests.helpers import amqp_url, delete_amqp_queues, wait_for

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def url() -> str:
    return amqp_url()


@pytest.fixture
def brokers(url: str) -> Iterator[list[AmqpBroker]]:
    opened: list[AmqpBroker] = []
    yield opened
    for broker in opened:
        broker.close()
    delete_amqp_queues(url, {name for broker in opened for name in broker.declared})


def open_amqp(url: str, brokers: list[AmqpBroker]) -> AmqpBroker:
    broker = open_broker(url, {})
    assert isinstance(broker, AmqpBroker)
    brokers.append(broker)
    return broker


def body(task_id: str) -> bytes:
    return TaskMessage(task="proj.add", id=task_id, args=(1, 1), kwargs={}).to_wire("q")


def in_thread(target: object) -> tuple[threading.Thread, list[object]]:
    """Run ``target`` in a daemon thread; its return value lands in the list."""
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)  # type: ignore[operator]
    thread.start()
    return thread, out


def test_a_thread_needing_the_connection_ends_a_fetch_waiting_on_it(
    url: str, brokers: list[AmqpBroker]
) -> None:
    # Given a fetch waiting up to a minute on an empty queue, holding the connection
    queue = f"waits.{uuid.uuid4().hex[:8]}"
    broker = open_amqp(url, brokers)
    fetcher, fetched = in_thread(lambda: broker.fetch([queue], 1, timeout=60))
    wait_for(lambda: broker.client.lock.waiting)

    # When another thread needs the connection (a size probe takes the lock)
    prober, sizes = in_thread(lambda: broker.queue_size(queue))

    # Then it gets in long before the fetch's minute is up
    prober.join(15)
    assert sizes == [0]

    # And the fetch, still waiting, takes a message published meanwhile
    open_amqp(url, brokers).publish([OutgoingMessage(queue, body("late"))])
    fetcher.join(15)
    assert len(fetched) == 1
    assert len(fetched[0]) == 1  # type: ignore[arg-type]


def test_a_publish_while_the_connection_is_busy_goes_out_on_a_spare(
    url: str, brokers: list[AmqpBroker]
) -> None:
    # Given a broker whose connection another thread holds until told to let go
    queue = f"waits.{uuid.uuid4().hex[:8]}"
    broker = open_amqp(url, brokers)
    broker.publish([OutgoingMessage(queue, body("first"))])  # declares the queue
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with broker.client.lock:
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(10)

    # When a thread publishes meanwhile
    publisher, done = in_thread(lambda: broker.publish([OutgoingMessage(queue, body("second"))]))

    # Then its publish is confirmed while the connection is still held
    publisher.join(15)
    assert done == [None]
    release.set()
    holder.join(10)
    reader = open_amqp(url, brokers)
    assert wait_for(lambda: reader.queue_size(queue) == 2)


def test_a_reader_that_has_read_nothing_still_sees_what_comes_after_idle_polls(
    url: str, brokers: list[AmqpBroker]
) -> None:
    # Given a reader that polled an empty channel from the start, blocked and not
    channel = f"waits-{uuid.uuid4().hex[:8]}"
    reader, writer = open_amqp(url, brokers), open_amqp(url, brokers)
    assert reader.broadcast_read(channel, BROADCAST_START, timeout=0) == []
    assert reader.broadcast_read(channel, BROADCAST_START, timeout=0.1) == []

    # When entries are broadcast after those polls
    writer.broadcast(channel, b"one")
    writer.broadcast(channel, b"two")

    # Then a blocked read from the start returns the first, a non-blocking one both
    first = reader.broadcast_read(channel, BROADCAST_START, timeout=5)
    assert [payload for _, payload in first] == [b"one"]
    both = reader.broadcast_read(channel, BROADCAST_START, timeout=0)
    assert [payload for _, payload in both] == [b"one", b"two"]
    # And another reader from the start sees the same
    fresh = open_amqp(url, brokers)
    assert [p for _, p in fresh.broadcast_read(channel, BROADCAST_START, 0)] == [b"one", b"two"]
