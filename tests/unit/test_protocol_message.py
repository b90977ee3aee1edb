"""The task message: Celery protocol v2 on the wire, decoded through one choke point.

Envelopes marked "captured" are verbatim what Celery 5.7.0 pushed to Redis
(celery-protocol.md §a.2); a chard worker must decode them unchanged.
"""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chard import Celery
from chard._utils.log import saferepr
from chard.exceptions import ContentDisallowed, DecodeError, SerializationError
from chard.protocol.ids import new_id, new_id_pair
from chard.protocol.message import TaskMessage, peek, salvage, with_header
from chard.protocol.serializers import json_dumps
from chard.protocol.template import EnvelopeTemplate

JSON = frozenset({"application/json"})

#: Celery's protocol-v2 header keys, in ``as_task_v2`` order (celery-protocol.md §0.1).
CELERY_HEADER_KEYS = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
]

#: The properties kombu's virtual transports put on a task message (§0.2, no expires).
CELERY_PROPERTY_KEYS = {
    "correlation_id",
    "reply_to",
    "delivery_mode",
    "delivery_info",
    "priority",
    "body_encoding",
    "delivery_tag",
}

#: The captured bodies (too long for one line): base64 of kombu-style JSON.
ADD_BODY = (
    b"W1syLCAyXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjog"
    b"bnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d"
)
COUNTDOWN_BODY = (
    b"W1szXSwgeyJ5IjogNH0sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tz"
    b"IjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d"
)

#: Captured: ``add.apply_async((2, 2), task_id='1111...')`` (celery-protocol.md §a.2).
CAPTURED_ADD = b"""{
  "body": "@ADD_BODY@",
  "content-encoding": "utf-8",
  "content-type": "application/json",
  "headers": {
    "lang": "py", "task": "tasks.add", "id": "11111111-2222-3333-4444-555555555555",
    "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null,
    "retries": 0, "timelimit": [null, null],
    "root_id": "11111111-2222-3333-4444-555555555555", "parent_id": null,
    "argsrepr": "(2, 2)", "kwargsrepr": "{}", "origin": "gen11813@vm",
    "ignore_result": false, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}
  },
  "properties": {
    "correlation_id": "11111111-2222-3333-4444-555555555555",
    "reply_to": "e15221c2-9982-32e4-93cd-af290632420f",
    "delivery_mode": 2,
    "delivery_info": {"exchange": "", "routing_key": "celery"},
    "priority": 0,
    "body_encoding": "base64",
    "delivery_tag": "bc7e1934-13b7-4b18-9552-703afc87dcbf"
  }
}""".replace(b"@ADD_BODY@", ADD_BODY)

#: Captured headers/properties of ``apply_async((3,), {'y': 4}, countdown=30, expires=120,
#: priority=6)``; the elided parts of §a.2 are filled in as Celery 5.7.0 writes them.
CAPTURED_COUNTDOWN = b"""{
  "body": "@COUNTDOWN_BODY@",
  "content-encoding": "utf-8",
  "content-type": "application/json",
  "headers": {
    "lang": "py", "task": "tasks.add", "id": "66666666-7777-8888-9999-000000000000",
    "shadow": null, "eta": "2026-11-21T05:26:31.907130+00:00",
    "expires": "2026-11-21T05:28:01.907130+00:00", "group": null, "group_index": null,
    "retries": 0, "timelimit": [null, null],
    "root_id": "66666666-7777-8888-9999-000000000000", "parent_id": null,
    "argsrepr": "(3,)", "kwargsrepr": "{'y': 4}", "origin": "gen11813@vm",
    "ignore_result": false, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}
  },
  "properties": {
    "correlation_id": "66666666-7777-8888-9999-000000000000",
    "reply_to": "e15221c2-9982-32e4-93cd-af290632420f", "delivery_mode": 2,
    "expiration": "120000", "delivery_info": {"exchange": "", "routing_key": "celery"},
    "priority": 6, "body_encoding": "base64",
    "delivery_tag": "0c400240-13b7-4b18-9552-703afc87dcbf"
  }
}""".replace(b"@COUNTDOWN_BODY@", COUNTDOWN_BODY)


def envelope(
    body: Any = None,
    headers: dict[str, Any] | None = None,
    *,
    raw_body: str | None = None,
    content_type: str = "application/json",
) -> bytes:
    """Build an envelope in kombu's shape around ``body`` (JSON-encoded, base64)."""
    if raw_body is None:
        raw_body = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(
        {
            "body": raw_body,
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {"task": "tasks.add", "id": "abc"} if headers is None else headers,
            "properties": {"body_encoding": "base64", "priority": 0, "reply_to": ""},
        }
    ).encode()


EMPTY_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


# -- encoding ---------------------------------------------------------------------------------


def test_to_wire_has_exactly_celerys_header_keys_in_order() -> None:
    message = TaskMessage(task="tasks.add", id="id-1", args=(2, 2))

    wire = json.loads(message.to_wire())

    assert list(wire["headers"]) == CELERY_HEADER_KEYS
    assert set(wire) == {"body", "content-encoding", "content-type", "headers", "properties"}
    assert wire["content-type"] == "application/json"
    assert wire["content-encoding"] == "utf-8"


