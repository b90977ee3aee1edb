"""The SQLite result backend shared by processes on one file, as a node's workers share it."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from multiprocessing.context import SpawnContext
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import pytest

from chard import states
from chard._sqlite import parse_sqlite_url
from chard.backends import open_backend
from chard.backends.sqlite import TABLE, SQLiteResultBackend
from tests.helpers import wait_for

JOIN_TIMEOUT = 30.0


def incr_many(url: str, key: str, count: int, start: Barrier) -> None:
    """Child: increment ``key`` ``count`` times, once every sibling is ready."""
    backend = open_backend(url, expires=300)
    start.wait(JOIN_TIMEOUT)
    for _ in range(count):
        backend.incr(key)
    backend.close()


def incr_with_inherited(backend: SQLiteResultBackend, key: str, count: int) -> None:
    """Child: use a backend object (and connection) that the parent had already opened."""
    parent_conn = backend._local.handle.conn
    for _ in range(count):
        backend.incr(key)
    assert backend._local.handle.conn is not parent_conn
    assert backend._local.handle.pid == os.getpid()


def wait_for_result(url: str, task_id: str, waiting: Event, results: Any) -> None:
    """Child: check the task is pending, say so, then block until its result arrives."""
    backend = open_backend(url)
    assert backend.get_task_meta(task_id)["status"] == states.PENDING
    waiting.set()
    meta = backend.wait_for(task_id, timeout=JOIN_TIMEOUT, interval=0.1)
    results.put((meta["status"], meta["result"]))


def store_when_waited(url: str, task_id: str, waiting: Event) -> None:
    """Child: store the task's result once the waiter is blocked."""
    assert waiting.wait(JOIN_TIMEOUT)
    open_backend(url).store_result(task_id, {"answer": 42}, states.SUCCESS)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'chard.sqlite3'}"


@pytest.fixture
def spawn() -> SpawnContext:
    # spawn: each child opens the file from its URL, with no state copied from pytest
    return multiprocessing.get_context("spawn")


def run_all(processes: list[Any]) -> None:
    for process in processes:
        process.start()
    for process in processes:
        process.join(JOIN_TIMEOUT)
    assert [p.exitcode for p in processes] == [0] * len(processes)


def test_incr_is_atomic_across_processes(url: str, spawn: SpawnContext) -> None:
    # Given 4 processes released at the same moment
    start = spawn.Barrier(4)
    processes = [
        spawn.Process(target=incr_many, args=(url, "chord-counter", 250, start)) for _ in range(4)
    ]

    # When each increments the same key 250 times
    run_all(processes)

    # Then no increment was lost
    assert open_backend(url).incr("chord-counter") == 1001


def test_a_process_waits_for_a_result_another_stores(url: str, spawn: SpawnContext) -> None:
    waiting, results = spawn.Event(), spawn.Queue()
    waiter = spawn.Process(target=wait_for_result, args=(url, "t-1", waiting, results))
    writer = spawn.Process(target=store_when_waited, args=(url, "t-1", waiting))

    run_all([waiter, writer])

    assert results.get(timeout=JOIN_TIMEOUT) == (states.SUCCESS, {"answer": 42})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_children_reopen_their_connection(url: str) -> None:
    # Given a backend whose connection the parent has already opened
    backend = SQLiteResultBackend(url, expires=300)
    assert backend.incr("forked") == 1
    fork = multiprocessing.get_context("fork")

    # When forked children keep using the same object
    processes = [
        fork.Process(target=incr_with_inherited, args=(backend, "forked", 100)) for _ in range(3)
    ]
    run_all(processes)

    # Then each used a connection of its own, and the parent's still works
    assert backend.incr("forked") == 302
    backend.close()


def test_results_table_lives_beside_other_tables(url: str) -> None:
    # Given a file where another component (the broker) already keeps its own table
    path = parse_sqlite_url(url)
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE chard_messages (id INTEGER PRIMARY KEY, body BLOB)")
        other.execute("INSERT INTO chard_messages (body) VALUES (x'00')")
    other.close()

    # When the result backend opens the same file
    backend = open_backend(url)
    backend.store_result("t-1", 1, states.SUCCESS)
    backend.close()

    # Then both tables are there, and the file is in WAL mode
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        messages = conn.execute("SELECT count(*) FROM chard_messages").fetchone()[0]
    conn.close()
    assert {TABLE, "chard_messages"} <= tables
    assert mode == "wal"
    assert messages == 1


def test_expired_rows_are_deleted_by_a_later_write(url: str) -> None:
    backend = SQLiteResultBackend(url, expires=0.05, options={"purge_interval": 0})
    backend.store_result("old", 1, states.SUCCESS)
    wait_for(lambda: backend.get_task_meta("old")["status"] == states.PENDING)
    with sqlite3.connect(parse_sqlite_url(url)) as conn:  # expired, hidden, not yet deleted
        assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == 1
    conn.close()

    backend.store_result("new", 2, states.SUCCESS)  # a write purges what expired

    with sqlite3.connect(parse_sqlite_url(url)) as conn:
        keys = {row[0] for row in conn.execute(f"SELECT key FROM {TABLE}")}
    conn.close()
    assert "celery-task-meta-old" not in keys
    backend.close()


def test_backend_reopens_after_close(url: str) -> None:
    backend = open_backend(url)
    backend.store_result("t-1", 1, states.SUCCESS)

    backend.close()

    assert backend.get_task_meta("t-1")["result"] == 1
    backend.close()
