"""Celery's pidbox messages (chard.protocol.pidbox): what crosses a mixed fleet.

That Celery's own workers and clients read and write these is proven end to end in
tests/integration/test_mixed_fleet.py; here, the decoding rules.
"""

from __future__ import annotations

import base64
import json

from chard.protocol.pidbox import (
    CeleryRequest,
    pidbox_topic,
    read_reply,
    read_request,
    read_revoke,
    reply_envelope,
    request_cast,
    revocation_of,
    revoke_cast,
)

NOW = 1_800_000_000.0


def _cast(body: dict[str, object], expires: float | None = NOW + 1) -> bytes:
    envelope = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "headers": {"clock": 3, "expires": expires},
    }
    return json.dumps(envelope).encode()


def test_a_revoke_cast_round_trips_with_its_options() -> None:
    data = revoke_cast(["a", "b"], terminate=True, signal="SIGKILL", now=NOW)
    revocation = read_revoke(data, "w1@host", NOW + 5, ttl=100)
    assert revocation is not None
    assert revocation.ids == ("a", "b")
    assert revocation.terminate is True
    assert revocation.signal == "SIGKILL"
    assert revocation.expires == NOW + 105
    envelope = json.loads(data)
    assert envelope["properties"]["delivery_info"] == {
        "exchange": "celery.pidbox",
        "routing_key": "",
    }
    assert envelope["headers"]["expires"] == NOW + 60


def test_celerys_single_id_form_and_default_signal() -> None:
    data = _cast({"method": "revoke", "arguments": {"task_id": "x"}, "destination": None})
    revocation = read_revoke(data, "w1@host", NOW, ttl=10)
    assert revocation is not None
    assert revocation.ids == ("x",)
    assert revocation.terminate is False
    assert revocation.signal == "SIGTERM"


def test_other_commands_other_nodes_expired_and_garbage_are_ignored() -> None:
    revoke = {"method": "revoke", "arguments": {"task_id": ["x"]}}
    assert read_revoke(_cast({"method": "ping", "arguments": {}}), "w1@h", NOW, 10) is None
    for_w2 = _cast({**revoke, "destination": ["w2@h"]})
    assert read_revoke(for_w2, "w1@h", NOW, 10) is None
    assert read_revoke(for_w2, "w2@h", NOW, 10) is not None
    assert read_revoke(_cast(revoke, expires=NOW - 1), "w1@h", NOW, 10) is None
    assert read_revoke(b"not json", "w1@h", NOW, 10) is None
    assert read_revoke(b'{"body": "!!"}', "w1@h", NOW, 10) is None
    bad_signal = _cast({**revoke, "arguments": {"task_id": ["x"], "signal": "SIGNOPE"}})
    assert read_revoke(bad_signal, "w1@h", NOW, 10) is None


def test_kombus_fanout_topic_names_the_db() -> None:
    assert pidbox_topic(9) == "/9.celery.pidbox"


def test_a_call_round_trips_marked_as_chards_with_its_ticket_and_reply_to() -> None:
    reply_to = {"exchange": "reply.celery.pidbox", "routing_key": "oid-1"}
    data = request_cast(
        "stats", {}, now=NOW, ttl=2, destination=["w1@h"], ticket="t-1", reply_to=reply_to
    )
    request = read_request(data)
    assert request == CeleryRequest(
        "stats", {}, ("w1@h",), None, None, "t-1", reply_to, NOW + 2, from_chard=True
    )
    # a cast carries neither (Celery's workers then send no reply)
    cast = read_request(request_cast("rate_limit", {"task_name": "a"}, now=NOW))
    assert cast is not None
    assert (cast.ticket, cast.reply_to) == (None, None)


def test_celerys_own_request_is_not_chards_and_zero_expires_means_never() -> None:
    body = {"method": "ping", "arguments": {}, "destination": None, "ticket": "t"}
    request = read_request(_cast({**body, "reply_to": {"exchange": "x", "routing_key": "k"}}, 0))
    assert request is not None
    assert request.from_chard is False
    assert request.expires is None
    assert not request.is_expired(NOW)
    assert read_request(_cast({**body, "reply_to": "not a mapping"})) is None


def test_nodes_are_selected_as_kombu_does() -> None:
    assert CeleryRequest("ping", {}, destination=("a@h",)).is_for("a@h")
    assert not CeleryRequest("ping", {}, destination=("a@h",)).is_for("b@h")
    assert CeleryRequest("ping", {}, pattern="w*@h", matcher="glob").is_for("w1@h")
    assert not CeleryRequest("ping", {}, pattern="w*@h", matcher="glob").is_for("x1@h")
    assert CeleryRequest("ping", {}, pattern=r"w\d@", matcher="pcre").is_for("w1@h")
    assert not CeleryRequest("ping", {}, pattern="w*", matcher="unknown").is_for("w1@h")
    assert CeleryRequest("ping", {}).is_for("anyone@h")


def test_a_reply_carries_its_ticket_and_what_json_cannot_hold_is_repred() -> None:
    reply_to = {"exchange": "reply.celery.pidbox", "routing_key": "oid-1"}
    data = reply_envelope("w1@h", {"ok": "pong"}, "t-1", reply_to)
    assert read_reply(data) == ("t-1", {"w1@h": {"ok": "pong"}})
    assert read_reply(b"garbage") == ("", None)
    assert read_reply(reply_envelope("w1@h", {"ok": object()}, "t", reply_to))[1] is not None
    envelope = json.loads(data)
    assert envelope["headers"]["ticket"] == "t-1"
    assert envelope["properties"]["delivery_info"] == reply_to


def test_terminate_is_a_revocation_that_terminates() -> None:
    request = CeleryRequest("terminate", {"signal": "KILL", "task_id": ["x"]})
    revocation = revocation_of(request, NOW, 10)
    assert revocation is not None
    assert (revocation.ids, revocation.terminate, revocation.signal) == (("x",), True, "SIGKILL")
    assert revocation_of(CeleryRequest("ping", {}), NOW, 10) is None


def test_replies_taken_for_another_call_are_kept_for_it() -> None:
    from chard.control_pidbox import Unclaimed

    reply_to = {"exchange": "reply.celery.pidbox", "routing_key": "oid"}
    unclaimed = Unclaimed()
    mine = reply_envelope("a@h", {"ok": "pong"}, "t-1", reply_to)
    theirs = reply_envelope("b@h", {"ok": "pong"}, "t-2", reply_to)
    assert unclaimed.sort("t-1", [theirs, b"garbage", mine]) == [{"a@h": {"ok": "pong"}}]
    assert unclaimed.sort("t-2", []) == [{"b@h": {"ok": "pong"}}]
    assert unclaimed.sort("t-2", []) == []