def test_to_wire_header_values_match_celerys_defaults() -> None:
    headers = json.loads(TaskMessage(task="tasks.add", id="id-1", args=(2, 2)).to_wire())["headers"]

    assert headers["lang"] == "py"
    assert headers["task"] == "tasks.add"
    assert headers["id"] == "id-1"
    assert headers["root_id"] == "id-1"  # root_id defaults to the task's own id
    assert headers["retries"] == 0
    assert headers["timelimit"] == [None, None]
    assert headers["argsrepr"] == "(2, 2)"
    assert headers["kwargsrepr"] == "{}"
    assert headers["origin"].startswith("gen")
    assert "@" in headers["origin"]
    assert headers["ignore_result"] is False
    assert headers["replaced_task_nesting"] == 0
    assert headers["stamped_headers"] is None
    assert headers["stamps"] == {}
    for unset in ("shadow", "eta", "expires", "group", "group_index", "parent_id"):
        assert headers[unset] is None, unset


def test_to_wire_properties_are_kombus() -> None:
    message = TaskMessage(task="tasks.add", id="id-1", reply_to="oid", priority=3)

    properties = json.loads(message.to_wire("hipri"))["properties"]

    assert set(properties) == CELERY_PROPERTY_KEYS
    assert properties["correlation_id"] == "id-1"
    assert properties["reply_to"] == "oid"
    assert properties["delivery_mode"] == 2
    assert properties["delivery_info"] == {"exchange": "", "routing_key": "hipri"}
    assert properties["priority"] == 3
    assert properties["body_encoding"] == "base64"
    assert len(properties["delivery_tag"]) == 36  # a uuid4 string, as kombu 5.x


def test_each_encoding_gets_a_fresh_delivery_tag() -> None:
    message = TaskMessage(task="tasks.add", id="id-1")

    first = json.loads(message.to_wire())["properties"]["delivery_tag"]
    second = json.loads(message.to_wire())["properties"]["delivery_tag"]

    assert first != second


def test_body_is_base64_of_args_kwargs_embed() -> None:
    message = TaskMessage(task="tasks.add", id="id-1", args=(2, 2), kwargs={"z": 1})

    wire = json.loads(message.to_wire())

    assert json.loads(base64.b64decode(wire["body"])) == [[2, 2], {"z": 1}, EMPTY_EMBED]


def test_headers_carry_eta_expires_as_iso_with_offset() -> None:
    eta = datetime(2026, 11, 21, 5, 26, 31, 907130, tzinfo=UTC)
    message = TaskMessage(task="t", id="i", eta=eta, expires=eta + timedelta(seconds=90))

    headers = json.loads(message.to_wire())["headers"]

    assert headers["eta"] == "2026-11-21T05:26:31.907130+00:00"
    assert headers["expires"] == "2026-11-21T05:28:01.907130+00:00"


def test_extra_headers_are_merged_into_the_headers() -> None:
    message = TaskMessage(task="t", id="i", extra_headers={"x-tenant": "acme"})

    headers = json.loads(message.to_wire())["headers"]

    assert headers["x-tenant"] == "acme"
    assert list(headers)[: len(CELERY_HEADER_KEYS)] == CELERY_HEADER_KEYS


def test_new_id_is_a_uuid4_string() -> None:
    value = new_id()

    assert len(value) == 36
    assert value[14] == "4"
    assert new_id() != value


def test_new_id_is_what_str_of_a_uuid4_looks_like() -> None:
    variants = set()
    for _ in range(2000):
        first, second = new_id_pair()
        for value in (new_id(), first, second):
            parsed = uuid.UUID(value)
            assert str(parsed) == value
            assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
            variants.add(value[19])
        assert first != second
    # The variant's two free bits are random too, as uuid4()'s
    assert variants == set("89ab")


#: A message with every field set (not a default), for round trips and exact encodings.
_SIG = {"task": "tasks.tsum", "args": [], "kwargs": {}, "options": {}, "immutable": False}
FULL_MESSAGE = TaskMessage(
    task="tasks.add",
    id="id-1",
    args=(1, "two", [3]),
    kwargs={"k": {"nested": True}},
    eta=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
    expires=datetime(2030, 1, 2, 4, 4, 5, tzinfo=UTC),
    retries=2,
    timelimit=(30.0, 20.0),
    root_id="root",
    parent_id="parent",
    group="grp",
    group_index=4,
    shadow="alias",
    origin="gen1@host",
    ignore_result=True,
    callbacks=[_SIG],
    errbacks=[_SIG],
    chain=[_SIG, _SIG],
    chord=_SIG,
    reply_to="oid",
    priority=9,
    extra_headers={"x-custom": [1, 2]},
)

