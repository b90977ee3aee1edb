"""Remote control records on the wire, rate limit strings, and the rate limiter's turns."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from chard.brokers.base import OutgoingMessage
from chard.brokers.memory import MemoryBroker
from chard.exceptions import DecodeError
from chard.protocol.control import (
    CONTROL_VERSION,
    ControlReply,
    ControlRequest,
    parse_rate,
)
from chard.protocol.message import TaskMessage
from chard.worker.held import Admitted
from chard.worker.ratelimit import PoolShare, RateLimiter, Throttle


def test_a_request_round_trips_through_its_payload() -> None:
    request = ControlRequest.create(
        "rate_limit",
        {"task_name": "t", "rate_limit": "10/m"},
        destination=["w1@h", "w2@h"],
        reply=True,
        now=1000.0,
        timeout=2.5,
    )

    decoded = ControlRequest.from_payload(request.to_payload())

    assert decoded == request
    assert decoded.expires == 1002.5
    assert decoded.destination == ("w1@h", "w2@h")
    assert len(decoded.ticket) == 32


def test_the_request_payload_is_the_documented_json() -> None:
    request = ControlRequest.create("ping", now=100.0, timeout=1.0, reply=True)

    assert json.loads(request.to_payload()) == {
        "v": CONTROL_VERSION,
        "ticket": request.ticket,
        "command": "ping",
        "arguments": {},
        "destination": None,
        "reply": True,
        "expires": 101.0,
    }


def test_a_single_node_name_is_a_destination_and_an_empty_one_means_every_node() -> None:
    one = ControlRequest.create("ping", destination="w1@h", now=0.0, timeout=1.0)
    every = ControlRequest.create("ping", destination=[], now=0.0, timeout=1.0)

    assert (one.is_for("w1@h"), one.is_for("w2@h")) == (True, False)
    assert every.destination is None
    assert every.is_for("anyone@h")


def test_a_request_expires_at_its_timeout() -> None:
    request = ControlRequest.create("ping", now=100.0, timeout=1.0)

    assert not request.is_expired(100.9)
    assert request.is_expired(101.0)


def test_arguments_that_are_not_json_are_refused_with_the_command_named() -> None:
    request = ControlRequest.create("x", {"value": object()}, now=0.0, timeout=1.0)

    with pytest.raises(TypeError, match="control command 'x' arguments must be JSON"):
        request.to_payload()


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"\xff not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"v": 99, "ticket": "t", "command": "ping", "expires": 1}', "version 99"),
        (b'{"v": 1, "command": "ping", "expires": 1}', "'ticket' is not a non-empty string"),
        (b'{"v": 1, "ticket": "t", "expires": 1}', "'command' is not a non-empty string"),
        (b'{"v": 1, "ticket": "t", "command": "p", "expires": "x"}', "not a timestamp"),
        (b'{"v": 1, "ticket": "t", "command": "p", "expires": 1, "arguments": [1]}', "object"),
        (
            b'{"v": 1, "ticket": "t", "command": "p", "expires": 1, "destination": "w1"}',
            "not a list of node names",
        ),
    ],
)
def test_a_malformed_request_is_a_decode_error_naming_the_fault(
    payload: bytes, complaint: str
) -> None:
    with pytest.raises(DecodeError, match=complaint):
        ControlRequest.from_payload(payload)


def test_a_reply_round_trips_and_what_json_cannot_hold_is_its_repr() -> None:
    reply = ControlReply("ticket", "w1@h", {"ok": "pong"})
    assert ControlReply.from_payload(reply.to_payload()) == reply

    odd = ControlReply.from_payload(ControlReply("t", "w1@h", {"x": {1, 2}}).to_payload())
    assert odd.reply == {"x": "{1, 2}"}


def test_a_reply_from_another_version_is_refused() -> None:
    with pytest.raises(DecodeError, match="version 2"):
        ControlReply.from_payload(b'{"v": 2, "ticket": "t", "node": "n", "reply": 1}')


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [("10/s", 10.0), ("10/m", 10 / 60), ("36/h", 0.01), ("5", 5.0), (2.5, 2.5), (None, 0.0)],
)
def test_rate_limits_parse_as_celery_reads_them(
    rate: str | float | None, per_second: float
) -> None:
    assert parse_rate(rate) == pytest.approx(per_second)


@pytest.mark.parametrize("rate", ["10/x", "ten/m", "10/m/s", "-1", True])
def test_a_malformed_rate_limit_is_refused_with_the_accepted_shapes(rate: object) -> None:
    with pytest.raises(ValueError, match="invalid rate limit"):
        parse_rate(rate)  # type: ignore[arg-type]


def test_the_limiter_starts_the_first_at_once_then_spaces_the_rest() -> None:
    limiter = RateLimiter()

    waits = [limiter.delay("t", "2/s", now=100.0) for _ in range(3)]

    assert waits == [0.0, 0.5, 1.0]
    assert limiter.delay("other", "2/s", now=100.0) == 0.0  # per task type
    assert limiter.delay("t", "2/s", now=102.0) == 0.0  # turns do not pile up while idle


def test_a_share_of_the_limit_spaces_each_process_further_apart() -> None:
    limiter = RateLimiter(share=0.5)  # one of two prefork children

    assert [limiter.delay("t", "1/s", now=0.0) for _ in range(2)] == [0.0, 2.0]


def test_the_share_follows_the_pool_size_across_a_fork() -> None:
    # Given a pool of two sharing a node limit of 1/s, and a child forked from it
    share = PoolShare(2)
    limiter = RateLimiter(share)
    assert [limiter.delay("t", "1/s", now=0.0) for _ in range(2)] == [0.0, 2.0]
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)
    go = ctx.Event()

    def child() -> None:
        go.wait(10)
        writer.send(share())

    process = ctx.Process(target=child)
    process.start()

    # When the parent grows the pool to four
    share.resize(4)
    go.set()

    # Then the child's share is a quarter, and each turn is spaced by the new share
    assert reader.recv() == 0.25
    process.join(10)
    assert limiter.delay("t", "1/s", now=10.0) == 0.0  # a new share starts afresh
    assert limiter.delay("t", "1/s", now=10.0) == 4.0


def test_a_changed_limit_starts_afresh_and_a_bad_one_is_not_enforced() -> None:
    limiter = RateLimiter()
    limiter.delay("t", "1/m", now=0.0)
    assert limiter.delay("t", "1/m", now=0.0) == 60.0

    assert limiter.delay("t", "10/s", now=0.0) == 0.0
    assert limiter.delay("t", "nonsense", now=0.0) == 0.0
    assert limiter.delay("t", "nonsense", now=0.0) == 0.0


def _held(broker: MemoryBroker, task: str, n: int) -> Admitted:
    """An admitted message of ``task``, leased from ``broker``."""
    message = TaskMessage(task=task, id=f"{task}-{n}", args=())
    broker.publish(OutgoingMessage("celery", message.to_wire()))
    (delivery,) = broker.fetch(["celery"], 1, timeout=0)
    return Admitted(delivery, message, True, None, rate_limit="1/s")


def test_the_throttle_holds_each_message_until_its_turn_and_releases_in_turn_order() -> None:
    # Given a throttle for a task limited to 2/s, offered three messages at once
    rates = {"t": "2/s"}
    throttle = Throttle(RateLimiter(), rates.__getitem__)
    broker = MemoryBroker()
    items = [_held(broker, "t", n) for n in range(3)]

    passed = [throttle.offer(item, now=10.0) for item in items]

    # Then the first starts at once and the others are held, in order of their turns
    assert passed == [True, False, False]
    assert throttle.deliveries() == [items[1].delivery, items[2].delivery]
    assert throttle.release(now=10.2) == ([], pytest.approx(0.3))
    assert throttle.release(now=10.5) == ([items[1]], pytest.approx(0.5))
    assert throttle.release(now=11.0) == ([items[2]], 1.0)
    assert len(throttle) == 0


def test_a_changed_limit_gives_every_held_message_a_new_turn() -> None:
    # Given two messages held behind a limit of 1/m
    rates = {"t": "1/m"}
    throttle = Throttle(RateLimiter(), rates.__getitem__)
    broker = MemoryBroker()
    items = [_held(broker, "t", n) for n in range(3)]
    assert [throttle.offer(item, now=0.0) for item in items] == [True, False, False]

    # When the limit is lifted (remote control's rate_limit)
    rates["t"] = ""
    throttle.limits_changed()

    # Then both start at the next release, in the order they waited
    assert throttle.release(now=1.0) == ([items[1], items[2]], 1.0)
    assert throttle.take_all() == []
