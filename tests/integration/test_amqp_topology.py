"""task_queues on a real RabbitMQ: topic and fanout exchanges, routing keys, the queue's own
delivery limit, and kombu declaring the very same queues without PRECONDITION_FAILED."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pika
import pytest

from chard import Exchange, Queue
from chard.brokers import open_broker
from chard.brokers.amqp import AmqpBroker
from chard.brokers.base import OutgoingMessage
from chard.protocol.topology import Topology
from tests.helpers import amqp_url, wait_for

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def url() -> str:
    return amqp_url()


@pytest.fixture
def names(url: str) -> Iterator[str]:
    """A prefix for this test's queues and exchanges; everything under it is deleted after."""
    prefix = f"topo-{uuid.uuid4().hex[:8]}"
    yield prefix
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        for suffix in ("default", "videos", "images", "a", "b", "limited"):
            channel.queue_delete(f"{prefix}.{suffix}")
        for suffix in ("default", "media", "fan", "limited"):
            channel.exchange_delete(f"{prefix}.{suffix}")


def _queues(p: str) -> list[Queue]:
    media = Exchange(f"{p}.media", type="topic")
    fan = Exchange(f"{p}.fan", type="fanout", durable=False)
    return [
        Queue(f"{p}.default", Exchange(f"{p}.default"), routing_key=f"{p}.default"),
        Queue(f"{p}.videos", media, routing_key="media.video.#"),
        Queue(f"{p}.images", media, routing_key="media.image.#", max_priority=10),
        Queue(f"{p}.a", fan),
        Queue(f"{p}.b", fan, message_ttl=600),
    ]


def _broker(url: str, table: Topology) -> AmqpBroker:
    broker = open_broker(url, {"topology": table})
    assert isinstance(broker, AmqpBroker)
    return broker


def test_topic_and_fanout_exchanges_route_as_declared(url: str, names: str) -> None:
    table = Topology.from_settings(_queues(names), default_queue=f"{names}.default")
    broker = _broker(url, table)
    try:
        # Given every queue declared (a worker consuming them all does this)
        queues = [q.name for q in _queues(names)]
        assert broker.fetch(queues, 1, timeout=0) == []

        # When messages go to the topic queue (by its binding key, and by a route's key)
        broker.publish(OutgoingMessage(f"{names}.videos", b"video"))
        broker.publish(OutgoingMessage(f"{names}.videos", b"image", routing_key="media.image.png"))
        # and one to a fanout queue
        broker.publish(OutgoingMessage(f"{names}.a", b"everyone"))

        # Then the topic exchange picked each queue by key, and the fanout reached both
        def bodies(queue: str) -> list[bytes]:
            taken = broker.fetch([queue], 10, timeout=0.5)
            for delivery in taken:
                delivery.ack()
            return sorted(d.body for d in taken)

        assert bodies(f"{names}.videos") == [b"video"]
        assert bodies(f"{names}.images") == [b"image"]
        assert bodies(f"{names}.a") == [b"everyone"]
        assert bodies(f"{names}.b") == [b"everyone"]
        assert bodies(f"{names}.default") == []
    finally:
        broker.close()


def test_kombu_declares_chards_queues_as_they_are(url: str, names: str) -> None:
    kombu = pytest.importorskip("kombu")
    # Given chard declared the queues of a task_queues setting
    broker = _broker(url, Topology.from_settings(_queues(names), max_priority=None))
    try:
        assert broker.fetch([q.name for q in _queues(names)], 1, timeout=0) == []
    finally:
        broker.close()

    # When kombu (as Celery does) declares the same setting, written with kombu's classes
    media = kombu.Exchange(f"{names}.media", type="topic")
    fan = kombu.Exchange(f"{names}.fan", type="fanout", durable=False)
    theirs = [
        kombu.Queue(f"{names}.default", kombu.Exchange(f"{names}.default"), f"{names}.default"),
        kombu.Queue(f"{names}.videos", media, routing_key="media.video.#"),
        kombu.Queue(f"{names}.images", media, routing_key="media.image.#", max_priority=10),
        kombu.Queue(f"{names}.a", fan),
        kombu.Queue(f"{names}.b", fan, message_ttl=600),
    ]
    with kombu.Connection(url) as connection:
        channel = connection.channel()
        # Then RabbitMQ accepts every declaration (a difference is PRECONDITION_FAILED)
        for queue in theirs:
            queue(channel).declare()

    # And chard, opened again, reads kombu's objects as its own
    again = _broker(url, Topology.from_settings(theirs))
    try:
        assert again.fetch([q.name for q in theirs], 1, timeout=0) == []
    finally:
        again.close()