#: One message of every shape the template must write exactly as the dict would be encoded.
WIRE_VARIANTS: list[TaskMessage] = [
    TaskMessage(task="tasks.noop", id="1"),
    TaskMessage(task="tasks.add", id="2", args=(2, 2), kwargs={"z": [1, {"y": None}]}),
    TaskMessage(
        task='t\u00e9"quoted\\',
        id="i\u2603",
        args=("\u00e9\u4e2d\n", 1.5, -(2**70), True, None),
        kwargs={"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "\u00fc": b"raw"},
    ),
    FULL_MESSAGE,
    FULL_MESSAGE.evolve(extra_headers={}, timelimit=(10, 5.5)),
    TaskMessage(task="t", id="4", extra_headers={"x-tenant": "acme", "retries": 9}),
    TaskMessage(task="t", id="5", extra_headers={"stamped_headers": ["a"], "stamps": {"a": 1}}),
    TaskMessage(task="t", id="6", args=(object.__name__,), serializer="pickle"),
    TaskMessage(task="t", id="7", args=(1,), serializer="application/json"),
]


@pytest.mark.parametrize("message", WIRE_VARIANTS, ids=lambda m: m.id)
@pytest.mark.parametrize("queue", ["celery", 'h\u00e9 "q"'])
def test_to_wire_writes_exactly_the_encoded_envelope(message: TaskMessage, queue: str) -> None:
    tag = new_id()

    assert message.to_wire(queue, tag) == json_dumps(message.envelope(queue, tag))


def test_to_wire_of_a_plain_delay_is_byte_for_byte_kombus_layout() -> None:
    message = TaskMessage(task="benchapp.noop", id="ab-1", origin="gen7@vm")

    wire = message.to_wire("celery", "tag-1")

    body = base64.b64encode(
        b'[[],{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'
    ).decode()
    assert (
        wire
        == (
            f'{{"body":"{body}","content-encoding":"utf-8","content-type":"application/json",'
            '"headers":{"lang":"py","task":"benchapp.noop","id":"ab-1","shadow":null,"eta":null,'
            '"expires":null,"group":null,"group_index":null,"retries":0,'
            '"timelimit":[null,null],"root_id":"ab-1","parent_id":null,"argsrepr":"()",'
            '"kwargsrepr":"{}","origin":"gen7@vm","ignore_result":false,'
            '"replaced_task_nesting":0,"stamped_headers":null,"stamps":{}},'
            '"properties":{"correlation_id":"ab-1","reply_to":"","delivery_mode":2,'
            '"delivery_info":{"exchange":"","routing_key":"celery"},"priority":0,'
            '"body_encoding":"base64","delivery_tag":"tag-1"}}'
        ).encode()
    )


# -- decoding Celery's captured envelopes -----------------------------------------------------


def test_captured_celery_envelope_decodes() -> None:
    message = TaskMessage.from_wire(CAPTURED_ADD, JSON)

    assert message.task == "tasks.add"
    assert message.id == "11111111-2222-3333-4444-555555555555"
    assert message.args == (2, 2)
    assert message.kwargs == {}
    assert message.root_id == "11111111-2222-3333-4444-555555555555"
    assert message.parent_id is None
    assert message.eta is None
    assert message.expires is None
    assert message.retries == 0
    assert message.timelimit == (None, None)
    assert message.origin == "gen11813@vm"
    assert message.reply_to == "e15221c2-9982-32e4-93cd-af290632420f"
    assert message.priority == 0
    assert message.ignore_result is False
    assert message.callbacks is None
    assert message.errbacks is None
    assert message.chain is None
    assert message.chord is None
    # Known keys are consumed; nothing is left over as an "extra" header.
    assert message.extra_headers == {}


def test_captured_celery_countdown_envelope_decodes_to_aware_times_and_priority() -> None:
    message = TaskMessage.from_wire(CAPTURED_COUNTDOWN, JSON)

    assert message.args == (3,)
    assert message.kwargs == {"y": 4}
    assert message.eta == datetime(2026, 11, 21, 5, 26, 31, 907130, tzinfo=UTC)
    assert message.expires == datetime(2026, 11, 21, 5, 28, 1, 907130, tzinfo=UTC)
    assert message.eta is not None
    assert message.eta.tzinfo is not None
    assert message.expires is not None
    assert message.expires.tzinfo is not None
    assert message.priority == 6


def test_round_trip_keeps_every_field() -> None:
    original = FULL_MESSAGE
    decoded = TaskMessage.from_wire(original.to_wire(), JSON)

    # The serializer comes back as the body's content type, which names the same serializer.
    assert decoded == original.evolve(serializer="application/json")


def test_round_trip_with_a_content_type_serializer_reencodes() -> None:
    decoded = TaskMessage.from_wire(TaskMessage(task="t", id="i", args=(1,)).to_wire(), JSON)

    again = TaskMessage.from_wire(decoded.to_wire(), JSON)

    assert again.args == (1,)


def test_older_clients_without_optional_headers_decode() -> None:
    headers = {"lang": "py", "task": "tasks.add", "id": "abc", "retries": 1}

    message = TaskMessage.from_wire(envelope([[1], {}, EMPTY_EMBED], headers), JSON)

    assert message.retries == 1
    assert message.root_id is None
    assert message.timelimit == (None, None)
    assert message.ignore_result is False


def test_unknown_headers_are_kept_as_extra_headers() -> None:
    headers = {"task": "t", "id": "i", "redelivered": True, "x-trace": "abc"}

    message = TaskMessage.from_wire(envelope([[], {}, EMPTY_EMBED], headers), JSON)

    assert message.extra_headers == {"redelivered": True, "x-trace": "abc"}


def test_null_embed_is_accepted() -> None:
    message = TaskMessage.from_wire(envelope([[], {}, None]), JSON)

    assert message.callbacks is None
    assert message.chain is None


def test_protocol_1_dict_body_is_accepted() -> None:
    eta = "2030-01-01T00:00:00+00:00"
    body = {
        "task": "tasks.add",
        "id": "old-1",
        "args": [1, 2],
        "kwargs": {"z": 3},
        "eta": eta,
        "retries": 2,
        "timelimit": [10, 5],
        "callbacks": None,
        "errbacks": None,
    }

    message = TaskMessage.from_wire(envelope(body, headers={}), JSON)

    assert message.task == "tasks.add"
    assert message.id == "old-1"
    assert message.args == (1, 2)
    assert message.kwargs == {"z": 3}
    assert message.eta == datetime(2030, 1, 1, tzinfo=UTC)
    assert message.retries == 2
    assert message.timelimit == (10, 5)


def test_naive_eta_from_an_old_client_is_taken_as_utc() -> None:
    # Regression: a naive ISO time decoded to a naive datetime, which the worker cannot
    # compare with its aware "now" (chard's API promises aware UTC instants).
    headers = {"task": "t", "id": "i", "eta": "2030-01-01T00:00:00", "expires": None}

    message = TaskMessage.from_wire(envelope([[], {}, EMPTY_EMBED], headers), JSON)

    assert message.eta == datetime(2030, 1, 1, tzinfo=UTC)


def test_body_without_base64_encoding_is_read_as_is() -> None:
    data = json.dumps(
        {
            "body": json.dumps([[5], {}, EMPTY_EMBED]),
            "content-type": "application/json",
            "headers": {"task": "t", "id": "i"},
            "properties": {},
        }
    ).encode()

    assert TaskMessage.from_wire(data, JSON).args == (5,)


# -- malformed input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(b"not json at all", "cannot decode message", id="not-json"),
        pytest.param(b"\xff\xfe", "cannot decode message", id="not-utf8"),
        pytest.param(b"[1, 2, 3]", "not a JSON object", id="not-an-object"),
        pytest.param(envelope(raw_body="***not base64***"), "not valid base64", id="bad-base64"),
        pytest.param(envelope([[1], {}]), "body is not [args, kwargs, embed]", id="two-items"),
        pytest.param(envelope("just a string"), "body is not [args, kwargs, embed]", id="str"),
        pytest.param(
            envelope(raw_body=base64.b64encode(b"{nope").decode()),
            "malformed json payload",
            id="body-not-json",
        ),
        pytest.param(
            envelope([[], {}, EMPTY_EMBED], headers={"id": "i"}), "header 'task'", id="no-task"
        ),
        pytest.param(
            envelope([[], {}, EMPTY_EMBED], headers={"task": "t"}), "header 'id'", id="no-id"
        ),
        pytest.param(envelope(["a", {}, EMPTY_EMBED]), "args must be a list", id="args-not-a-list"),
        pytest.param(
            envelope([[], [], EMPTY_EMBED]), "kwargs must be an object", id="kwargs-not-a-dict"
        ),
        pytest.param(
            envelope([[], {}, EMPTY_EMBED], headers={"task": "t", "id": "i", "eta": "tomorrow"}),
            "header 'eta' must be an ISO 8601 time or null, got 'tomorrow'",
            id="bad-eta",
        ),
        pytest.param(
            envelope([[], {}, EMPTY_EMBED], headers={"task": "t", "id": "i", "expires": 5}),
            "header 'expires' must be an ISO 8601 time or null, got 5",
            id="bad-expires",
        ),
    ],
)
def test_malformed_messages_raise_decode_error_naming_the_problem(
    data: bytes, problem: str
) -> None:
    with pytest.raises(DecodeError) as info:
        TaskMessage.from_wire(data, JSON)

    assert problem in str(info.value)
    # The raw bytes travel with the error, for the dead-letter record.
    assert info.value.data == data


