"""Revocations, client side: the record on the wire, and what app.control / results send."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from chard import Celery, states
from chard.exceptions import DecodeError, TaskRevokedError
from chard.protocol.control import (
    REVOKE_CHANNEL,
    REVOKE_EXPIRES,
    Revocation,
    signal_name,
)
from chard.result import EagerGroupResult, EagerResult, GroupResult

# -- the record -----------------------------------------------------------------------------------


def test_a_revocation_round_trips_through_its_payload() -> None:
    revocation = Revocation.create(["a", "b"], now=1000.0, terminate=True, signal="KILL", ttl=60.0)

    decoded = Revocation.from_payload(revocation.to_payload())

    assert decoded == revocation == Revocation(("a", "b"), 1060.0, True, "SIGKILL")
    assert decoded.signum == signal.SIGKILL


def test_the_payload_is_the_documented_json() -> None:
    payload = Revocation.create(["id-1"], now=100.0).to_payload()

    assert json.loads(payload) == {
        "ids": ["id-1"],
        "terminate": False,
        "signal": "SIGTERM",
        "expires": 100.0 + REVOKE_EXPIRES,
    }
    assert REVOKE_EXPIRES == 10800.0  # Celery's REVOKE_EXPIRES: three hours


def test_a_revocation_expires_at_its_time() -> None:
    revocation = Revocation.create(["x"], now=0.0, ttl=10.0)

    assert not revocation.is_expired(9.999)
    assert revocation.is_expired(10.0)
    assert revocation.is_expired(11.0)


@pytest.mark.parametrize(
    ("given", "name"),
    [
        (None, "SIGTERM"),
        ("SIGTERM", "SIGTERM"),
        ("TERM", "SIGTERM"),
        (" sigkill ", "SIGKILL"),
        ("usr1", "SIGUSR1"),
        (9, "SIGKILL"),
        (signal.SIGINT, "SIGINT"),
    ],
)
def test_signals_are_named_as_celery_accepts_them(given: Any, name: str) -> None:
    assert signal_name(given) == name


@pytest.mark.parametrize("given", ["SIGNOPE", "", 999, 1.5])
def test_an_unknown_signal_is_refused_with_examples(given: Any) -> None:
    with pytest.raises(ValueError, match=r"unknown signal .*'SIGTERM'"):
        signal_name(given)


def test_ids_must_be_strings() -> None:
    with pytest.raises(TypeError, match="task ids must be strings, got 42"):
        Revocation.create(["ok", 42], now=0.0)  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{nope", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"expires": 1}', "'ids' is not a list of strings"),
        (b'{"ids": "abc", "expires": 1}', "'ids' is not a list of strings"),
        (b'{"ids": [1], "expires": 1}', "'ids' is not a list of strings"),
        (b'{"ids": ["a"]}', "'expires' is not a timestamp"),
        (b'{"ids": ["a"], "expires": "soon"}', "'expires' is not a timestamp"),
        (b'{"ids": ["a"], "expires": true}', "'expires' is not a timestamp"),
        (b'{"ids": ["a"], "expires": 1, "signal": "SIGNOPE"}', "'signal' is unusable"),
    ],
)
def test_a_malformed_payload_is_a_decode_error_that_says_why(
    payload: bytes, complaint: str
) -> None:
    with pytest.raises(DecodeError, match=complaint) as info:
        Revocation.from_payload(payload)
    assert info.value.data == payload


def test_missing_optional_fields_take_their_defaults() -> None:
    revocation = Revocation.from_payload(b'{"ids": ["a"], "expires": 5}')

    assert revocation == Revocation(("a",), 5.0, False, "SIGTERM")


# -- what the client sends ------------------------------------------------------------------------


def sent(app: Celery) -> list[Revocation]:
    """The revocations on the app's broker, oldest first."""
    entries = app.broker.broadcast_read(REVOKE_CHANNEL, "0", timeout=0)
    return [Revocation.from_payload(payload) for _, payload in entries]


def test_control_revoke_broadcasts_one_durable_revocation(app: Celery) -> None:
    before = time.time()

    app.control.revoke(["t1", "t2"], terminate=True, signal="SIGKILL")

    (revocation,) = sent(app)
    assert revocation.ids == ("t1", "t2")
    assert (revocation.terminate, revocation.signal) == (True, "SIGKILL")
    assert before + REVOKE_EXPIRES <= revocation.expires <= time.time() + REVOKE_EXPIRES


def test_control_revoke_takes_one_id_and_ignores_celerys_destination(app: Celery) -> None:
    app.control.revoke("only", destination=["worker1@host"])

    assert [r.ids for r in sent(app)] == [("only",)]
    assert sent(app)[0].signal == "SIGTERM"


def test_revoking_nothing_sends_nothing(app: Celery) -> None:
    app.control.revoke([])

    assert sent(app) == []


def test_waiting_for_replies_sends_the_revocation_and_returns_when_no_node_answers(
    app: Celery,
) -> None:
    # Given no worker runs: nobody confirms, but the revocation is durable all the same
    start = time.monotonic()

    replies = app.control.revoke("t", reply=True, timeout=0.2)

    assert replies == []
    assert time.monotonic() - start >= 0.2
    assert [r.ids for r in sent(app)] == [("t",)]


def test_a_bad_signal_is_refused_before_anything_is_sent(app: Celery) -> None:
    with pytest.raises(ValueError, match="unknown signal 'SIGNOPE'"):
        app.AsyncResult("t").revoke(terminate=True, signal="SIGNOPE")

    assert sent(app) == []


def test_async_result_revoke_sends_its_id(app: Celery) -> None:
    app.AsyncResult("abc").revoke(terminate=True)

    (revocation,) = sent(app)
    assert (revocation.ids, revocation.terminate, revocation.signal) == (
        ("abc",),
        True,
        "SIGTERM",
    )


def test_group_result_revoke_sends_every_member_nested_ones_too_at_once(app: Celery) -> None:
    # Given a group whose second member is itself a group
    inner = GroupResult("g-inner", [app.AsyncResult("b1"), app.AsyncResult("b2")], app=app)
    members: list[Any] = [app.AsyncResult("a"), inner, app.AsyncResult("c")]
    outer = GroupResult("g-outer", members, app=app)

    # When it is revoked
    outer.revoke()

    # Then one revocation names every task, in order
    assert [r.ids for r in sent(app)] == [("a", "b1", "b2", "c")]


def test_an_eager_result_is_marked_revoked_locally(app: Celery) -> None:
    result: EagerResult[int] = EagerResult("e1", 4, states.SUCCESS, app=app)

    result.revoke()

    assert result.state == states.REVOKED
    assert isinstance(result.result, TaskRevokedError)
    with pytest.raises(TaskRevokedError):
        result.get()
    assert sent(app) == []  # an eager task has run already: nothing to tell workers


def test_an_eager_group_is_marked_revoked_member_by_member(app: Celery) -> None:
    members: list[Any] = [EagerResult(f"e{i}", i, states.SUCCESS, app=app) for i in range(3)]
    result = EagerGroupResult("eg", members, app=app)

    result.revoke(terminate=True)

    assert [r.state for r in result] == [states.REVOKED] * 3
    assert sent(app) == []
