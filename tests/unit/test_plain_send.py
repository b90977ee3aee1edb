"""The plain ``delay()``: a cached envelope per task, the same bytes as the full path.

A send without options from outside a task is encoded from a template kept per task
(``chard.sending.send_plain``); anything that changes what the template was made
from (settings, the task's options, a router's answer) must make the next send follow.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import pytest

from chard import Celery, signals
from chard.exceptions import SerializationError
from chard.protocol.message import TaskMessage
from tests.helpers import child_exit_code
from tests.unit.test_app import fetch


def fetch_all(app: Celery, queue: str = "celery") -> list[TaskMessage]:
    deliveries = app.broker.fetch([queue], limit=10, timeout=0)
    return [TaskMessage.from_wire(d.body, app.accept_content) for d in deliveries]


def raw_body(app: Celery, queue: str = "celery") -> bytes:
    deliveries = app.broker.fetch([queue], limit=2, timeout=0)
    assert len(deliveries) == 1
    deliveries[0].ack()
    return deliveries[0].body


def without_ids(body: bytes) -> dict[str, Any]:
    """The envelope with what differs between two sends (ids, tag, root) taken out."""
    envelope = json.loads(body)
    for key in ("id", "root_id"):
        envelope["headers"].pop(key)
    for key in ("correlation_id", "delivery_tag"):
        envelope["properties"].pop(key)
    return dict(envelope)


def test_a_plain_delay_writes_what_the_full_path_writes(app: Celery) -> None:
    @app.task(queue="q1", priority=3, time_limit=9, soft_time_limit=4)
    def add(x: int, y: int = 0) -> int:
        return x + y

    plain = add.delay(1, y="\u00e9")
    plain_body = raw_body(app, "q1")
    full = add.apply_async((1,), {"y": "\u00e9"}, link_error=None)  # an option: the full path
    full_body = raw_body(app, "q1")

    assert without_ids(plain_body) == without_ids(full_body)
    headers = json.loads(plain_body)["headers"]
    assert headers["id"] == headers["root_id"] == plain.id
    assert full.id != plain.id


def test_two_plain_sends_get_their_own_ids_and_arguments(app: Celery) -> None:
    @app.task
    def echo(value: Any) -> Any:
        return value

    first, second = echo.delay([1, {"a": None}]), echo.delay("two")

    found = sorted((m.id, m.root_id, json.dumps(m.args)) for m in fetch_all(app))
    assert found == sorted(
        [(first.id, first.id, '[[1, {"a": null}]]'), (second.id, second.id, '["two"]')]
    )


def test_a_changed_setting_or_task_option_reaches_the_next_plain_send(app: Celery) -> None:
    @app.task
    def job() -> None:
        """Sent twice."""

    job.delay()
    assert fetch(app)[0].priority == 0

    app.conf.task_default_priority = 7
    job.delay()
    assert fetch(app)[0].priority == 7

    job.queue = "moved"
    job.ignore_result = True
    job.delay()
    message, _ = fetch(app, "moved")
    assert (message.priority, message.ignore_result) == (7, True)


def test_a_router_that_reads_the_arguments_routes_each_plain_send(app: Celery) -> None:
    def by_size(name: str, args: Any, kwargs: Any, options: Any, task: Any = None) -> Any:
        return {"queue": "big"} if args and args[0] > 10 else None

    app.conf.task_routes = [by_size]

    @app.task
    def work(n: int) -> None:
        """Routed by its argument."""

    work.delay(1)
    work.delay(100)
    work.delay(2)

    assert sorted(m.args for m in fetch_all(app)) == [(1,), (2,)]
    assert fetch(app, "big")[0].args == (100,)


def test_an_argument_json_cannot_encode_is_named_by_the_plain_send(app: Celery) -> None:
    @app.task
    def take(value: Any) -> None:
        """Refused before sending."""

    with pytest.raises(SerializationError, match=r"args\[0\] of type object"):
        take.delay(object())
    assert app.broker.queue_size("celery") == 0


def test_publish_signals_see_plain_sends(app: Celery) -> None:
    seen: list[Any] = []

    def before(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
        seen.append(headers["id"])

    @app.task
    def ping() -> None:
        """Watched."""

    ping.delay()  # a template exists before the receiver connects
    fetch(app)
    signals.before_task_publish.connect(before)
    try:
        result = ping.delay()
    finally:
        signals.before_task_publish.disconnect(before)
    unwatched = ping.delay()  # disconnected: the plain path again, unseen

    assert seen == [result.id]
    assert unwatched.id not in seen
    assert not signals.before_task_publish.has_receivers


@pytest.fixture(params=["hiredis", "python"])
def packer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a packing test with hiredis's packer, and again with the Python one."""
    lane = pytest.importorskip("chard._redis.lane")
    if request.param == "python":
        monkeypatch.setattr(lane, "_c_pack", None)
    elif lane._c_pack is None:
        pytest.skip("hiredis < 2.1 has no pack_command")
    return str(request.param)


@pytest.mark.parametrize(
    "command",
    [
        ("LPUSH", "q", b"body"),
        ("GET", "\u00e9"),
        ("MGET", "a", "b"),
        ("LPUSH", "q", b"x" * 9000),
        # a worker's fetch script: numbers written as their repr, as redis-py does
        ("EVALSHA", "f" * 40, 0, "p:", 30.0, 4, 0.1, 1e-05, -3, 2**70),
    ],
)
def test_the_lane_packs_a_command_as_redis_py_does(command: tuple[Any, ...], packer: str) -> None:
    redis = pytest.importorskip("redis")
    from chard._redis.lane import pack

    assert pack(command) == [b"".join(redis.Connection().pack_command(*command))]


def test_the_lane_leaves_other_commands_to_redis_py(packer: str) -> None:
    import enum

    from chard._redis.lane import pack

    class Level(enum.IntEnum):
        HIGH = 1

    assert pack(("CLIENT LIST",)) is None
    assert pack(("SET", "k", True)) is None  # redis-py refuses a bool
    assert pack(("SET", "k", None)) is None
    assert pack(("SET", "k", Level.HIGH)) is None  # an int subclass: redis-py's own repr
    assert pack(("SET", "k", memoryview(b"v"))) is None
    assert pack(["SET", "k", "v"]) == pack(("SET", "k", "v"))  # a list packs as a tuple


def test_a_forked_child_sends_through_its_own_broker(app: Celery) -> None:
    # Given a task whose plain sends have a plan in this process
    @app.task
    def job() -> None:
        """Sent from both sides of a fork."""

    job.delay()
    parent_broker = app.broker

    # When a forked child sends it
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        ok = False
        with contextlib.suppress(BaseException):
            job.delay()
            ok = app.broker is not parent_broker and app.broker.queue_size("celery") == 1
        os._exit(0 if ok else 1)
    code = child_exit_code(pid)

    # Then the child's message went to the child's broker (an in-process store: the
    # parent's holds only its own), not through a plan bound to the parent's
    assert code == 0
    assert parent_broker.queue_size("celery") == 1


def test_close_forgets_the_plans_so_the_next_send_reads_the_configuration_again(
    app: Celery,
) -> None:
    # An environment variable (CHARD_RESULT_BACKEND) bumps no settings version: a test
    # suite or a process that changes it closes the app, and the plans must follow
    @app.task
    def job() -> None:
        """Sent twice."""

    job.delay()
    assert app._send_plans
    app.close()
    assert app._send_plans == {}
    job.delay()  # a new plan, from the configuration as it is now
    assert "tests.unit.test_plain_send" in next(iter(app._send_plans))