def with_headers(**changes: Any) -> bytes:
    """A valid protocol-v2 envelope with ``changes`` applied to Celery's captured headers."""
    headers = json.loads(CAPTURED_ADD)["headers"]
    return envelope([[2, 2], {}, EMPTY_EMBED], {**headers, **changes})


def with_embed(**changes: Any) -> bytes:
    return envelope([[], {}, {**EMPTY_EMBED, **changes}])


SIG = {"task": "tasks.add", "args": [1], "kwargs": {}, "options": {}, "subtask_type": None}


# Regression (fault suite): timelimit=["a", "b"] decoded, then raised TypeError in a prefork
# child setting its deadline, outside the guarded run: the child died and the message went
# back uncounted, for ever. Every field the worker reads is now checked at decode time.
@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param(
            with_headers(timelimit=["a", "b"]),
            "header 'timelimit' must be [hard, soft] seconds (non-negative numbers or null), "
            "got ['a', 'b']",
            id="timelimit-strings",
        ),
        pytest.param(
            with_headers(timelimit="fast"),
            "header 'timelimit' must be [hard, soft] seconds (non-negative numbers or null), "
            "got 'fast'",
            id="timelimit-a-string",
        ),
        pytest.param(with_headers(timelimit=[1]), "got [1]", id="timelimit-one-item"),
        pytest.param(with_headers(timelimit=[1, 2, 3]), "got [1, 2, 3]", id="timelimit-three"),
        pytest.param(with_headers(timelimit=[-1, None]), "got [-1, None]", id="timelimit-negative"),
        pytest.param(with_headers(timelimit=[True, None]), "got [True, None]", id="timelimit-bool"),
        pytest.param(
            envelope([[], {}, EMPTY_EMBED], raw_body=None, headers=None).replace(
                b'"id": "abc"', b'"id": "abc", "timelimit": [NaN, null]'
            ),
            "got [nan, None]",
            id="timelimit-nan",
        ),
        pytest.param(
            with_headers(eta="yesterday"),
            "header 'eta' must be an ISO 8601 time or null, got 'yesterday'",
            id="eta-words",
        ),
        pytest.param(
            with_headers(eta=20300101),
            "header 'eta' must be an ISO 8601 time or null, got 20300101",
            id="eta-a-number",
        ),
        pytest.param(
            with_headers(expires=[]),
            "header 'expires' must be an ISO 8601 time or null, got []",
            id="expires-a-list",
        ),
        pytest.param(
            with_headers(retries="x"),
            "header 'retries' must be a non-negative integer, got 'x'",
            id="retries-a-string",
        ),
        pytest.param(with_headers(retries=-1), "header 'retries' must be", id="retries-negative"),
        pytest.param(with_headers(retries=1.5), "header 'retries' must be", id="retries-a-float"),
        pytest.param(
            with_headers(group_index="0"),
            "header 'group_index' must be a non-negative integer, got '0'",
            id="group-index-a-string",
        ),
        pytest.param(
            with_headers(root_id=7), "header 'root_id' must be a string or null, got 7", id="root"
        ),
        pytest.param(with_headers(parent_id=[]), "header 'parent_id' must be", id="parent"),
        pytest.param(with_headers(group={}), "header 'group' must be", id="group"),
        pytest.param(with_headers(shadow=1), "header 'shadow' must be", id="shadow"),
        pytest.param(with_headers(origin=1), "header 'origin' must be", id="origin"),
        pytest.param(
            with_headers(ignore_result="no"),
            "header 'ignore_result' must be true, false or null, got 'no'",
            id="ignore-result-a-string",
        ),
        pytest.param(
            with_headers(chard_lost="twice"),
            "header 'chard_lost' must be a non-negative integer, got 'twice'",
            id="deaths-a-string",
        ),
        pytest.param(
            with_headers(task=["tasks.add"]),
            "header 'task' must be a task name (a non-empty string), got ['tasks.add']",
            id="task-a-list",
        ),
        pytest.param(
            with_headers(id=5),
            "header 'id' of task 'tasks.add' must be a task id (a non-empty string), got 5",
            id="id-a-number",
        ),
        pytest.param(
            with_headers(id="\ud800"),
            "header 'id' must be valid unicode text, got '\\ud800'",
            id="id-a-lone-surrogate",
        ),
        pytest.param(
            envelope([{"a": 1}, {}, EMPTY_EMBED]),
            "body args must be a list, got {'a': 1}",
            id="args-an-object",
        ),
        pytest.param(
            envelope([[], {}, ["callbacks"]]),
            "body embed must be an object, got ['callbacks']",
            id="embed-a-list",
        ),
        pytest.param(
            with_embed(callbacks=SIG),
            "embed 'callbacks' must be a list of signatures or null, got {",
            id="callbacks-not-a-list",
        ),
        pytest.param(
            with_embed(errbacks=["tasks.add"]),
            "embed 'errbacks'[0] must be a signature (an object with a string 'task'), "
            "got 'tasks.add'",
            id="errbacks-of-strings",
        ),
        pytest.param(
            with_embed(chain=[{**SIG, "options": []}]),
            "embed 'chain'[0] must be a signature whose 'options' is an object",
            id="chain-step-options-a-list",
        ),
        pytest.param(
            with_embed(chord=[SIG]),
            "embed 'chord' must be a signature (an object with a string 'task')",
            id="chord-a-list",
        ),
        pytest.param(
            with_embed(chord={**SIG, "chord_size": "3"}),
            "embed 'chord' must be a signature whose 'chord_size' is an integer",
            id="chord-size-a-string",
        ),
        pytest.param(
            json.dumps({**json.loads(CAPTURED_ADD), "headers": ["task", "id"]}).encode(),
            "message headers must be an object, got ['task', 'id']",
            id="headers-a-list",
        ),
        pytest.param(
            json.dumps({**json.loads(CAPTURED_ADD), "properties": "x"}).encode(),
            "message properties must be an object, got 'x'",
            id="properties-a-string",
        ),
        pytest.param(
            json.dumps({**json.loads(CAPTURED_ADD), "body": 12}).encode(),
            "envelope 'body' must be a string, got 12",
            id="body-a-number",
        ),
        pytest.param(
            json.dumps({**json.loads(CAPTURED_ADD), "content-type": None}).encode(),
            "envelope 'content-type' must be a string, got None",
            id="content-type-null",
        ),
    ],
)
def test_a_header_or_field_of_the_wrong_type_is_a_decode_error_naming_it(
    data: bytes, error: str
) -> None:
    with pytest.raises(DecodeError) as info:
        TaskMessage.from_wire(data, JSON)

    assert error in str(info.value)
    assert info.value.data == data


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", "high"),
        ("priority", -1),
        ("priority", 256),
        ("priority", 1.5),
        ("reply_to", 5),
    ],
)
def test_a_property_of_the_wrong_type_is_a_decode_error_naming_it(field: str, value: Any) -> None:
    wire = json.loads(CAPTURED_ADD)
    wire["properties"][field] = value

    with pytest.raises(DecodeError, match=rf"^property '{field}' must be .*, got "):
        TaskMessage.from_wire(json.dumps(wire).encode(), JSON)


