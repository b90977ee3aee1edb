"""AMQP URLs, frames and the delay chain's routing: what the RabbitMQ broker computes offline."""

from __future__ import annotations

import base64

import pytest

from chard._amqp import delay
from chard._amqp.frames import COUNT_HEADER, RAW_HEADER, Frame, to_envelope, to_frame
from chard._amqp.url import parse_amqp_url
from chard.brokers import open_broker
from chard.exceptions import ImproperlyConfigured
from chard.protocol import serializers
from chard.protocol.message import TaskMessage

JSON = frozenset({"application/json"})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://", ("localhost", 5672, "/", "guest", "guest", False)),
        ("amqp://localhost//", ("localhost", 5672, "/", "guest", "guest", False)),
        ("pyamqp://u:p%40ss@rabbit:5673/prod", ("rabbit", 5673, "prod", "u", "p@ss", False)),
        ("amqp://h/%2F", ("h", 5672, "/", "guest", "guest", False)),
        ("amqps://h/v", ("h", 5671, "v", "guest", "guest", True)),
    ],
)
def test_amqp_urls_read_as_kombu_reads_them(url: str, expected: tuple[object, ...]) -> None:
    t = parse_amqp_url(url)
    assert (t.host, t.port, t.vhost, t.user, t.password, t.tls) == expected


def test_the_password_stays_out_of_the_repr() -> None:
    target = parse_amqp_url("amqp://u:secret@h/v")
    assert "secret" not in repr(target)
    assert "secret" not in target.redacted


def test_a_bad_max_priority_is_refused_with_the_range() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"1\.\.255"):
        open_broker("amqp://", {"queue_max_priority": 0})


def test_a_task_envelope_becomes_celerys_amqp_frame_and_back() -> None:
    # Given chard's envelope of a task message
    message = TaskMessage(task="proj.add", id="abc", args=(2, 2), kwargs={}, reply_to="r1")
    envelope = message.to_wire("celery")

    # When it is turned into an AMQP frame
    frame = to_frame(envelope, priority=3)

    # Then the payload is the body, the protocol headers are AMQP headers
    assert serializers.json_loads(frame.body)[0] == [2, 2]
    assert frame.headers["task"] == "proj.add"
    assert (frame.content_type, frame.correlation_id, frame.reply_to) == (
        "application/json",
        "abc",
        "r1",
    )
    assert frame.priority == 3

    # And the envelope built back from it decodes to the same message
    frame.headers[COUNT_HEADER] = 2  # chard's bookkeeping never reaches the worker
    back = to_envelope(frame, "celery")
    decoded = TaskMessage.from_wire(back, JSON)
    assert (decoded.task, decoded.id, decoded.args, decoded.reply_to) == (
        "proj.add",
        "abc",
        (2, 2),
        "r1",
    )
    assert COUNT_HEADER not in serializers.json_loads(back)["headers"]


@pytest.mark.parametrize("body", [b"\x00\xffopaque", b"{not json", b'{"a": 1}'])
def test_bytes_that_are_not_an_envelope_travel_whole(body: bytes) -> None:
    frame = to_frame(body, priority=0)
    assert frame.headers == {RAW_HEADER: True}
    assert to_envelope(frame, "q") == body


def test_a_frame_from_celery_gets_a_base64_envelope() -> None:
    frame = Frame(b"[[1], {}, {}]", {"task": "t", "id": "i"}, "application/json", "utf-8")
    envelope = serializers.json_loads(to_envelope(frame, "celery", "celery"))
    assert base64.b64decode(envelope["body"]) == b"[[1], {}, {}]"
    assert envelope["properties"]["delivery_info"] == {
        "exchange": "celery",
        "routing_key": "celery",
    }


@pytest.mark.parametrize(("eta", "now", "seconds"), [(10.3, 10.0, 1), (12.0, 10.0, 2), (9, 10, 0)])
def test_delays_round_up_to_whole_seconds_never_early(eta: float, now: float, seconds: int) -> None:
    assert delay.delay_seconds(eta, now) == seconds


def test_the_routing_key_spells_the_delay_in_binary_then_the_queue() -> None:
    key = delay.routing_key(5, "hi.pri")
    words = key.split(".")
    assert words[: delay.LEVELS] == ["0"] * (delay.LEVELS - 3) + ["1", "0", "1"]
    assert words[delay.LEVELS :] == ["hi", "pri"]
    assert delay.set_levels(5) == [0, 2]


def _matches(pattern: str, key: str) -> bool:
    """RabbitMQ's topic matching, for the patterns the chain uses (no '#' mid-pattern)."""
    p, k = pattern.split("."), key.split(".")
    if p[-1] == "#":
        p, k = p[:-1], k[: len(p) - 1]
    return len(p) == len(k) and all(a in ("*", b) for a, b in zip(p, k, strict=True))


def test_each_level_either_holds_the_message_or_passes_it_on() -> None:
    key = delay.routing_key(5, "q")
    for level in range(delay.LEVELS):
        waits = _matches(delay.wait_pattern(level, "q"), key)
        skips = _matches(delay.skip_pattern(level), key)
        assert (waits, skips) == ((True, False) if level in (0, 2) else (False, True))
    assert _matches(delay.deliver_pattern("q"), key)
    assert not _matches(delay.deliver_pattern("other"), key)
    assert delay.level_arguments(2)["x-message-ttl"] == 4000
    assert delay.level_arguments(0)["x-dead-letter-exchange"] == delay.DELIVER_EXCHANGE
