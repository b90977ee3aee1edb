"""A worker's rpc:// reply is not confirmed: the task's ack follows it on the same channel.

RabbitMQ handles one channel's methods in order, so a reply written before an ack is in
its queue before the ack counts. These tests cut the worker's connection (its socket's
write side: RabbitMQ reads what was sent, then the end) after the reply, or after the
reply and the ack, and check what RabbitMQ kept; and that a publish that waits for its
confirm is never answered by the confirm of one that did not wait.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from chard import states
from chard._amqp.client import AmqpClient, UnroutableMessage
from chard._amqp.frames import Frame
from chard._amqp.url import parse_amqp_url
from chard.backends.rpc import RPCResultBackend
from chard.brokers import open_broker
from chard.brokers.amqp import AmqpBroker
from chard.brokers.base import OutgoingMessage
from chard.exceptions import BrokerError
from chard.protocol.message import TaskMessage
from tests.helpers import amqp_url, delete_amqp_queues, wait_for

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def worker_side() -> Iterator[tuple[AmqpBroker, RPCResultBackend, str]]:
    """A worker's broker and rpc:// backend on one connection; a task queue; a reply queue."""
    url = amqp_url()
    broker = open_broker(url, {})
    assert isinstance(broker, AmqpBroker)
    backend = RPCResultBackend("rpc://", options={"broker_url": url})
    backend.share_broker(lambda: broker)
    reply_queue = backend.reply_queue  # the client's, declared on the shared connection
    yield broker, backend, reply_queue
    backend.close()
    broker.close()
    delete_amqp_queues(url, [*broker.declared, reply_queue])


def a_task_replied_to(broker: AmqpBroker, backend: RPCResultBackend, reply_queue: str) -> Any:
    """Send a task with ``reply_to``, fetch it and publish its result, as a worker does.

    Returns its delivery, not acked yet.
    """
    queue = f"order.{uuid.uuid4().hex[:8]}"
    task_id = uuid.uuid4().hex
    body = TaskMessage(task="proj.add", id=task_id, args=(1, 1), reply_to=reply_queue)
    broker.publish([OutgoingMessage(queue, body.to_wire(queue))])
    found: list[Any] = []
    wait_for(lambda: bool(found.extend(broker.fetch([queue], 1, 1)) or found))
    backend.note_request(task_id, reply_queue)
    backend.store_result(task_id, 2, states.SUCCESS)  # not waited for: see the docstring
    return found[0]


def cut(client: AmqpClient) -> None:
    """End the connection as a dying worker does: RabbitMQ reads what was sent, then EOF."""
    sock: socket.socket = client._connection._impl._transport._sock  # type: ignore[union-attr]
    sock.shutdown(socket.SHUT_WR)


def ready_in(url: str, queue: str) -> int:
    """How many messages wait in ``queue``, asked on a connection of the test's own."""
    checker = AmqpClient(parse_amqp_url(url))
    try:
        return checker.queue_size(queue) or 0
    finally:
        checker.close()


def test_a_connection_cut_between_a_reply_and_its_ack_keeps_the_reply_and_the_task(
    worker_side: tuple[AmqpBroker, RPCResultBackend, str],
) -> None:
    # Given a task whose reply was published
    broker, backend, reply_queue = worker_side
    delivery = a_task_replied_to(broker, backend, reply_queue)

    # When the connection dies before the ack
    cut(broker.client)
    delivery.ack()  # finds the connection gone: nothing is acked

    # Then the reply is in its queue, and the task is back in its own
    url = amqp_url()
    wait_for(lambda: ready_in(url, delivery.queue) == 1)
    assert ready_in(url, reply_queue) == 1


def test_a_connection_cut_after_a_reply_and_its_ack_keeps_the_reply_alone(
    worker_side: tuple[AmqpBroker, RPCResultBackend, str],
) -> None:
    # Given a task whose reply was published
    broker, backend, reply_queue = worker_side
    delivery = a_task_replied_to(broker, backend, reply_queue)

    # When its ack is written, and the connection dies at once
    broker.ack_many([delivery])
    cut(broker.client)

    # Then RabbitMQ took both, in order: the reply waits, the task is gone for good
    url = amqp_url()
    wait_for(lambda: ready_in(url, reply_queue) == 1)
    broker.client.close()
    assert ready_in(url, delivery.queue) == 0


def test_a_waited_publish_is_answered_by_its_own_confirm(
    worker_side: tuple[AmqpBroker, RPCResultBackend, str],
) -> None:
    broker, _, reply_queue = worker_side
    client = broker.client

    # Given publishes not waited for, whose confirms are on their way (RabbitMQ has them all)
    for _ in range(20):
        client.publish("", reply_queue, Frame(b"{}"), persistent=False, confirmed=False)
    wait_for(lambda: ready_in(amqp_url(), reply_queue) == 20)

    # When a waited publish goes nowhere, it is told so (not by an earlier one's confirm)
    with pytest.raises(UnroutableMessage):
        client.publish("", f"nowhere.{uuid.uuid4().hex[:8]}", Frame(b"{}"))
    # And one that arrives is confirmed
    client.publish("", reply_queue, Frame(b"{}"), persistent=False)
    wait_for(lambda: ready_in(amqp_url(), reply_queue) == 21)


def test_a_publish_pika_refuses_leaves_the_next_one_its_own_confirm(
    worker_side: tuple[AmqpBroker, RPCResultBackend, str],
) -> None:
    broker, _, reply_queue = worker_side
    client = broker.client

    # Given a publish with a header no AMQP field table holds (pika refuses it unwritten)
    with pytest.raises(BrokerError, match="header value AMQP cannot carry"):
        client.publish("", reply_queue, Frame(b"{}", {"n": 2**64}), persistent=False)

    # When the next publish waits for its confirm, it gets it (it waited for ever when
    # the refused one had been counted)
    done = threading.Event()

    def publish() -> None:
        client.publish("", reply_queue, Frame(b"{}"), persistent=False)
        done.set()

    threading.Thread(target=publish, daemon=True).start()
    assert done.wait(10)
    wait_for(lambda: ready_in(amqp_url(), reply_queue) == 1)


def test_a_reply_for_a_task_acked_as_it_started_is_confirmed_before_the_store_returns(
    worker_side: tuple[AmqpBroker, RPCResultBackend, str],
) -> None:
    # Given a task acked as it started (acks_late=False): no ack follows its reply
    broker, backend, reply_queue = worker_side
    confirms = broker.client._confirms
    assert confirms is not None
    task_id = uuid.uuid4().hex
    backend.note_request(task_id, reply_queue, acked_first=True)

    # When its result is stored
    backend.store_result(task_id, 2, states.SUCCESS)

    # Then the store returned once RabbitMQ confirmed the reply: a lost connection now
    # makes the store fail (and be retried), not the reply vanish
    assert confirms.confirmed == confirms.published
    assert ready_in(amqp_url(), reply_queue) == 1