def test_a_long_bad_value_is_cut_in_the_error() -> None:
    with pytest.raises(DecodeError) as info:
        TaskMessage.from_wire(with_headers(retries="x" * 10_000), JSON)

    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({"timelimit": [None, None]}, (None, None), id="nulls"),
        pytest.param({"timelimit": [10, 5]}, (10, 5), id="ints"),
        pytest.param({"timelimit": [2.5, 1.25]}, (2.5, 1.25), id="floats"),
        pytest.param({"timelimit": [30, None]}, (30, None), id="hard-only"),
        pytest.param({"timelimit": [None, 0.5]}, (None, 0.5), id="soft-only"),
        pytest.param({"timelimit": None}, (None, None), id="null"),
    ],
)
def test_time_limits_celery_sends_decode(changes: dict[str, Any], expected: Any) -> None:
    assert TaskMessage.from_wire(with_headers(**changes), JSON).timelimit == expected


def test_every_field_celery_sets_decodes() -> None:
    # Given the headers of a chord member's retry, as Celery writes them
    data = with_headers(
        eta="2026-11-21T05:26:31.907130+00:00",
        expires="2026-11-21T05:28:01.907130+00:00",
        group="g-1",
        group_index=2,
        retries=3,
        parent_id="p-1",
        shadow="alias",
        ignore_result=True,
        stamped_headers=["on"],
        stamps={"on": "x"},
        redelivered=True,
        chard_lost=1,
    )

    message = TaskMessage.from_wire(data, JSON)

    assert (message.group, message.group_index, message.retries) == ("g-1", 2, 3)
    assert (message.parent_id, message.shadow, message.ignore_result) == ("p-1", "alias", True)
    assert message.eta == datetime(2026, 11, 21, 5, 26, 31, 907130, tzinfo=UTC)
    assert message.extra_headers == {
        "stamped_headers": ["on"],
        "stamps": {"on": "x"},
        "redelivered": True,
        "chard_lost": 1,
    }


