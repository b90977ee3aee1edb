"""One contract suite, run against every broker (memory, sqlite, redis).

What the worker relies on, whatever the transport: at-least-once leases that lapse
when a consumer dies and are kept alive by heartbeats, counted deliveries,
priorities with FIFO inside each, ETAs held in the broker, fairness across
queues, dead letters, and a blocking fetch that returns promptly.

Several tests use two instances of one broker as two consumers (``make_broker``):
leases belong to an instance, as they would to a worker process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from chard.brokers import Broker, Delivery
from chard.brokers.base import OutgoingMessage
from chard.brokers.memory import MemoryBroker
from tests.contract.conftest import BrokerFactory
from tests.helpers import wait_for

#: A short lease for the tests that wait for one to lapse.
SHORT_LEASE = 0.5


def publish(broker: Broker, queue: str, body: bytes, priority: int = 0) -> None:
    broker.publish(OutgoingMessage(queue, body, priority=priority))


def fetch_one(broker: Broker, queues: Sequence[str]) -> Delivery:
    """Fetch exactly one delivery, failing the test if none comes within a second."""
    found = broker.fetch(queues, 1, timeout=1.0)
    assert len(found) == 1, f"expected one delivery from {queues}, got {found}"
    return found[0]


def poll_as_worker(broker: Broker, queues: Sequence[str]) -> list[Delivery]:
    """Do what a live worker does between tasks: heartbeat, then a short fetch."""
    broker.heartbeat()
    return broker.fetch(queues, 1, timeout=0.05)


def test_publish_fetch_ack(broker: Broker) -> None:
    # Given a message whose bytes are not text
    body = b"\x00\xffenvelope\n"
    publish(broker, "q", body)
    assert broker.queue_size("q") == 1

    # When it is fetched and acked
    delivery = fetch_one(broker, ["q"])
    assert (delivery.body, delivery.queue, delivery.delivery_count) == (body, "q", 1)
    assert broker.queue_size("q") == 0  # leased: no longer waiting
    delivery.ack()

    # Then it is gone for good
    assert broker.fetch(["q"], 10, timeout=0) == []
    assert broker.queue_size("q") == 0


def test_fetch_respects_limit(broker: Broker) -> None:
    broker.publish([OutgoingMessage("q", b"%d" % i) for i in range(5)])

    assert len(broker.fetch(["q"], 3, timeout=1.0)) == 3
    assert len(broker.fetch(["q"], 3, timeout=1.0)) == 2


def test_fifo_within_one_priority(broker: Broker) -> None:
    bodies = [b"m%d" % i for i in range(10)]
    for body in bodies:
        publish(broker, "q", body, priority=4)

    one_by_one = [fetch_one(broker, ["q"]).body for _ in range(5)]
    batch = [d.body for d in broker.fetch(["q"], 5, timeout=1.0)]

    assert one_by_one + batch == bodies


def test_lower_priority_number_comes_first(broker: Broker) -> None:
    # One priority from each of kombu's Redis levels (0-2, 3-5, 6-8, 9): every broker must
    # order these; within a level a broker may keep publish order (see brokers/base.py).
    for body, priority in [(b"p6", 6), (b"p0-a", 0), (b"p9", 9), (b"p0-b", 0), (b"p3", 3)]:
        publish(broker, "q", body, priority=priority)

    order = [fetch_one(broker, ["q"]).body for _ in range(5)]

    if broker.higher_priority_first:  # RabbitMQ, as Celery documents it there
        assert order == [b"p9", b"p6", b"p3", b"p0-a", b"p0-b"]
    else:
        assert order == [b"p0-a", b"p0-b", b"p3", b"p6", b"p9"]


def test_a_publisher_stores_each_body_as_publish_would(broker: Broker) -> None:
    # Given a publisher per priority level of one queue (a task's plain delay() keeps one)
    urgent, later = broker.publisher("q", priority=0), broker.publisher("q", priority=9)

    # When bodies go out through them
    later(b"late")
    urgent(b"a")
    urgent(b"b")

    # Then each is stored at once, in order within its priority
    order = [fetch_one(broker, ["q"]).body for _ in range(3)]
    if broker.higher_priority_first:
        assert order == [b"late", b"a", b"b"]
    else:
        assert order == [b"a", b"b", b"late"]


def test_eta_hides_a_message_until_due(broker: Broker) -> None:
    # Given a message due in 0.3 s, published before one due now
    eta = time.time() + 0.3
    broker.publish(OutgoingMessage("q", b"later", eta=eta))
    publish(broker, "q", b"now")

    # Then only the due one is fetched at first, though both wait in the queue
    assert [d.body for d in broker.fetch(["q"], 10, timeout=0)] == [b"now"]
    assert broker.queue_size("q") == 1

    # And the other comes once due, not before
    (later,) = wait_for(lambda: broker.fetch(["q"], 10, timeout=0.1), timeout=5.0)
    assert later.body == b"later"
    assert time.time() >= eta - 0.005  # a transport may keep millisecond precision


@pytest.mark.parametrize("limit", [1, 3])
def test_a_busy_queue_does_not_starve_another(broker: Broker, limit: int) -> None:
    # Given a long backlog in one queue and two messages in another
    broker.publish([OutgoingMessage("busy", b"b%d" % i) for i in range(30)])
    broker.publish([OutgoingMessage("quiet", b"q%d" % i) for i in range(2)])

    # When a consumer of both fetches a few times
    got = [d for _ in range(4) for d in broker.fetch(["busy", "quiet"], limit, timeout=1.0)]

    # Then the quiet queue was served too
    assert sorted(d.body for d in got if d.queue == "quiet") == [b"q0", b"q1"]


def test_a_lapsed_lease_is_redelivered_and_counted(make_broker: BrokerFactory) -> None:
    # Given a consumer that leased a message and then went silent (no heartbeat)
    dead = make_broker(lease_timeout=SHORT_LEASE)
    alive = make_broker(lease_timeout=SHORT_LEASE)
    publish(dead, "q", b"work")
    stale = fetch_one(dead, ["q"])
    assert alive.fetch(["q"], 1, timeout=0) == []

    # When its lease lapses, another consumer gets the message, counted twice
    (again,) = wait_for(lambda: poll_as_worker(alive, ["q"]), timeout=10.0)
    assert (again.body, again.delivery_count) == (b"work", 2)

    # Then the first consumer's late settle does not touch the new holder's lease
    stale.ack()
    assert poll_as_worker(dead, ["q"]) == []
    again.reject(requeue=True)
    assert alive.queue_size("q") == 1
    assert fetch_one(alive, ["q"]).delivery_count == 2


def test_heartbeat_keeps_a_slow_message_from_redelivery(make_broker: BrokerFactory) -> None:
    # Given a consumer holding a message on a 1 s lease
    holder = make_broker(lease_timeout=1.0)
    other = make_broker(lease_timeout=1.0)
    publish(holder, "q", b"slow")
    held = fetch_one(holder, ["q"])

    # When it heartbeats for twice the lease, nobody else gets the message
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        holder.heartbeat()
        assert poll_as_worker(other, ["q"]) == []

    # Then it can still ack it, once
    held.ack()
    assert other.fetch(["q"], 1, timeout=0.2) == []


def test_reject_with_requeue_returns_without_counting(broker: Broker) -> None:
    publish(broker, "q", b"unstarted")
    first = fetch_one(broker, ["q"])

    first.reject(requeue=True)

    assert broker.queue_size("q") == 1
    second = fetch_one(broker, ["q"])
    assert (second.body, second.delivery_count) == (b"unstarted", 1)


def test_reject_without_requeue_drops(broker: Broker) -> None:
    publish(broker, "q", b"unwanted")

    fetch_one(broker, ["q"]).reject()

    assert broker.queue_size("q") == 0
    assert broker.fetch(["q"], 1, timeout=0) == []
    assert broker.dead_letters() == []


def test_settling_twice_is_a_no_op(broker: Broker) -> None:
    publish(broker, "q", b"once")
    delivery = fetch_one(broker, ["q"])
    delivery.ack()

    delivery.ack()
    delivery.reject(requeue=True)
    delivery.dead_letter("too late")

    assert broker.queue_size("q") == 0
    assert broker.dead_letters() == []


def test_ack_many_settles_every_delivery_once(make_broker: BrokerFactory) -> None:
    # Given three leased messages, one of them already settled
    broker = make_broker(lease_timeout=SHORT_LEASE)
    for body in (b"a", b"b", b"c"):
        publish(broker, "q", body)
    deliveries = broker.fetch(["q"], 3, timeout=1.0)
    assert len(deliveries) == 3
    deliveries[0].ack()

    # When they are acked together
    broker.ack_many(deliveries)
    broker.ack_many([])

    # Then none comes back, not even after its lease would have lapsed
    time.sleep(SHORT_LEASE + 0.2)
    broker.heartbeat()
    assert broker.fetch(["q"], 3, timeout=0) == []
    assert broker.queue_size("q") == 0
    deliveries[1].reject(requeue=True)  # settled by ack_many: a no-op
    assert broker.queue_size("q") == 0


def test_ack_and_fetch_acks_then_fetches(make_broker: BrokerFactory) -> None:
    # Given two leased messages, one of them already settled, and one more queued
    broker = make_broker(lease_timeout=SHORT_LEASE)
    for body in (b"a", b"b"):
        publish(broker, "q", body)
    deliveries = broker.fetch(["q"], 2, timeout=1.0)
    assert len(deliveries) == 2
    deliveries[0].ack()
    publish(broker, "q", b"c")

    # When the worker's fetcher acks them with its next fetch
    [third] = broker.ack_and_fetch(deliveries, ["q"], 5, timeout=1.0)
    third.ack()

    # Then the next message came, and neither acked one comes back after its lease lapsed
    assert third.body == b"c"
    time.sleep(SHORT_LEASE + 0.2)
    broker.heartbeat()
    assert broker.ack_and_fetch([], ["q"], 3, timeout=0) == []
    assert broker.queue_size("q") == 0
    deliveries[1].reject(requeue=True)  # settled by ack_and_fetch: a no-op
    assert broker.queue_size("q") == 0


def test_dead_letter_then_redrive(broker: Broker) -> None:
    # Given a message set aside as a poison pill
    publish(broker, "q", b"poison", priority=2)
    fetch_one(broker, ["q"]).dead_letter("boom")
    assert broker.queue_size("q") == 0
    (letter,) = broker.dead_letters()
    assert (letter.queue, letter.body, letter.reason, letter.delivery_count) == (
        "q",
        b"poison",
        "boom",
        1,
    )
    assert abs(letter.failed_at - time.time()) < 60

    # When it is re-driven
    assert broker.redrive(letter.id) is True

    # Then it is back on its queue with a fresh count, and no longer a dead letter
    assert broker.dead_letters() == []
    again = fetch_one(broker, ["q"])
    assert (again.body, again.delivery_count) == (b"poison", 1)
    assert broker.redrive(letter.id) is False


def test_dead_letters_are_listed_oldest_first(broker: Broker) -> None:
    for body in (b"d0", b"d1", b"d2"):
        publish(broker, "q", body)
        fetch_one(broker, ["q"]).dead_letter(f"reason {body!r}")

    assert [letter.body for letter in broker.dead_letters()] == [b"d0", b"d1", b"d2"]
    assert [letter.body for letter in broker.dead_letters(limit=2)] == [b"d0", b"d1"]


def test_redrive_of_an_unknown_id_is_false(broker: Broker) -> None:
    assert broker.redrive("no-such-dead-letter") is False


def test_purge_removes_waiting_messages_only(broker: Broker) -> None:
    # Given three messages in "q" (one leased, one delayed) and one in "other"
    broker.publish([OutgoingMessage("q", b"a"), OutgoingMessage("q", b"b")])
    broker.publish(OutgoingMessage("q", b"delayed", eta=time.time() + 60))
    publish(broker, "other", b"keep")
    leased = fetch_one(broker, ["q"])
    assert broker.queue_size("q") == 2

    # When "q" is purged
    assert broker.purge("q") == 2

    # Then only the leased message survives there, and "other" is untouched
    assert broker.queue_size("q") == 0
    assert broker.queue_size("other") == 1
    leased.ack()
    assert broker.fetch(["q"], 10, timeout=0) == []


def test_publish_of_a_sequence_stores_every_message(broker: Broker) -> None:
    broker.publish(
        [
            OutgoingMessage("a", b"a0"),
            OutgoingMessage("b", b"b0"),
            OutgoingMessage("a", b"a1"),
            OutgoingMessage("a", b"a2", priority=0 if broker.higher_priority_first else 9),
        ]
    )
    broker.publish([])

    assert (broker.queue_size("a"), broker.queue_size("b")) == (3, 1)
    assert [fetch_one(broker, ["a"]).body for _ in range(3)] == [b"a0", b"a1", b"a2"]


def test_fetch_times_out_promptly_with_nothing(broker: Broker) -> None:
    started = time.monotonic()

    assert broker.fetch(["empty"], 10, timeout=0.3) == []

    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.5


def test_fetch_wakes_when_a_message_arrives(make_broker: BrokerFactory) -> None:
    # Given a consumer blocked in fetch with a long timeout
    consumer, producer = make_broker(), make_broker()
    result: list[tuple[list[Delivery], float]] = []
    thread = threading.Thread(
        target=lambda: result.append((consumer.fetch(["q"], 1, timeout=10.0), time.monotonic()))
    )
    thread.start()

    # When another instance publishes
    published = time.monotonic()
    publish(producer, "q", b"hello")
    thread.join(timeout=10.0)

    # Then the fetch returns the message long before its timeout
    ((found, returned),) = result
    assert [d.body for d in found] == [b"hello"]
    assert returned - published < 2.0


# -- take_over: a supervisor settles a dead consumer's messages at once ------------------------
#
# RabbitMQ has no take-over (unacked deliveries belong to their channel); it redelivers a dead
# consumer's messages at once instead, which tests/integration/test_amqp_broker.py checks.


@pytest.fixture
def needs_take_over(broker_kind: str) -> None:
    if broker_kind == "amqp":
        pytest.skip("RabbitMQ redelivers a dead consumer's messages itself: no take_over")


def test_take_over_leases_a_dead_consumers_messages_to_the_caller(
    needs_take_over: None,
    make_broker: BrokerFactory,
) -> None:
    # Given a consumer holding three messages of two queues and three priorities, then dying
    dead, heir = make_broker(), make_broker()
    publish(dead, "a", b"a0", priority=0)
    publish(dead, "a", b"a9", priority=9)
    publish(dead, "b", b"b3", priority=3)
    stale = dead.fetch(["a", "b"], 3, timeout=1.0)
    assert len(stale) == 3

    # When another instance takes them over
    taken = {d.body: d for d in heir.take_over(dead.consumer_id)}

    # Then it holds the same messages, the same deliveries going on
    assert sorted((d.body, d.queue, d.delivery_count) for d in taken.values()) == [
        (b"a0", "a", 1),
        (b"a9", "a", 1),
        (b"b3", "b", 1),
    ]

    # And a late settle through the dead consumer's deliveries touches none of them
    dead.ack_many(stale[:2])
    stale[2].reject(requeue=True)
    dead.heartbeat()
    assert (heir.queue_size("a"), heir.queue_size("b")) == (0, 0)
    assert heir.fetch(["a", "b"], 10, timeout=0) == []

    # When the heir requeues the one that never started and acks the others
    taken[b"a9"].reject(requeue=True)
    heir.ack_many([taken[b"a0"], taken[b"b3"]])
    publish(heir, "a", b"a5", priority=5)

    # Then that one comes back uncounted, behind more urgent work (its priority kept)
    again = [fetch_one(heir, ["a", "b"]) for _ in range(2)]
    assert [(d.body, d.delivery_count) for d in again] == [(b"a5", 1), (b"a9", 1)]
    assert heir.fetch(["a", "b"], 10, timeout=0) == []
    assert heir.dead_letters() == []


def test_a_taken_over_lease_lives_on_the_heirs_heartbeat(
    needs_take_over: None, make_broker: BrokerFactory
) -> None:
    # Given a message taken over from a dead consumer, everyone on short leases
    dead, heir, other = (make_broker(lease_timeout=SHORT_LEASE) for _ in range(3))
    publish(dead, "q", b"slow")
    fetch_one(dead, ["q"])
    (held,) = heir.take_over(dead.consumer_id)

    # When the heir heartbeats for well past the dead consumer's lease, nobody else gets it
    deadline = time.monotonic() + 4 * SHORT_LEASE
    while time.monotonic() < deadline:
        heir.heartbeat()
        assert poll_as_worker(other, ["q"]) == []

    # Then the heir settles it, once
    held.ack()
    assert poll_as_worker(other, ["q"]) == []
    assert heir.queue_size("q") == 0


def test_take_over_of_an_unknown_or_empty_consumer_returns_nothing(
    needs_take_over: None,
    make_broker: BrokerFactory,
) -> None:
    dead, heir = make_broker(), make_broker()
    assert heir.take_over("no-such-consumer") == []
    assert heir.take_over(dead.consumer_id) == []  # never fetched

    # Given a consumer that acked one message and holds another
    publish(dead, "q", b"done")
    fetch_one(dead, ["q"]).ack()
    publish(dead, "q", b"held")
    fetch_one(dead, ["q"])

    # Then only the held one is taken, and only by the first take-over
    assert [d.body for d in heir.take_over(dead.consumer_id)] == [b"held"]
    assert heir.take_over(dead.consumer_id) == []
    assert make_broker().take_over(dead.consumer_id) == []


def test_take_over_of_this_instances_own_id_is_refused(broker: Broker) -> None:
    with pytest.raises(ValueError, match="own leases"):
        broker.take_over(broker.consumer_id)


def test_take_over_includes_a_lapsed_lease_nobody_took_back(
    needs_take_over: None, make_broker: BrokerFactory
) -> None:
    # Given a dead consumer's lease that lapsed while no other consumer fetched
    dead, heir = make_broker(lease_timeout=SHORT_LEASE), make_broker(lease_timeout=SHORT_LEASE)
    publish(dead, "q", b"late")
    fetch_one(dead, ["q"])
    time.sleep(SHORT_LEASE + 0.2)

    # When it is taken over, the message is the heir's, still on its first delivery
    (taken,) = heir.take_over(dead.consumer_id)
    assert (taken.body, taken.delivery_count) == (b"late", 1)

    # Then nobody else can fetch it
    assert heir.queue_size("q") == 0
    assert make_broker().fetch(["q"], 1, timeout=0) == []


def test_take_over_leaves_what_another_consumer_took_back_after_a_lapse(
    needs_take_over: None,
    make_broker: BrokerFactory,
) -> None:
    # Given a message whose lease lapsed and which another consumer then leased again
    dead, other, heir = (make_broker(lease_timeout=SHORT_LEASE) for _ in range(3))
    publish(dead, "q", b"work")
    stale = fetch_one(dead, ["q"])
    (again,) = wait_for(lambda: poll_as_worker(other, ["q"]), timeout=10.0)
    assert again.delivery_count == 2

    # When the first consumer is taken over, nothing comes: the message is the other's now
    assert heir.take_over(dead.consumer_id) == []
    stale.ack()

    # Then when the other dies too, its lease is taken with the count it had
    (taken,) = heir.take_over(other.consumer_id)
    assert (taken.body, taken.delivery_count) == (b"work", 2)
    again.ack()  # too late: a no-op
    taken.reject(requeue=True)
    assert fetch_one(heir, ["q"]).delivery_count == 2


def test_a_broker_without_take_over_says_leases_lapse_instead() -> None:
    # The interface's default, for a third-party broker that has no take-over.
    class NoTakeOver(MemoryBroker):
        _take_over = Broker._take_over

    with pytest.raises(NotImplementedError, match=r"NoTakeOver broker .* when their leases lapse"):
        NoTakeOver().take_over("gone")


def test_delayed_lists_the_held_messages_of_the_queues_soonest_first(broker: Broker) -> None:
    # Given countdown messages on two queues, and one message due now
    now = time.time()
    broker.publish(
        [
            OutgoingMessage("a", b"later", priority=5, eta=now + 600),
            OutgoingMessage("a", b"sooner", eta=now + 300),
            OutgoingMessage("b", b"other queue", eta=now + 100),
            OutgoingMessage("a", b"due now"),
        ]
    )

    # When the held messages of queue "a" are listed
    held = broker.delayed(["a"])

    # Then they come soonest first, with their ETA, nothing due and nothing of "b"
    assert [m.body for m in held] == [b"sooner", b"later"]
    assert {m.queue for m in held} == {"a"}
    assert held[1].eta == pytest.approx(now + 600, abs=1)
    assert held[1].priority in (3, 5)  # Redis keeps kombu's level (3 for 3-5)
    assert [m.body for m in broker.delayed(["a", "b"], limit=1)] == [b"other queue"]
    assert broker.delayed(["nothing"]) == []
    # and listing took nothing: the due one is still fetched, the held ones still wait
    assert broker.queue_size("a") == 3