def test_a_quorum_queues_delivery_limit_bounds_its_deliveries(url: str, names: str) -> None:
    # Given a quorum queue whose declaration sets x-delivery-limit 1 (one redelivery)
    limited = Queue(
        f"{names}.limited",
        Exchange(f"{names}.limited"),
        f"{names}.limited",
        queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": 1},
    )
    broker = _broker(url, Topology.from_settings([limited]))
    try:
        broker.publish(OutgoingMessage(limited.name, b"pill"))

        # Then what the worker reads from it may be delivered twice at most
        (delivery,) = wait_for(lambda: broker.fetch([limited.name], 1, timeout=0.2))
        assert delivery.delivery_limit == 2
        delivery.ack()
    finally:
        broker.close()


def test_revoke_casts_cross_celerys_pidbox_fanout_both_ways(url: str) -> None:
    pytest.importorskip("celery")
    import time

    from celery import Celery as CeleryApp
    from kombu import Connection
    from kombu import Exchange as KombuExchange
    from kombu import Queue as KombuQueue

    from chard.protocol.pidbox import read_revoke, revoke_cast

    broker = open_broker(url)
    celery = CeleryApp("pidbox", broker=url)
    node_queue = f"celery@{uuid.uuid4().hex[:6]}.celery.pidbox"
    try:
        # Given a chard listener and a Celery worker's pidbox queue on celery.pidbox
        assert broker.celery_casts(0) == []
        pidbox = KombuExchange("celery.pidbox", type="fanout", durable=False)
        with Connection(url) as connection:
            KombuQueue(node_queue, pidbox, exclusive=False, auto_delete=False)(
                connection.default_channel
            ).declare()

            # When a Celery client revokes, then a chard client casts its own revoke
            celery.control.revoke("from-celery")
            broker.celery_cast(
                revoke_cast(["from-chard"], terminate=False, signal="SIGTERM", now=time.time())
            )

            # Then chard heard Celery's, and the Celery worker's queue got chard's (and Celery's)
            heard = wait_for(lambda: broker.celery_casts(0.2), timeout=10)
            revocations = [read_revoke(p, "chard@x", time.time(), 60) for p in heard]
            assert "from-celery" in [i for r in revocations if r for i in r.ids]
            channel = connection.default_channel
            bodies = []
            while (message := channel.basic_get(node_queue, no_ack=True)) is not None:
                bodies.append(json.loads(message.body))
            ids = [b["arguments"]["task_id"] for b in bodies]  # Celery sends one id bare
            assert {i if isinstance(i, str) else i[0] for i in ids} == {"from-celery", "from-chard"}
            assert {b["method"] for b in bodies} == {"revoke"}
            channel.queue_delete(node_queue)
    finally:
        broker.close()
        celery.close()


def test_under_compat_chards_events_reach_celerys_event_receiver(url: str) -> None:
    pytest.importorskip("celery")
    import threading
    import time

    from celery import Celery as CeleryApp

    from chard.protocol.events import encode_batch

    broker = open_broker(url, {"celery_events": True})  # what chard_celery_compat sets
    celery = CeleryApp("events", broker=url)
    heard: list[dict[str, object]] = []
    try:
        # Given Celery's event receiver (as `celery events` and Flower use) on celeryev
        with celery.connection_for_read() as connection:
            receiver = celery.events.Receiver(connection, handlers={"*": heard.append})
            listening = threading.Thread(
                target=receiver.capture, kwargs={"limit": 1, "timeout": 30}, daemon=True
            )
            listening.start()
            event = {"type": "task-succeeded", "uuid": "u-1", "hostname": "chard@x",
                     "timestamp": time.time(), "runtime": 0.1, "result": "5"}  # fmt: skip

            # When a chard process broadcasts a batch of events (until the receiver is up)
            def heard_it() -> bool:
                broker.broadcast("events", encode_batch([event]))
                return bool(heard)

            wait_for(heard_it, timeout=30, interval=0.5)
            listening.join(timeout=10)

        # Then Celery's receiver got it as a Celery event
        assert heard[0]["type"] == "task-succeeded"
        assert (heard[0]["uuid"], heard[0]["hostname"]) == ("u-1", "chard@x")
    finally:
        broker.close()
        celery.close()