@pytest.mark.parametrize(
    ("data", "named"),
    [
        pytest.param(
            envelope(["a", {}, EMPTY_EMBED], {"task": "t", "id": "i", "eta": "soon"}),
            "body args",
            id="args-before-eta",
        ),
        pytest.param(
            with_headers(timelimit="fast", root_id=7, ignore_result="no"),
            "header 'timelimit'",
            id="timelimit-before-lineage",
        ),
        pytest.param(
            with_headers(group_index="0", shadow=1), "header 'group_index'", id="index-first"
        ),
    ],
)
def test_a_message_with_several_bad_fields_names_the_first_in_the_order_checked(
    data: bytes, named: str
) -> None:
    # The checks run in one order (the message's fields, headers before the embed and
    # the properties), so the dead-letter reason of a bad message does not vary.
    with pytest.raises(DecodeError, match=f"^{named} must be"):
        TaskMessage.from_wire(data, JSON)


@pytest.mark.parametrize(
    ("stamps", "kept"),
    [
        pytest.param({"stamped_headers": None, "stamps": {}}, {}, id="celery-s-empty-pair"),
        pytest.param({}, {}, id="absent"),
        pytest.param(
            {"stamped_headers": None, "stamps": {"on": 1}},
            {"stamped_headers": None, "stamps": {"on": 1}},
            id="stamps-only",
        ),
        pytest.param(
            {"stamped_headers": ["on"], "stamps": {}},
            {"stamped_headers": ["on"], "stamps": {}},
            id="stamped-headers-only",
        ),
    ],
)
def test_stamping_headers_are_kept_only_when_they_say_something(
    stamps: dict[str, Any], kept: dict[str, Any]
) -> None:
    headers = {k: v for k, v in json.loads(CAPTURED_ADD)["headers"].items() if "stamp" not in k}

    message = TaskMessage.from_wire(envelope([[], {}, EMPTY_EMBED], {**headers, **stamps}), JSON)

    assert message.extra_headers == kept


def test_each_decoded_message_has_extra_headers_of_its_own() -> None:
    first = TaskMessage.from_wire(CAPTURED_ADD, JSON)
    first.extra_headers["x"] = 1  # a task may add to its request's headers

    assert TaskMessage.from_wire(CAPTURED_ADD, JSON).extra_headers == {}


def test_kombu_datetime_envelopes_in_times_decode() -> None:
    eta = {"__type__": "datetime", "__value__": "2030-01-01T00:00:00+00:00"}

    message = TaskMessage.from_wire(with_headers(eta=eta), JSON)

    assert message.eta == datetime(2030, 1, 1, tzinfo=UTC)


