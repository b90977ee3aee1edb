"""The broadcast channel contract, run against every broker (memory, sqlite, redis).

A broadcast channel is a durable, bounded log that every reader sees whole:
revocations ride on it, and a worker that starts late reads it from ``"0"``.
Two instances of one broker stand for two processes (a client and a worker).
"""

from __future__ import annotations

import threading
import time

import pytest

from chard.brokers import Broker
from chard.brokers.base import BROADCAST_START
from chard.exceptions import ImproperlyConfigured
from tests.contract.conftest import BrokerFactory


def payloads(entries: list[tuple[str, bytes]]) -> list[bytes]:
    return [payload for _, payload in entries]


def test_entries_are_read_in_order_with_their_cursors(broker: Broker) -> None:
    # Given five entries, one of them not text
    sent = [b"\x00\xff binary", b"one", b"two", b"three", b"four"]
    cursors = [broker.broadcast("c", payload) for payload in sent]

    # When the channel is read from the start
    entries = broker.broadcast_read("c", BROADCAST_START, timeout=0)

    # Then every entry comes once, oldest first, under the cursor broadcast() returned
    assert entries == list(zip(cursors, sent, strict=True))
    assert len(set(cursors)) == 5


def test_reading_after_a_cursor_returns_only_newer_entries(broker: Broker) -> None:
    first, second, *_ = [broker.broadcast("c", b"m%d" % i) for i in range(4)]

    assert payloads(broker.broadcast_read("c", first, timeout=0)) == [b"m1", b"m2", b"m3"]
    assert payloads(broker.broadcast_read("c", second, timeout=0)) == [b"m2", b"m3"]
    last = broker.broadcast_read("c", second, timeout=0)[-1][0]
    assert broker.broadcast_read("c", last, timeout=0) == []


def test_channels_are_separate(broker: Broker) -> None:
    broker.broadcast("a", b"for a")
    broker.broadcast("b", b"for b")

    assert payloads(broker.broadcast_read("a", BROADCAST_START, timeout=0)) == [b"for a"]
    assert payloads(broker.broadcast_read("b", BROADCAST_START, timeout=0)) == [b"for b"]
    assert broker.broadcast_read("never", BROADCAST_START, timeout=0) == []


def test_tail_starts_a_reader_from_now(broker: Broker) -> None:
    # An empty channel's tail is the start: whatever comes next is after it
    empty_tail = broker.broadcast_tail("c")
    assert empty_tail == BROADCAST_START
    broker.broadcast("c", b"old")

    # When a reader starts from the tail
    tail = broker.broadcast_tail("c")
    broker.broadcast("c", b"new")

    # Then it sees only what came after
    assert payloads(broker.broadcast_read("c", tail, timeout=0)) == [b"new"]
    assert payloads(broker.broadcast_read("c", empty_tail, timeout=0)) == [b"old", b"new"]


def test_every_reader_sees_every_entry(make_broker: BrokerFactory) -> None:
    # Unlike a queue, reading takes nothing away
    writer, reader_a, reader_b = make_broker(), make_broker(), make_broker()
    writer.broadcast("c", b"to all")

    assert payloads(reader_a.broadcast_read("c", BROADCAST_START, timeout=0)) == [b"to all"]
    assert payloads(reader_b.broadcast_read("c", BROADCAST_START, timeout=0)) == [b"to all"]
    assert payloads(reader_a.broadcast_read("c", BROADCAST_START, timeout=0)) == [b"to all"]


def test_blocked_read_is_woken_by_a_broadcast_from_another_instance(
    make_broker: BrokerFactory,
) -> None:
    # Given a reader (its own instance, as in a worker process) blocked for up to 10 s
    reader, writer = make_broker(), make_broker()
    start = reader.broadcast_tail("c")
    about_to_block = threading.Event()
    got: list[tuple[list[tuple[str, bytes]], float]] = []

    def read() -> None:
        assert reader.broadcast_read("c", start, timeout=0) == []
        about_to_block.set()
        began = time.monotonic()
        entries = reader.broadcast_read("c", start, timeout=10.0)
        got.append((entries, time.monotonic() - began))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert about_to_block.wait(5)

    # When another instance broadcasts
    cursor = writer.broadcast("c", b"wake up")

    # Then the reader returns with it long before its timeout
    thread.join(timeout=3.0)
    assert not thread.is_alive(), "the broadcast did not wake the blocked reader within 3 s"
    entries, waited = got[0]
    assert entries == [(cursor, b"wake up")]
    assert waited < 3.0


def test_read_with_nothing_new_waits_for_its_timeout(broker: Broker) -> None:
    broker.broadcast("c", b"seen")
    tail = broker.broadcast_tail("c")

    began = time.monotonic()
    assert broker.broadcast_read("c", tail, timeout=0.3) == []
    waited = time.monotonic() - began

    assert 0.25 <= waited < 2.0


def test_retention_is_bounded_and_keeps_the_newest(
    make_broker: BrokerFactory, broker_kind: str
) -> None:
    # Given a channel that keeps 5 entries, and 250 broadcast to it
    broker = make_broker(broadcast_maxlen=5)
    sent = [b"e%03d" % i for i in range(250)]
    for payload in sent:
        broker.broadcast("c", payload)

    # When a new reader reads it from the start
    kept = payloads(make_broker().broadcast_read("c", BROADCAST_START, timeout=0))

    # Then it gets the newest entries in order, at least 5, and not much more than that
    assert kept == sent[-len(kept) :]
    if broker_kind == "redis":
        # XADD MAXLEN ~ trims whole stream nodes (up to 100 entries each) at once
        assert 5 <= len(kept) <= 105
    else:
        assert len(kept) == 5


def test_a_channel_may_keep_fewer_entries_than_the_default(
    broker: Broker, broker_kind: str
) -> None:
    # Given a channel of big entries (events) that asks to keep 5, and 250 broadcast to it
    sent = [b"e%03d" % i for i in range(250)]
    for payload in sent:
        broker.broadcast("big", payload, maxlen=5)
    broker.broadcast("other", b"x")

    # Then it keeps the newest, about 5, while other channels keep the default
    kept = payloads(broker.broadcast_read("big", BROADCAST_START, timeout=0))
    assert kept == sent[-len(kept) :]
    assert 5 <= len(kept) <= (105 if broker_kind == "redis" else 5)
    assert payloads(broker.broadcast_read("other", BROADCAST_START, timeout=0)) == [b"x"]


def test_a_restarted_reader_reads_everything_kept(make_broker: BrokerFactory) -> None:
    # Given entries broadcast while no reader ran, and the writer gone
    writer = make_broker()
    for i in range(3):
        writer.broadcast("revoke", b"r%d" % i)
    writer.close()

    # When a reader starts afresh (a worker started later) and reads from the start
    reader = make_broker()
    entries = reader.broadcast_read("revoke", BROADCAST_START, timeout=0)

    # Then it sees them all, and the last cursor is the tail
    assert payloads(entries) == [b"r0", b"r1", b"r2"]
    assert entries[-1][0] == reader.broadcast_tail("revoke")


def test_a_foreign_cursor_is_refused(broker: Broker) -> None:
    with pytest.raises(ValueError, match="not a broadcast cursor"):
        broker.broadcast_read("c", "not-a-cursor", timeout=0)


def test_a_retention_below_one_is_refused_with_the_fix(make_broker: BrokerFactory) -> None:
    with pytest.raises(ImproperlyConfigured, match="broadcast_maxlen must be >= 1, got 0"):
        make_broker(broadcast_maxlen=0)
