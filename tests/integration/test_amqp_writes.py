"""What chard's AMQP client writes to its socket: a message, or a batch of acks, in one send.

pika queues each frame as a buffer of its own and sends them one by one (a publish is
three frames), and only once its I/O loop finds the socket writable; on loopback every
send runs the TCP path of both ends. The client writes each call's frames in one send,
at once (``chard._amqp.writes``). These tests count the sends of a real connection to a
real RabbitMQ.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from chard.brokers import open_broker
from chard.brokers.amqp import AmqpBroker
from chard.brokers.base import OutgoingMessage
from chard.protocol.message import TaskMessage
from tests.helpers import amqp_url, delete_amqp_queues, wait_for

pytestmark = pytest.mark.rabbitmq

#: Class and method ids of basic.publish (60, 40) and basic.ack (60, 80) in a method frame.
BASIC_PUBLISH = b"\x00\x3c\x00\x28"
BASIC_ACK = b"\x00\x3c\x00\x50"


@pytest.fixture
def broker() -> Iterator[AmqpBroker]:
    url = amqp_url()
    opened = open_broker(url, {})
    assert isinstance(opened, AmqpBroker)
    yield opened
    opened.close()
    delete_amqp_queues(url, opened.declared)


def count_sends(broker: AmqpBroker) -> list[bytes]:
    """Record every send on the broker's current connection (in order); return the record."""
    transport: Any = broker.client._connection._impl._transport  # type: ignore[union-attr]
    sent: list[bytes] = []
    send = transport._sigint_safe_send

    def counted(sock: Any, data: bytes) -> int:
        sent.append(bytes(data))
        return int(send(sock, data))

    transport._sigint_safe_send = counted
    return sent


def record_polls(broker: AmqpBroker, sent: list[bytes]) -> list[str]:
    """Record each turn of pika's I/O loop, with how many sends came before it."""
    ioloop: Any = broker.client._connection._impl.ioloop  # type: ignore[union-attr]
    steps: list[str] = []
    poll = ioloop.poll

    def recorded_poll() -> None:
        steps.append(f"poll after {len(sent)} send(s)")
        poll()

    ioloop.poll = recorded_poll
    return steps


def body(task_id: str) -> bytes:
    return TaskMessage(task="proj.add", id=task_id, args=(1, 1), kwargs={}).to_wire("q")


def test_a_confirmed_publish_is_one_send(broker: AmqpBroker) -> None:
    # Given a connected broker and its queue
    queue = f"writes.{uuid.uuid4().hex[:8]}"
    broker.publish([OutgoingMessage(queue, body("warm-up"))])
    sent = count_sends(broker)

    # When a message is published (method, header and body frames) and confirmed
    broker.publish([OutgoingMessage(queue, body("one"))])

    # Then its three frames went out in a single send that holds the whole message
    assert len(sent) == 1
    assert sent[0].count(BASIC_PUBLISH) == 1
    assert b"one" in sent[0]  # its id, in the header frame
    embed = b'{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'
    assert sent[0].endswith(b"[[1,1],{}," + embed + b"]\xce")  # the body frame, last
    assert broker.queue_size(queue) == 2


def test_a_batch_of_acks_is_one_send(broker: AmqpBroker) -> None:
    # Given five fetched messages
    queue = f"writes.{uuid.uuid4().hex[:8]}"
    broker.publish([OutgoingMessage(queue, body(f"t{i}")) for i in range(5)])
    deliveries: list[Any] = []
    wait_for(lambda: not deliveries.extend(broker.fetch([queue], 5 - len(deliveries), 1))
             and len(deliveries) == 5)  # fmt: skip
    sent = count_sends(broker)

    steps = record_polls(broker, sent)

    # When they are acked together
    broker.ack_many(deliveries)

    # Then the five basic.ack frames went out in one send, made before pika's loop turned
    # (which then only reads), and the queue is empty for good
    acks = [data for data in sent if BASIC_ACK in data]
    assert len(acks) == 1
    assert acks[0].count(BASIC_ACK) == 5
    assert steps[:1] == ["poll after 1 send(s)"]
    broker.client.close()
    assert broker.queue_size(queue) == 0


def test_a_publish_is_sent_before_pikas_loop_turns(broker: AmqpBroker) -> None:
    # Given a connected broker whose socket sends and I/O loop polls are recorded in order
    queue = f"writes.{uuid.uuid4().hex[:8]}"
    broker.publish([OutgoingMessage(queue, body("warm-up"))])
    sent = count_sends(broker)
    steps = record_polls(broker, sent)

    # When a message is published and confirmed
    broker.publish([OutgoingMessage(queue, body("now"))])

    # Then it was sent by the publishing call itself: the loop only waited for the confirm
    assert steps[:1] == ["poll after 1 send(s)"]
    assert broker.queue_size(queue) == 2


def test_a_message_larger_than_the_socket_takes_at_once_arrives_whole(
    broker: AmqpBroker,
) -> None:
    # Given a message far larger than a loopback socket's send buffer
    queue = f"writes.{uuid.uuid4().hex[:8]}"
    payload = uuid.uuid4().hex * 500_000  # 16 MB
    big = TaskMessage(task="proj.add", id="big", args=(payload,), kwargs={}).to_wire("q")

    # When it is published (the rest of a partial send goes out through pika's loop)
    broker.publish([OutgoingMessage(queue, big)])

    # Then it comes back whole
    deliveries: list[Any] = []
    wait_for(lambda: bool(deliveries.extend(broker.fetch([queue], 1, 1)) or deliveries))
    message = TaskMessage.from_wire(deliveries[0].body, frozenset({"application/json"}))
    assert message.args == (payload,)
    broker.ack_many(deliveries)
