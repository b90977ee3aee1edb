"""The serializer registry: kombu-compatible JSON, opt-in pickle, named errors."""

from __future__ import annotations

import decimal
import json
import pickle
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from http import HTTPStatus
from typing import Any

import pytest

from chard.exceptions import ContentDisallowed, SerializationError
from chard.protocol import serializers

JSON = frozenset({"application/json"})

UUID = uuid.UUID("6f1c3f3e-7b5a-4a8c-9a41-5b2f0f8e6d11")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC), id="datetime-utc"),
        pytest.param(
            datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=3))), id="datetime-+3"
        ),
        pytest.param(datetime(2030, 1, 2, 3, 4, 5), id="datetime-naive"),
        pytest.param(date(2030, 1, 2), id="date"),
        pytest.param(time(3, 4, 5, 6), id="time"),
        pytest.param(decimal.Decimal("3.14159265358979323846"), id="decimal"),
        pytest.param(UUID, id="uuid"),
        pytest.param(b"plain utf-8", id="bytes"),
        pytest.param(b"\xff\x00\x80", id="base64"),
    ],
)
def test_kombu_json_types_round_trip(value: Any) -> None:
    decoded = serializers.json_loads(serializers.json_dumps({"v": value, "list": [value]}))

    assert decoded == {"v": value, "list": [value]}
    assert type(decoded["v"]) is type(value)


@pytest.mark.parametrize(
    ("value", "kind", "encoded"),
    [
        (datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), "datetime", "2030-01-02T03:04:05+00:00"),
        (date(2030, 1, 2), "date", "2030-01-02"),
        (time(3, 4, 5), "time", "03:04:05"),
        (decimal.Decimal("1.10"), "decimal", "1.10"),
        (UUID, "uuid", {"hex": UUID.hex}),
        (b"abc", "bytes", "abc"),
        (b"\xff", "base64", "/w=="),
    ],
)
def test_json_uses_kombus_envelope_shapes(value: Any, kind: str, encoded: Any) -> None:
    # Celery workers decode these with kombu.utils.json (celery-protocol.md §0.3).
    assert json.loads(serializers.json_dumps(value)) == {"__type__": kind, "__value__": encoded}


def test_uuid_envelope_written_by_kombu_decodes() -> None:
    # Regression: kombu 5.3.1+ writes uuids as {"hex": ...}; chard expected a bare string
    # and failed to decode any Celery message carrying a UUID argument.
    text = json.dumps({"u": {"__type__": "uuid", "__value__": {"hex": UUID.hex}}})

    assert serializers.json_loads(text) == {"u": UUID}


def test_uuid_envelope_from_older_kombu_with_a_plain_string_decodes() -> None:
    text = json.dumps({"__type__": "uuid", "__value__": UUID.hex})

    assert serializers.json_loads(text) == UUID


def test_envelope_lookalikes_are_left_alone() -> None:
    extra_key = {"__type__": "datetime", "__value__": "2030-01-01", "other": 1}
    unknown_type = {"__type__": "frobnicator", "__value__": "x"}

    assert serializers.json_loads(serializers.json_dumps(extra_key)) == extra_key
    assert serializers.json_loads(json.dumps(unknown_type)) == unknown_type


def test_sets_encode_as_lists_and_json_reducers_are_used() -> None:
    class Point:
        def __json__(self) -> dict[str, int]:
            return {"x": 1, "y": 2}

    assert serializers.json_loads(serializers.json_dumps({"s": {3}, "p": Point()})) == {
        "s": [3],
        "p": {"x": 1, "y": 2},
    }


def test_json_is_compact_utf8() -> None:
    assert (
        serializers.json_dumps({"name": "café", "n": [1, 2]})
        == '{"name":"café","n":[1,2]}'.encode()
    )


def test_json_loads_accepts_str_and_bytes() -> None:
    assert serializers.json_loads('{"a": 1}') == serializers.json_loads(b'{"a": 1}') == {"a": 1}


@pytest.mark.parametrize(
    "text", ['{"a":1}', ' {"a": 1} ', "[1,2]", '"x"', "12", "null", "Infinity", "\n[]\n"]
)
def test_json_loads_reads_what_the_json_module_reads(text: str) -> None:
    assert serializers.json_loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", " ", "{nope", "[1,", '{"a":1}x', "12abc", "nul", "[] []"])
def test_json_loads_refuses_what_the_json_module_refuses_with_its_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)

    with pytest.raises(json.JSONDecodeError) as info:
        serializers.json_loads(text)

    assert str(info.value) == str(expected.value)


def test_dumps_returns_payload_content_type_and_encoding() -> None:
    payload, content_type, encoding = serializers.dumps([1, "x"])

    assert (payload, content_type, encoding) == (b'[1,"x"]', "application/json", "utf-8")


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("json", "application/json"),
        ("pickle", "application/x-python-serialize"),
        ("msgpack", "application/x-msgpack"),
        ("yaml", "application/x-yaml"),
    ],
)
def test_every_serializer_round_trips(name: str, content_type: str) -> None:
    value = [[1, 2], {"k": "v"}, {"callbacks": None}]

    payload, found_type, _ = serializers.dumps(value, name)

    assert found_type == content_type
    assert serializers.loads(payload, content_type, frozenset({content_type})) == value


def test_a_serializer_is_found_by_content_type_too() -> None:
    assert serializers.get_serializer("application/json").name == "json"


def test_unknown_serializer_lists_the_known_ones() -> None:
    with pytest.raises(SerializationError) as info:
        serializers.get_serializer("bson")

    message = str(info.value)
    assert "'bson'" in message
    assert "json" in message
    assert "pickle" in message


def test_unserialisable_value_names_its_type() -> None:
    with pytest.raises(SerializationError, match="object is not JSON serializable"):
        serializers.dumps(object())


def test_content_not_in_accept_is_refused() -> None:
    payload = pickle.dumps({"boom": True})

    with pytest.raises(ContentDisallowed) as info:
        serializers.loads(payload, "application/x-python-serialize", JSON)

    assert "'application/x-python-serialize'" in str(info.value)
    assert "accept_content" in str(info.value)


def test_malformed_payload_names_the_serializer() -> None:
    with pytest.raises(SerializationError, match="malformed json payload"):
        serializers.loads(b"{not json", "application/json", JSON)


def test_accept_content_maps_names_and_content_types() -> None:
    accepted = serializers.accepted_content_types(["json", "application/x-yaml", "pickle"])

    assert accepted == frozenset(
        {"application/json", "application/x-yaml", "application/x-python-serialize"}
    )


def test_accept_content_with_an_unknown_name_fails() -> None:
    with pytest.raises(SerializationError, match="'nope'"):
        serializers.accepted_content_types(["nope"])


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -(2**80),
        1.5,
        float("1e300"),
        "",
        'caf\u00e9 "\\\n\u2603',
        [],
        [None, [True]],
        {"a": {"b": [1, "x"]}},
        datetime(2026, 1, 2, tzinfo=UTC),
        b"bytes",
        HTTPStatus.OK,  # an int subclass: the encoder writes the plain number
    ],
)
def test_json_text_is_the_text_json_dumps_encodes(value: Any) -> None:
    assert serializers.json_text(value).encode() == serializers.json_dumps(value)