def test_embedded_signatures_celery_sends_decode() -> None:
    chord_body = {**SIG, "options": {"task_id": "b", "group_id": "g"}, "chord_size": 3}
    group = {"task": "celery.group", "args": [], "kwargs": {"tasks": [SIG]}, "options": {}}
    data = with_embed(callbacks=[SIG], errbacks=[SIG], chain=[group, SIG], chord=chord_body)

    message = TaskMessage.from_wire(data, JSON)

    assert message.callbacks == [SIG]
    assert message.chain == [group, SIG]
    assert message.chord == chord_body


def test_the_death_count_header_is_the_workers() -> None:
    from chard.protocol.message import _COUNT_HEADERS, LOST_HEADER

    assert LOST_HEADER in _COUNT_HEADERS


def test_missing_id_error_names_the_task() -> None:
    data = envelope([[], {}, EMPTY_EMBED], headers={"task": "tasks.add"})

    with pytest.raises(DecodeError, match=r"'tasks\.add'"):
        TaskMessage.from_wire(data, JSON)


# -- content types --------------------------------------------------------------------------


def pickled_envelope() -> bytes:
    payload = pickle.dumps([[1, 2], {}, EMPTY_EMBED])
    return envelope(
        raw_body=base64.b64encode(payload).decode(),
        content_type="application/x-python-serialize",
    )


def test_pickle_content_is_refused_by_default() -> None:
    with pytest.raises(ContentDisallowed, match="application/x-python-serialize"):
        TaskMessage.from_wire(pickled_envelope(), JSON)


def test_pickle_content_is_decoded_when_accepted() -> None:
    accept = frozenset({"application/json", "application/x-python-serialize"})

    message = TaskMessage.from_wire(pickled_envelope(), accept)

    assert message.args == (1, 2)
    assert message.serializer == "application/x-python-serialize"


def test_keyword_arguments_with_keys_that_are_not_strings_are_a_decode_error() -> None:
    # (JSON keys are always strings; pickle and msgpack bodies can carry others)
    accept = frozenset({"application/json", "application/x-python-serialize"})
    data = envelope(
        raw_body=base64.b64encode(pickle.dumps([[], {1: "x"}, EMPTY_EMBED])).decode(),
        content_type="application/x-python-serialize",
    )

    with pytest.raises(DecodeError, match=r"^body kwargs must be an object with string keys"):
        TaskMessage.from_wire(data, accept)


def test_a_message_encoded_with_pickle_round_trips_when_accepted() -> None:
    message = TaskMessage(task="t", id="i", args=({1, 2},), serializer="pickle")

    wire = json.loads(message.to_wire())

    assert wire["content-type"] == "application/x-python-serialize"
    assert wire["content-encoding"] == "binary"
    decoded = TaskMessage.from_wire(
        message.to_wire(), frozenset({"application/x-python-serialize"})
    )
    assert decoded.args == ({1, 2},)


# -- arguments JSON cannot carry --------------------------------------------------------------


def test_kombu_type_envelopes_in_arguments_round_trip() -> None:
    import decimal
    import uuid
    from datetime import date, time

    args = (
        datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        date(2030, 1, 2),
        time(3, 4, 5),
        decimal.Decimal("1.10"),
        uuid.UUID("6f1c3f3e-7b5a-4a8c-9a41-5b2f0f8e6d11"),
        b"utf-8 bytes",
        b"\xff\x00binary",
    )

    decoded = TaskMessage.from_wire(TaskMessage(task="t", id="i", args=args).to_wire(), JSON)

    assert decoded.args == args
    assert [type(a) for a in decoded.args] == [type(a) for a in args]


def test_unserialisable_positional_argument_is_named() -> None:
    message = TaskMessage(task="tasks.add", id="i", args=(1, object()))

    with pytest.raises(SerializationError, match=r"argument args\[1\] of type object"):
        message.to_wire()


def test_unserialisable_keyword_argument_is_named() -> None:
    message = TaskMessage(task="tasks.add", id="i", kwargs={"n": 1, "conn": object()})

    with pytest.raises(SerializationError) as info:
        message.to_wire()

    assert "kwargs['conn']" in str(info.value)
    assert "'tasks.add'" in str(info.value)


def test_delay_with_an_unserialisable_argument_fails_at_call_time() -> None:
    app = Celery("t", broker="memory://", backend="memory://")

    @app.task
    def store(obj: object, conn: object = None) -> None:
        """Never runs."""

    class Connection:
        pass

    with pytest.raises(SerializationError, match=r"argument args\[0\] of type Connection"):
        store.delay(Connection())
    with pytest.raises(SerializationError, match=r"kwargs\['conn'\] of type object"):
        store.delay(1, conn=object())
    # Nothing half-sent reached the broker.
    assert app.broker.queue_size("celery") == 0


def test_unserialisable_embed_without_a_bad_argument_keeps_the_cause() -> None:
    message = TaskMessage(task="tasks.add", id="i", args=(1,), chord={"bad": object()})

    with pytest.raises(SerializationError, match=r"'tasks\.add'"):
        message.to_wire()


# -- envelope helpers -------------------------------------------------------------------------


