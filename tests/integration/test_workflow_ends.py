"""Every workflow ends, whatever ends its task (issue 10), with real prefork workers.

Each way a task can end -- an exception, retries exhausted, its process dying past
``task_max_deliveries``, a hard time limit, an unregistered name, an undecodable
message, a result that cannot be encoded, expiry -- is tried as a chain step and as
a chord member, on SQLite and Redis: ``get()`` on the workflow's result raises
within seconds (never times out), the task is in exactly one terminal state, and
``link_error`` callbacks and the ``task_failure`` signal run once.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chard import chain, chord, states
from chard.brokers.base import OutgoingMessage
from chard.exceptions import (
    ChordError,
    DecodeError,
    EncodeError,
    NotRegistered,
    SerializationError,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from chard.protocol.ids import new_id
from chard.protocol.message import TaskMessage, with_header
from chard.result import AsyncResult
from tests.helpers import wait_for
from tests.integration.workers import WorkerFactory, WorkerProcess, iter_lines, project_tasks

pytestmark = pytest.mark.slow

#: Long enough for two deaths, a respawn and a busy CI machine; a hang waits it out.
END = 60


@pytest.fixture
def endsapp(transport: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The test project's tasks module, configured for this test's transport."""
    yield from project_tasks("endsapp", transport, monkeypatch)


@pytest.fixture
def ends_log(tmp_path: Path) -> Path:
    """The file the workers' signal handlers and errbacks append to (see endsapp)."""
    return tmp_path / "ends.log"


def start(workers: WorkerFactory, ends_log: Path) -> WorkerProcess:
    return workers.start(
        "-P", "prefork", "-c", "2", app="endsapp", extra_env={"ENDS_LOG": str(ends_log)}
    )


def assert_chord_failed(joined: AsyncResult[Any], error: type[BaseException], name: str) -> None:
    """The chord's own result is ChordError naming the member's error; ``get()`` raises
    the member's error first, as Celery's does (it follows the header group)."""
    with pytest.raises(ChordError, match=name):
        joined.get(timeout=END, follow_parents=False)
    assert joined.state == states.FAILURE
    with pytest.raises(error):
        joined.get(timeout=END)


def lines(ends_log: Path, prefix: str) -> list[str]:
    return [line for line in iter_lines(ends_log) if line.startswith(prefix)]


def test_a_member_whose_process_dies_ends_its_chain_and_chord(
    endsapp: Any, workers: WorkerFactory, ends_log: Path
) -> None:
    # Given a worker with task_max_deliveries=2, and a task that kills its process
    start(workers, ends_log)
    add, die, xsum, errback = endsapp.add, endsapp.die, endsapp.xsum, endsapp.errback

    # When it is a chain's first step (with an errback) and a chord's member
    last = chain(die.s(1).set(link_error=[errback.s()]), add.s(1)).apply_async()
    assert isinstance(last.parent, AsyncResult)
    dying = last.parent.id
    joined = chord([add.s(1, 1), die.s(2)], xsum.s()).apply_async()

    # Then the chain's last step fails with the worker's loss, naming the dead step ...
    with pytest.raises(WorkerLostError):
        last.get(timeout=END)
    assert last.state == states.FAILURE
    assert f"die[{dying}]" in (last.traceback or "")
    assert AsyncResult(dying).state == states.FAILURE
    # ... the chord fails with ChordError naming the member ...
    assert_chord_failed(joined, WorkerLostError, "WorkerLostError")
    # ... and the errback and the failure signal ran once for the dead step
    wait_for(lambda: lines(ends_log, f"errback {dying}"), timeout=15)
    assert lines(ends_log, f"errback {dying}") == [f"errback {dying}"]
    assert lines(ends_log, f"failure {dying}") == [f"failure {dying} WorkerLostError"]


def test_a_task_acked_on_start_whose_process_dies_ends_its_workflows(
    endsapp: Any, workers: WorkerFactory, ends_log: Path
) -> None:
    # Given a task acked on start (acks_late=False): when its process dies, only the
    # supervisor's copy of the message (the child's slot) knows its chain and chord
    start(workers, ends_log)
    add, die, xsum = endsapp.add, endsapp.die_acked_early, endsapp.xsum

    last = chain(die.s(), add.s(1)).apply_async()
    joined = chord([add.s(1, 1), die.s()], xsum.s()).apply_async()

    # Then it is not run again, and both workflows end
    with pytest.raises(WorkerLostError, match="exit code 1"):
        last.get(timeout=END)
    assert_chord_failed(joined, WorkerLostError, "WorkerLostError")
    assert last.parent is not None
    assert lines(ends_log, f"failure {last.parent.id}") == [
        f"failure {last.parent.id} WorkerLostError"
    ]


def test_a_member_past_its_hard_time_limit_ends_its_chain_and_chord(
    endsapp: Any, workers: WorkerFactory, ends_log: Path
) -> None:
    start(workers, ends_log)
    add, overrun, xsum = endsapp.add, endsapp.overrun, endsapp.xsum

    # When a task killed at its 1 s hard limit is a chain step and a chord member
    last = chain(overrun.s(), add.s(1)).apply_async()
    joined = chord([add.s(1, 1), overrun.s()], xsum.s()).apply_async()

    # Then both workflows end, with the time limit named
    with pytest.raises(TimeLimitExceeded):
        last.get(timeout=END)
    assert_chord_failed(joined, TimeLimitExceeded, "TimeLimitExceeded")
    assert last.parent is not None
    assert lines(ends_log, f"failure {last.parent.id}") == [
        f"failure {last.parent.id} TimeLimitExceeded"
    ]


