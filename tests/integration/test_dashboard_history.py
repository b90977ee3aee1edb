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


def test_a_workflow_memory_forgot_is_drawn_from_the_history(backend_url: str) -> None:
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


def test_redis_records_written_before_the_index_are_indexed_when_opened() -> None:
    from chard.dashboard.history_redis import RedisHistory

    url = redis_url()
    first = open_history(Celery("hist", broker="memory://", backend=url))
    assert isinstance(first, RedisHistory)
    old = [encode(varied(i)) for i in range(10)]
    first._client.delete(first._version)  # as the first release left it: no sorted sets
    first._client.hset(first._records, mapping={u: t for u, _, t in old})
    first._client.zadd(first._changed, {u: c for u, c, _ in old})
    first.close()

    store = open_history(Celery("hist", broker="memory://", backend=url))
    assert isinstance(store, RedisHistory)
    found = store.search(views.TaskFilter(state="FAILURE"), 0, 50)
    assert [t.uuid for t in found.tasks] == ["id0005", "id0000"]
    assert found.counts == {"FAILURE": 2, "SUCCESS": 8}
    store.close()


def redis_keys(store: History) -> set[str]:
    from chard.dashboard.history_redis import RedisHistory

    assert isinstance(store, RedisHistory)
    return {k.decode() for k in store._client.scan_iter(f"{store._prefix}*")}


def members(store: History, uuid: str) -> set[str]:
    """The Redis keys whose sorted set or hash still names task ``uuid``."""
    from chard.dashboard.history_redis import RedisHistory

    assert isinstance(store, RedisHistory)
    found = set()
    for key in redis_keys(store):
        kind = store._client.type(key).decode()
        if (kind == "zset" and store._client.zscore(key, uuid) is not None) or (
            kind == "hash" and store._client.hexists(key, uuid)
        ):
            found.add(key.removeprefix(store._prefix))
    return found


def test_a_redis_filter_reads_the_indexes_and_a_changed_state_moves_its_entry() -> None:
    app = Celery("hist", broker="memory://", backend=redis_url())
    monitor = Monitor(app, max_tasks=20, history=open_history(app))
    store = monitor.history
    assert store is not None
    store.save([encode(varied(i)) for i in range(300)])
    monitor.restore()
    assert len(monitor.state.tasks) == 20

    # id0000..id0279 are beyond the memory window; found through the sorted sets
    assert {k for k in redis_keys(store) if ".by.state:" in k} == {
        f"{store._prefix}chard.dashboard.by.state:{s}" for s in ("FAILURE", "SUCCESS")
    }
    where = views.TaskFilter(state="FAILURE", worker="w1@h", since=1000.0, until=1100.0)
    found = views.tasks(monitor, where, 0, 50)
    expected = [i for i in range(100, -1, -1) if i % 5 == 0 and i % 3 == 1]
    assert [t["id"] for t in found["tasks"]] == [f"id{i:04d}" for i in expected]
    assert found["exact"] is True

    changed = varied(10)  # FAILURE on w1@h, now retried on w2@h and succeeded
    changed.state, changed.worker, changed.timestamp = "SUCCESS", "w2@h", 2000.0
    store.save([encode(changed)])
    assert members(store, "id0010") == {
        "chard.dashboard.tasks", "chard.dashboard.index", "chard.dashboard.changed",
        "chard.dashboard.by.state:SUCCESS", "chard.dashboard.by.name:proj.add",
        "chard.dashboard.by.worker:w2@h",
    }  # fmt: skip
    failed = store.search(views.TaskFilter(state="FAILURE"), 0, 500)
    assert "id0010" not in {t.uuid for t in failed.tasks}
    assert failed.counts == {"FAILURE": 59, "SUCCESS": 241}
    newest = store.search(views.TaskFilter(state="SUCCESS", worker="w2@h"), 0, 1)
    assert [t.uuid for t in newest.tasks] == ["id0010"]

    # a substring search on Redis scans newest first and stops past the page
    some = views.tasks(monitor, views.TaskFilter(search="needle-3"), 0, 5)
    assert len(some["tasks"]) == 5
    assert some["exact"] is False
    assert some["total"] == 6
    quoted = varied(7)  # a needle JSON escapes is matched on the parsed entries
    quoted.args, quoted.timestamp = """('say "hi"', 'caf\u00e9')""", 3000.0
    store.save([encode(quoted)])
    for needle in ('say "hi"', "café"):
        hit = store.search(views.TaskFilter(search=needle), 0, 5)
        assert [t.uuid for t in hit.tasks] == ["id0007"]

    # the indexed filters read the sorted sets alone, not the entries a scan reads
    store._client.delete(store._index)
    again = views.tasks(monitor, where, 0, 50)
    assert [t["id"] for t in again["tasks"]] == [f"id{i:04d}" for i in expected if i != 10]
    store.close()


def test_a_trimmed_redis_record_leaves_no_index_entry() -> None:
    app = Celery("hist", broker="memory://", backend=redis_url())
    store = open_history(app)
    assert store is not None
    gone = task("gone", 0.5)
    gone.name, gone.state = "proj.retired", "RETRY"
    store.save([
        encode(gone), linked("a", 1.0, "a"), linked("b", 2.0, "a", "a"),
        linked("h1", 3.0, "h1", group_id="g", chord_body_id="body"),
        *[encode(varied(i)) for i in range(10)],
    ])  # fmt: skip
    assert members(store, "b")
    assert b"proj.retired" in store._client.smembers(store._names)
    assert store.trim(max_count=10, older_than=None) == 4

    # the name and state no task has any more leave the lists the filters offer
    assert set(store._client.smembers(store._names)) == {b"proj.add", b"proj.mul"}
    assert set(store._client.smembers(store._states)) == {b"FAILURE", b"SUCCESS"}

    for uuid in ("gone", "a", "b", "h1"):
        assert members(store, uuid) == set()
    left = redis_keys(store)
    assert not [k for k in left if k.endswith((":a", ":h1", ":g", ":body"))]
    assert store.search(views.TaskFilter(name="add"), 0, 50).total == 5
    store.close()