def test_peek_names_the_task_of_any_envelope() -> None:
    assert peek(CAPTURED_ADD) == ("tasks.add", "11111111-2222-3333-4444-555555555555")


@pytest.mark.parametrize("data", [b"garbage", b"[]", b'{"headers": 5}', b"\xff"])
def test_peek_never_raises(data: bytes) -> None:
    assert peek(data) == (None, None)


def test_with_header_sets_a_header_and_keeps_the_body() -> None:
    updated = with_header(CAPTURED_ADD, "chard_deaths", 2)

    before, after = json.loads(CAPTURED_ADD), json.loads(updated)
    assert after["headers"]["chard_deaths"] == 2
    assert after["body"] == before["body"]
    assert after["properties"]["delivery_tag"] != before["properties"]["delivery_tag"]
    message = TaskMessage.from_wire(updated, JSON)
    assert message.extra_headers == {"chard_deaths": 2}
    assert message.args == (2, 2)


def test_with_header_replaces_an_existing_value() -> None:
    once = with_header(CAPTURED_ADD, "chard_deaths", 1)

    twice = with_header(once, "chard_deaths", 2)

    assert json.loads(twice)["headers"]["chard_deaths"] == 2


def test_salvage_reads_the_id_lineage_and_workflow_of_a_message_from_wire_refuses() -> None:
    # Given a message with a chain whose 'eta' header is not a time
    step = {"task": "t.next", "args": [], "kwargs": {}, "options": {"task_id": "n1"}}
    good = TaskMessage("t.add", "id-1", (1,), group="g1", group_index=2, chain=[step])
    data = with_header(good.to_wire(), "eta", "yesterday")
    with pytest.raises(DecodeError, match="eta"):
        TaskMessage.from_wire(data, frozenset({"application/json"}))

    # Then salvage still reads who it was and what follows it, but not its arguments
    found = salvage(data, frozenset({"application/json"}))
    assert found is not None
    assert (found.task, found.id, found.group, found.group_index) == ("t.add", "id-1", "g1", 2)
    assert found.chain == [step]
    assert found.args == ()


def test_salvage_gives_up_without_a_readable_id_and_never_decodes_a_refused_body() -> None:
    assert salvage(b"not json", frozenset({"application/json"})) is None
    no_id = with_header(TaskMessage("t.add", "x").to_wire(), "id", 42)
    assert salvage(no_id, frozenset({"application/json"})) is None
    # A body in a content type that is not accepted is not decoded: no embed
    envelope = json.loads(TaskMessage("t.add", "id-2").to_wire())
    envelope["content-type"] = "application/x-python-serialize"
    found = salvage(json.dumps(envelope).encode(), frozenset({"application/json"}))
    assert found is not None
    assert found.id == "id-2"
    assert found.chain is None


# -- the cached envelope of plain sends ---------------------------------------------------------


@pytest.mark.parametrize(
    "message", [m for m in WIRE_VARIANTS if EnvelopeTemplate.fits(m)], ids=lambda m: m.id
)
@pytest.mark.parametrize("queue", ["celery", 'h\u00e9 "q"'])
def test_a_template_renders_exactly_what_to_wire_writes(message: TaskMessage, queue: str) -> None:
    tag = new_id()
    template = EnvelopeTemplate(message.evolve(id="proto", args=(), kwargs={}), queue)

    wire = template.render(message.id, message.args, message.kwargs, tag)

    assert wire == message.to_wire(queue, tag)


def test_a_template_from_a_message_that_is_its_own_root_roots_each_send_at_its_id() -> None:
    template = EnvelopeTemplate(TaskMessage(task="t", id="proto", root_id="proto"), "celery")

    headers = json.loads(template.render("id-2", (1,), {}))["headers"]

    assert (headers["id"], headers["root_id"]) == ("id-2", "id-2")


def test_templates_refuse_extra_headers_and_other_serializers() -> None:
    assert not EnvelopeTemplate.fits(TaskMessage(task="t", id="1", extra_headers={"x": 1}))
    assert not EnvelopeTemplate.fits(TaskMessage(task="t", id="1", serializer="pickle"))


def test_a_template_raises_on_an_argument_json_cannot_encode() -> None:
    template = EnvelopeTemplate(TaskMessage(task="t", id="proto"), "celery")

    with pytest.raises(TypeError):
        template.render("id-1", (object(),), {})


_PLAIN_VALUES = [
    0,
    -5,
    10**38,
    10**39,
    2**200,
    1.5,
    float("nan"),
    True,
    None,
    "",
    "\u00e9\n'\"",
    "x" * 39,
]


@pytest.mark.parametrize("count", [1, 2, 6, 7])
def test_short_plain_argument_reprs_are_saferepr_s(count: int) -> None:
    for start in range(len(_PLAIN_VALUES)):
        args = tuple(_PLAIN_VALUES[(start + i) % len(_PLAIN_VALUES)] for i in range(count))
        kwargs = {f"k{i}": value for i, value in enumerate(reversed(args))}
        message = TaskMessage(task="t", id="1", args=args, kwargs=kwargs)

        assert message.argsrepr == saferepr(args, 1024)
        assert message.kwargsrepr == saferepr(kwargs, 1024)