def test_an_unencodable_result_is_failure_and_ends_its_workflows(
    endsapp: Any, workers: WorkerFactory, ends_log: Path
) -> None:
    start(workers, ends_log)
    add, unencodable, xsum = endsapp.add, endsapp.unencodable, endsapp.xsum

    # When a task returns a value JSON cannot encode
    alone = unencodable.delay()
    last = chain(unencodable.s(), add.s(1)).apply_async()
    joined = chord([unencodable.s(), add.s(1, 1)], xsum.s()).apply_async()

    # Then it is FAILURE with an EncodeError naming the task and the type ...
    with pytest.raises(EncodeError, match=r"'endsapp\.tasks\.unencodable'.*'object'"):
        alone.get(timeout=END)
    assert alone.state == states.FAILURE
    # ... and its chain and chord end with it
    with pytest.raises(EncodeError):
        last.get(timeout=END)
    assert_chord_failed(joined, EncodeError, "EncodeError")
    # ... and when its result is ignored, the next step cannot be sent: the chain ends
    ignored = chain(endsapp.unencodable_ignored.s(), add.s(1)).apply_async()
    with pytest.raises(SerializationError):
        ignored.get(timeout=END)
    # ... and the worker goes on
    assert add.delay(2, 3).get(timeout=END) == 5


def test_unregistered_and_undecodable_messages_end_their_workflows(
    endsapp: Any, workers: WorkerFactory, ends_log: Path
) -> None:
    start(workers, ends_log)
    app, add, xsum = endsapp.app, endsapp.add, endsapp.xsum

    # When a chain starts with a task no worker has registered
    missing = app.signature("endsapp.tasks.missing", (1,))
    last = chain(missing, add.s(1)).apply_async()
    # ... and a message whose 'eta' header is not a time, with a chain after it
    following = add.s(1)
    following.freeze()
    message = TaskMessage("endsapp.tasks.add", new_id(), (1, 1), chain=[following.to_dict()])
    raw = with_header(message.to_wire("celery"), "eta", "yesterday")
    app.broker.publish(OutgoingMessage("celery", raw, 0))
    # ... and a chord whose member names a task nobody has
    joined = chord([add.s(1, 1), app.signature("endsapp.tasks.missing")], xsum.s()).apply_async()

    # Then each ends FAILURE, and so does what comes after it
    with pytest.raises(NotRegistered):
        last.get(timeout=END)
    with pytest.raises(DecodeError, match="eta"):
        AsyncResult(message.id, app=app).get(timeout=END)
    with pytest.raises(DecodeError):
        AsyncResult(str(following.id), app=app).get(timeout=END)
    assert_chord_failed(joined, NotRegistered, "NotRegistered")


def test_exceptions_retries_and_expiry_end_their_workflows(
    endsapp: Any, workers: WorkerFactory, ends_log: Path
) -> None:
    start(workers, ends_log)
    add, boom, retry_out, xsum = endsapp.add, endsapp.boom, endsapp.retry_out, endsapp.xsum
    past = datetime.now(UTC) - timedelta(minutes=1)

    raised = chain(boom.s(), add.s(1)).apply_async()
    retried = chain(retry_out.s(), add.s(1)).apply_async()
    expired = chain(add.s(1, 1).set(expires=past), add.s(1)).apply_async()
    expired_member = chord([add.s(1, 1).set(expires=past), add.s(2, 2)], xsum.s()).apply_async()

    with pytest.raises(ValueError, match="boom"):
        raised.get(timeout=END)
    with pytest.raises(KeyError):
        retried.get(timeout=END)
    with pytest.raises(TaskRevokedError, match="expired"):
        expired.get(timeout=END)
    assert expired.state == states.REVOKED
    assert_chord_failed(expired_member, TaskRevokedError, "expired")


def test_get_on_a_task_whose_result_is_ignored_returns_none_at_once(
    endsapp: Any, workers: WorkerFactory, ends_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given tasks whose results are ignored: by the task, by the call, by the app
    start(workers, ends_log)
    app, add, quiet = endsapp.app, endsapp.add, endsapp.quiet

    by_task = quiet.delay("task")
    by_call = quiet.apply_async(("call",), ignore_result=True)
    by_call_add = add.apply_async((1, 2), ignore_result=True)
    monkeypatch.setitem(app.conf, "task_ignore_result", True)
    by_app = add.delay(2, 2)
    monkeypatch.setitem(app.conf, "task_ignore_result", False)

    # Then get() returns None without waiting (Celery's 'ignored'), as Celery does ...
    for result in (by_task, by_call, by_call_add, by_app):
        assert result.ignored
        assert result.get(timeout=0.5) is None
    # ... while the tasks still run, and store nothing
    wait_for(lambda: len(lines(ends_log, "quiet ")) == 2, timeout=END)
    assert add.delay(1, 1).get(timeout=END) == 2  # the worker has run what came before
    assert app.backend.get_task_meta(by_call_add.id)["status"] == states.PENDING
    assert app.backend.get_task_meta(by_app.id)["status"] == states.PENDING
    assert not add.delay(3, 3).ignored
