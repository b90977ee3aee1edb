"""The dashboard's history stores on SQLite and Redis (issue 17): round trip and retention."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chard import Celery
from chard.dashboard.history import History, decode, encode
from chard.dashboard.monitor import Monitor
from chard.dashboard.server import open_history
from chard.events.state import TaskState
from tests.helpers import redis_url


@pytest.fixture(params=["sqlite", "redis"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/results.sqlite3"
    return redis_url()


@pytest.fixture
def history(backend_url: str) -> Iterator[History]:
    app = Celery("hist", broker="memory://", backend=backend_url)
    store = open_history(app)
    assert store is not None
    yield store
    store.close()


def task(uuid: str, stamp: float) -> TaskState:
    found = TaskState(uuid, name="proj.add", state="SUCCESS", args="(1, 2)", result="3")
    found.timestamp = stamp
    found.timeline.extend([("task-received", stamp - 1), ("task-succeeded", stamp)])
    found.extra["queue"] = "celery"
    return found


def test_records_come_back_newest_last_with_every_field(history: History) -> None:
    history.save([encode(task(f"t{i}", 100.0 + i)) for i in range(5)])
    history.save([encode(task("t0", 200.0))])  # changed again: now the newest

    loaded = history.load(3)
    assert [uuid for uuid, _ in loaded] == ["t3", "t4", "t0"]
    restored = decode(*loaded[-1])
    assert restored is not None
    assert restored.result == "3"
    assert restored.timestamp == 200.0
    assert list(restored.timeline) == [("task-received", 199.0), ("task-succeeded", 200.0)]
    assert restored.extra == {"queue": "celery"}


def test_trim_keeps_the_newest_within_count_and_age(history: History) -> None:
    history.save([encode(task(f"t{i}", 100.0 + i)) for i in range(10)])

    assert history.trim(max_count=6, older_than=None) == 4
    assert [uuid for uuid, _ in history.load(100)] == [f"t{i}" for i in range(4, 10)]
    assert history.trim(max_count=6, older_than=108.0) == 4
    assert [uuid for uuid, _ in history.load(100)] == ["t8", "t9"]


def test_a_monitor_saves_what_events_change_and_restores_it(backend_url: str) -> None:
    app = Celery("hist", broker="memory://", backend=backend_url)
    first = Monitor(app, history=open_history(app))
    first.on_event({"type": "task-received", "uuid": "a", "hostname": "w@h",
                    "timestamp": 10.0, "name": "proj.add", "args": "(1, 2)"})  # fmt: skip
    first.on_event({"type": "task-succeeded", "uuid": "a", "hostname": "w@h",
                    "timestamp": 11.0, "result": "3", "runtime": 0.5})  # fmt: skip
    assert first.save() == 1
    assert first.save() == 0  # nothing changed since

    second = Monitor(app, history=open_history(app))
    assert second.restore() == 1
    # the same events again (the broker's log replayed) are not folded twice
    second.on_event({"type": "task-succeeded", "uuid": "a", "hostname": "w@h",
                     "timestamp": 11.0, "result": "3", "runtime": 0.5})  # fmt: skip
    restored = second.state.tasks["a"]
    assert restored.state == "SUCCESS"
    assert restored.name == "proj.add"
    assert [kind for kind, _ in restored.timeline] == ["task-received", "task-succeeded"]


def test_no_backend_means_no_history() -> None:
    assert open_history(Celery("hist", broker="memory://")) is None
