"""The dashboard's history stores on SQLite, Redis and PostgreSQL (issue 17): round trip,
retention, search, workflows."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from chard import Celery
from chard.dashboard import views
from chard.dashboard.history import History, Record, decode, encode
from chard.dashboard.monitor import Monitor
from chard.dashboard.server import open_history
from chard.events.state import TaskState
from tests.helpers import drop_postgres_schema, postgres_url, redis_url


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/results.sqlite3"
    elif request.param == "redis":
        yield redis_url()
    else:
        url = postgres_url()
        yield url
        drop_postgres_schema(url)


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
    for monitor in (first, second):
        assert monitor.history is not None
        monitor.history.close()


def test_no_backend_means_no_history() -> None:
    assert open_history(Celery("hist", broker="memory://")) is None


# -- search over the whole history (beyond what memory keeps) ---------------------------
def varied(i: int) -> TaskState:
    found = task(f"id{i:04d}", 1000.0 + i)
    found.state = "FAILURE" if i % 5 == 0 else "SUCCESS"
    found.name = "proj.mul" if i % 2 else "proj.add"
    found.worker = f"w{i % 3}@h"
    found.args = f"({i}, 'needle-{i % 7}')"
    return found


def test_the_list_searches_the_history_beyond_the_memory_window(backend_url: str) -> None:
    app = Celery("hist", broker="memory://", backend=backend_url)
    monitor = Monitor(app, max_tasks=20, history=open_history(app))
    assert monitor.history is not None
    monitor.history.save([encode(varied(i)) for i in range(300)])
    monitor.restore()
    assert len(monitor.state.tasks) == 20  # memory holds the newest 20 only

    everything = views.tasks(monitor, views.TaskFilter(), 0, 50)
    assert everything["total"] == 300
    assert everything["source"] == "history"
    assert [t["id"] for t in everything["tasks"][:2]] == ["id0299", "id0298"]
    assert everything["counts"] == {"FAILURE": 60, "SUCCESS": 240}
    assert everything["names"] == ["proj.add", "proj.mul"]

    where = views.TaskFilter(state="FAILURE", name="add", worker="w0@h")
    expected = [i for i in range(299, -1, -1) if i % 5 == 0 and i % 2 == 0 and i % 3 == 0]
    second = views.tasks(monitor, where, 3, 4)  # a page deep into the oldest ones
    assert second["total"] == len(expected)
    assert [t["id"] for t in second["tasks"]] == [f"id{i:04d}" for i in expected[3:7]]

    needle = views.tasks(monitor, views.TaskFilter(search="needle-3"), 0, 500)
    assert needle["total"] == len([i for i in range(300) if i % 7 == 3])
    by_id = views.tasks(monitor, views.TaskFilter(id="id001"), 0, 50)
    assert sorted(t["id"] for t in by_id["tasks"]) == [f"id{i:04d}" for i in range(10, 20)]
    span = views.tasks(monitor, views.TaskFilter(since=1010.0, until=1014.0), 0, 50)
    assert [t["id"] for t in span["tasks"]] == [f"id{i:04d}" for i in range(14, 9, -1)]

    # a task memory forgot still has its page, read from the history
    assert views.task(monitor, "id0001")["args"] == "(1, 'needle-1')"
    monitor.history.close()


def test_an_older_sqlite_table_gets_the_filter_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/results.sqlite3"
    with sqlite3.connect(tmp_path / "results.sqlite3") as conn:  # as the first release wrote it
        conn.execute(
            "CREATE TABLE chard_dashboard_tasks "
            "(uuid TEXT PRIMARY KEY, changed REAL NOT NULL, record TEXT NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO chard_dashboard_tasks VALUES (?, ?, ?)",
            [encode(varied(i)) for i in range(10)],
        )
    conn.close()
    store = open_history(Celery("hist", broker="memory://", backend=url))
    assert store is not None
    found = store.search(views.TaskFilter(state="FAILURE"), 0, 50)
    assert [t.uuid for t in found.tasks] == ["id0005", "id0000"]
    store.close()


def linked(uuid: str, stamp: float, root: str, parent: str | None = None, **extra: str) -> Record:
    found = task(uuid, stamp)
    found.root_id, found.parent_id = root, parent
    found.extra.update(extra)
    return encode(found)


def test_a_workflow_memory_forgot_is_drawn_from_an_sql_history(backend_url: str) -> None:
    if backend_url.startswith("redis"):
        pytest.skip("Redis cannot query links: its workflow is drawn from memory")
    app = Celery("hist", broker="memory://", backend=backend_url)
    monitor = Monitor(app, max_tasks=2, history=open_history(app))
    assert monitor.history is not None
    monitor.history.save([
        linked("a", 1.0, "a"), linked("b", 2.0, "a", "a"), linked("c", 3.0, "a", "b"),
        linked("h1", 4.0, "h1", group_id="g", chord_body_id="body"),
        linked("h2", 5.0, "h2", group_id="g", chord_body_id="body"),
        linked("body", 6.0, "h2", "h2"),
        *[encode(task(f"other{i}", 10.0 + i)) for i in range(5)],
    ])  # fmt: skip
    monitor.restore()
    assert "a" not in monitor.state.tasks  # memory keeps the newest two only

    page = views.task(monitor, "b")
    assert {n["id"] for n in page["graph"]["nodes"]} == {"a", "b", "c"}
    assert page["children"] == ["c"]
    chord = views.task(monitor, "h1")["graph"]
    assert {(e["from"], e["to"]) for e in chord["edges"]} == {("h1", "body"), ("h2", "body")}
    monitor.history.close()


def test_redis_records_written_before_the_index_are_still_searched() -> None:
    from chard.dashboard.history_redis import RedisHistory

    store = open_history(Celery("hist", broker="memory://", backend=redis_url()))
    assert isinstance(store, RedisHistory)
    old = [encode(varied(i)) for i in range(10)]
    store._client.hset(store._records, mapping={u: t for u, _, t in old})  # no index entries
    store._client.zadd(store._changed, {u: c for u, c, _ in old})
    found = store.search(views.TaskFilter(state="FAILURE"), 0, 50)
    assert [t.uuid for t in found.tasks] == ["id0005", "id0000"]
    assert found.counts == {"FAILURE": 2, "SUCCESS": 8}
    store.close()
