"""RabbitMQ-specific broker behaviour: Celery's AMQP layout, redelivery on a dead connection,
broker-side delays that outlive their publisher, and queue arguments that must agree."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import pika
import pytest

from chard.brokers import _amqp_log, open_broker
from chard.brokers.amqp import AmqpBroker, AmqpDelivery
from chard.brokers.base import BROADCAST_START, Broker, Delivery, OutgoingMessage
from chard.exceptions import ImproperlyConfigured
from chard.protocol.message import TaskMessage
from tests.helpers import amqp_url, delete_amqp_queues, wait_for

pytestmark = pytest.mark.rabbitmq

JSON = frozenset({"application/json"})


@pytest.fixture
def url() -> str:
    return amqp_url()


@pytest.fixture
def brokers(url: str) -> Iterator[list[Broker]]:
    """Broker instances a test opens; closed, and their queues deleted, after it."""
    opened: list[Broker] = []
    yield opened
    for broker in opened:
        broker.close()
    delete_amqp_queues(url, {n for b in opened if isinstance(b, AmqpBroker) for n in b.declared})


@pytest.fixture
def raw(url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A plain pika channel on the test run's vhost, as a Celery process would have."""
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        yield connection.channel()


def open_amqp(url: str, brokers: list[Broker], **options: object) -> Broker:
    broker = open_broker(url, options)
    brokers.append(broker)
    return broker


def task_body(task_id: str) -> bytes:
    return TaskMessage(task="proj.add", id=task_id, args=(1, 1), kwargs={}).to_wire("q")


def test_a_dead_consumers_messages_come_back_at_once_counted_if_running(
    url: str, brokers: list[Broker]
) -> None:
    # Given a consumer holding two messages on a long lease: one running, one fetched ahead
    dead = open_amqp(url, brokers, lease_timeout=60)
    heir = open_amqp(url, brokers, lease_timeout=60)
    dead.publish(
        [OutgoingMessage("q", task_body("running")), OutgoingMessage("q", task_body("ahead"))]
    )
    held = dead.fetch(["q"], 2, timeout=1.0)
    assert len(held) == 2
    assert heir.fetch(["q"], 1, timeout=0) == []

    # When its process dies (the connection closes) and its supervisor says what ran
    dead.close()
    heir.note_lost("running")

    # Then both come back long before the lease would lapse; only the running one counted
    started = time.monotonic()
    again = wait_for(lambda: heir.fetch(["q"], 2, timeout=0.2), timeout=10.0)
    if len(again) == 1:
        again += wait_for(lambda: heir.fetch(["q"], 1, timeout=0.2), timeout=10.0)
    counts = {TaskMessage.from_wire(d.body, JSON).id: d.delivery_count for d in again}
    assert counts == {"running": 2, "ahead": 1}
    assert time.monotonic() - started < 5.0
    held[0].ack()  # the dead instance's late ack touches nothing
    heir.ack_many(again)
    assert heir.queue_size("q") == 0


def test_messages_pushed_to_a_holder_that_stops_fetching_go_to_another(
    url: str, brokers: list[Broker]
) -> None:
    # Given a holder that fetched one message while RabbitMQ pushed it the next ones too
    holder = open_amqp(url, brokers, lease_timeout=1.0)
    other = open_amqp(url, brokers, lease_timeout=1.0)
    holder.publish([OutgoingMessage("q", task_body(f"t{i}")) for i in range(4)])
    (running,) = holder.fetch(["q"], 1, timeout=1.0)
    assert holder.queue_size("q") == 3  # pushed here but not handed out: still waiting

    # When it keeps its lease alive but fetches no more (a long task)
    def poll() -> list[Delivery]:
        holder.heartbeat()
        return other.fetch(["q"], 3, timeout=0.1)

    taken: list[Delivery] = []
    wait_for(lambda: taken.extend(poll()) or len(taken) == 3, timeout=20.0)

    # Then another consumer gets the waiting ones, uncounted, and the running one stays put
    ids = {TaskMessage.from_wire(d.body, JSON).id: d.delivery_count for d in taken}
    assert ids == {"t1": 1, "t2": 1, "t3": 1}
    other.ack_many(taken)
    running.ack()
    assert other.queue_size("q") == 0
    assert holder.queue_size("q") == 0


