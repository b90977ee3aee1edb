"""Celery's pidbox ``revoke`` casts (chard.protocol.pidbox): what crosses a mixed fleet.

That Celery's own workers and clients read and write these is proven end to end in
tests/integration/test_mixed_fleet.py; here, the decoding rules.
"""

from __future__ import annotations

import base64
import json

from chard.protocol.pidbox import pidbox_topic, read_revoke, revoke_cast

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