def test_chard_publishes_celerys_amqp_layout(url: str, brokers: list[Broker], raw) -> None:
    # Given a task message published on the celery queue
    broker = open_amqp(url, brokers)
    message = TaskMessage(task="proj.add", id="id-1", args=(4, 4), kwargs={}, reply_to="r")
    broker.publish(OutgoingMessage("celery", message.to_wire("celery"), priority=0))

    # Then a plain AMQP client sees it as Celery would: exchange, properties, headers, body
    method, props, body = raw.basic_get("celery", auto_ack=True)
    assert (method.exchange, method.routing_key) == ("celery", "celery")
    assert (props.content_type, props.correlation_id, props.reply_to) == (
        "application/json",
        "id-1",
        "r",
    )
    assert props.delivery_mode == 2
    assert (props.headers["task"], props.headers["id"], props.headers["lang"]) == (
        "proj.add",
        "id-1",
        "py",
    )
    assert json.loads(body)[:2] == [[4, 4], {}]


def test_a_celery_message_published_raw_is_fetched_and_decodes(
    url: str, brokers: list[Broker], raw
) -> None:
    # Given the celery queue declared by chard and a message published as Celery does
    broker = open_amqp(url, brokers)
    assert broker.queue_size("celery") == 0
    broker.fetch(["celery"], 1, timeout=0)  # declares the queue and its exchange
    headers = {"lang": "py", "task": "proj.add", "id": "cel-1", "root_id": "cel-1",
               "retries": 0, "timelimit": [None, None], "argsrepr": "(2, 2)"}  # fmt: skip
    raw.basic_publish(
        "celery",
        "celery",
        b'[[2, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]',
        pika.BasicProperties(
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers,
            correlation_id="cel-1",
            delivery_mode=2,
        ),
    )

    # Then chard fetches it and decodes Celery's protocol v2
    (delivery,) = wait_for(lambda: broker.fetch(["celery"], 1, timeout=0.2))
    decoded = TaskMessage.from_wire(delivery.body, JSON)
    assert (decoded.task, decoded.id, decoded.args) == ("proj.add", "cel-1", (2, 2))
    assert delivery.delivery_count == 1
    delivery.ack()


def test_a_delayed_message_outlives_its_publisher(url: str, brokers: list[Broker]) -> None:
    # Given a message due in 1.5 s, published by an instance that then goes away
    publisher = open_amqp(url, brokers)
    eta = time.time() + 1.5
    publisher.publish(OutgoingMessage("q", b"later", eta=eta))
    publisher.close()

    # Then it waits in RabbitMQ (counted in the queue's size) and a new instance gets it
    # once due, not before
    consumer = open_amqp(url, brokers)
    assert consumer.queue_size("q") == 1
    assert consumer.fetch(["q"], 1, timeout=0) == []
    (later,) = wait_for(lambda: consumer.fetch(["q"], 1, timeout=0.2), timeout=10.0)
    assert later.body == b"later"
    assert time.time() >= eta
    later.ack()


def test_a_queue_declared_with_other_priorities_is_named(url: str, brokers: list[Broker]) -> None:
    # Given a queue first declared with x-max-priority 9
    open_amqp(url, brokers, queue_max_priority=9).publish(OutgoingMessage("q", b"x"))

    # When another instance wants x-max-priority 5, the error names the queue and the fix
    other = open_amqp(url, brokers, queue_max_priority=5)
    with pytest.raises(ImproperlyConfigured, match=r"queue 'q' .*task_queue_max_priority"):
        other.publish(OutgoingMessage("q", b"y"))


def test_a_drain_survives_the_server_closing_every_connection(
    url: str, brokers: list[Broker]
) -> None:
    # Given 40 messages and a consumer draining them, acking each
    broker = open_amqp(url, brokers)
    sent = {b"m%02d" % i for i in range(40)}
    broker.publish([OutgoingMessage("q", body) for body in sorted(sent)])
    acked: list[bytes] = []
    vhost = url.rsplit("/", 1)[1]
    closed = False

    # When RabbitMQ closes every connection of the vhost halfway (as a node restart would)
    def drain_one() -> bool:
        nonlocal closed
        for delivery in broker.fetch(["q"], 2, timeout=0.5):
            delivery.ack()
            acked.append(delivery.body)
        if len(acked) >= 20 and not closed:
            subprocess.run(
                ["rabbitmqctl", "-q", "close_all_connections", "--vhost", vhost, "test"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            closed = True
        return set(acked) == sent and broker.queue_size("q") == 0

    wait_for(drain_one, timeout=60.0)

    # Then the consumer reconnected and every message was acked; only messages held
    # at the moment of the close may have come twice (at-least-once)
    assert closed
    assert isinstance(broker, AmqpBroker)
    assert broker.client.generation >= 2  # it did reconnect
    assert len(acked) - len(sent) <= 2


def test_a_message_held_past_half_the_consumer_timeout_is_parked_and_settled_once(
    url: str, brokers: list[Broker], raw
) -> None:
    # Given a holder whose RabbitMQ consumer_timeout is (as far as it knows) 1 s
    holder = open_amqp(url, brokers, consumer_timeout=1.0, lease_timeout=0.5)
    other = open_amqp(url, brokers, lease_timeout=0.5)
    holder.publish(OutgoingMessage("q", b"long"))
    (held,) = holder.fetch(["q"], 1, timeout=1.0)
    assert isinstance(held, AmqpDelivery)
    assert isinstance(holder, AmqpBroker)

    # When it heartbeats for several parking TTLs (3 s), its channel holds the message no
    # more (parked, renewed), and nobody else gets it
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline:
        holder.heartbeat()
        assert other.fetch(["q"], 1, timeout=0.05) == []
    assert held.parked is not None
    parking = holder._parking.queue
    assert raw.queue_declare(parking, passive=True).method.message_count == 1

    # Then acking it takes the parked copy out, once
    held.ack()
    held.ack()
    assert raw.queue_declare(parking, passive=True).method.message_count == 0
    assert other.fetch(["q"], 1, timeout=0.2) == []
    assert other.queue_size("q") == 0
    raw.queue_delete(parking)


def test_a_dead_holders_parked_message_comes_home_counted(
    url: str, brokers: list[Broker], raw
) -> None:
    # Given a holder that parked a message, then died (its process gone, nothing renews)
    holder = open_amqp(url, brokers, consumer_timeout=1.0, lease_timeout=0.5)
    other = open_amqp(url, brokers, lease_timeout=0.5)
    holder.publish(OutgoingMessage("q", b"long"))
    (held,) = holder.fetch(["q"], 1, timeout=1.0)
    assert isinstance(held, AmqpDelivery)
    assert isinstance(holder, AmqpBroker)
    wait_for(lambda: holder.heartbeat() or held.parked is not None, timeout=10.0)
    holder.close()

    # Then after the parking TTL the message is back on its queue, its lost delivery counted
    (again,) = wait_for(lambda: other.fetch(["q"], 1, timeout=0.2), timeout=15.0)
    assert (again.body, again.delivery_count) == (b"long", 2)
    again.ack()
    raw.queue_delete(holder._parking.queue)


def test_quorum_queues_carry_work_and_count_a_dead_consumers_delivery(
    url: str, brokers: list[Broker], raw
) -> None:
    # Given queues declared as quorum queues (task_default_queue_type='quorum')
    dead = open_amqp(url, brokers, queue_type="quorum")
    heir = open_amqp(url, brokers, queue_type="quorum")
    dead.publish(OutgoingMessage("qq", task_body("work")))
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", url.rsplit("/", 1)[1], "name", "type"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert listed[listed.index("qq") + 1] == "quorum"
    assert len(dead.fetch(["qq"], 1, timeout=1.0)) == 1

    # When the holder's process dies running it, the message comes back counted
    heir.note_lost("work")
    dead.close()
    (again,) = wait_for(lambda: heir.fetch(["qq"], 1, timeout=0.2), timeout=10.0)
    assert again.delivery_count == 2
    again.ack()
    assert heir.queue_size("qq") == 0


def test_quorum_queues_refuse_priorities_with_the_fix() -> None:
    with pytest.raises(ImproperlyConfigured, match="quorum queues have no priorities"):
        open_broker("amqp://", {"queue_type": "quorum", "queue_max_priority": 10})


def test_a_queue_deleted_behind_the_brokers_back_is_declared_again(
    url: str, brokers: list[Broker], raw
) -> None:
    # Given a broker that declared its queue and exchange, then an operator deleting both
    broker = open_amqp(url, brokers)
    broker.publish(OutgoingMessage("q", b"first"))
    raw.queue_delete("q")
    raw.exchange_delete("q")

    # Then fetching finds nothing (no error), and single and batched publishes declare again
    assert broker.fetch(["q"], 1, timeout=0) == []
    raw.queue_delete("q")
    raw.exchange_delete("q")
    broker.publish(OutgoingMessage("q", b"one"))
    raw.queue_delete("q")
    raw.exchange_delete("q")
    broker.publish([OutgoingMessage("q", b"two"), OutgoingMessage("q", b"three")])
    assert [d.body for d in broker.fetch(["q"], 3, timeout=1.0)] == [b"two", b"three"]


def test_a_tail_looks_back_past_markers_to_the_newest_entry(
    url: str, brokers: list[Broker], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given entries, then more markers than the tail's first look back spans (each tail
    # appends one), and entries too old for its first scan (from the clock slack before
    # now) to see: that scan is made to see none, as it would after a quiet minute
    monkeypatch.setattr(_amqp_log, "_TAIL_WINDOW", 2)
    scan = _amqp_log.StreamLog._scan_to

    def blind_since(self: _amqp_log.StreamLog, name: str, begin: object, marker: str):  # type: ignore[no-untyped-def]
        end, newest = scan(self, name, begin, marker)  # type: ignore[arg-type]
        return (end, None) if isinstance(begin, datetime) else (end, newest)

    monkeypatch.setattr(_amqp_log.StreamLog, "_scan_to", blind_since)
    broker = open_amqp(url, brokers)
    channel = f"tail-{uuid.uuid4().hex}"
    cursors = [broker.broadcast(channel, b"e%d" % i) for i in range(3)]
    for _ in range(40):
        broker.broadcast_tail(channel)

    # When a reader takes the tail
    reader = open_amqp(url, brokers)
    tail = reader.broadcast_tail(channel)

    # Then it is the newest entry's cursor, and reading after it gets only what comes next
    assert tail == cursors[-1]
    broker.broadcast(channel, b"next")
    assert [p for _, p in reader.broadcast_read(channel, tail, timeout=0)] == [b"next"]


def test_an_empty_channels_tail_is_the_start_however_many_markers_it_holds(
    url: str, brokers: list[Broker], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a channel that holds only markers (tails taken, nothing broadcast)
    monkeypatch.setattr(_amqp_log, "_TAIL_WINDOW", 2)
    channel = f"tail-{uuid.uuid4().hex}"
    for _ in range(10):
        open_amqp(url, brokers).broadcast_tail(channel)

    # When a new reader takes the tail, then an entry comes
    reader = open_amqp(url, brokers)
    tail = reader.broadcast_tail(channel)
    open_amqp(url, brokers).broadcast(channel, b"first")

    # Then the tail is the start, and the entry is read after it
    assert tail == BROADCAST_START
    assert [p for _, p in reader.broadcast_read(channel, tail, timeout=0)] == [b"first"]
