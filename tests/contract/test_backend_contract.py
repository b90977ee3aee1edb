"""One contract suite, run against every result backend.

Whatever the store, callers see the same behaviour: PENDING for unknown ids, state
precedence, expiry, waiting with a deadline, atomic counters, groups and exception
round trips. A backend that needs a server skips when it is absent (fails under CI).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chard import states
from chard.backends import ResultBackend, open_backend
from chard.backends.base import decode_exception
from chard.exceptions import RemoteTaskError, ResultTimeout
from tests.helpers import drop_postgres_schema, postgres_url, redis_url, wait_for

BACKENDS = ["memory", "sqlite", "db+sqlite", "file", "redis", "postgres"]
#: Backends whose waiters are woken by the store rather than by polling.
NATIVE_WAIT = {"memory", "redis", "postgres", "file"}  # file: inotify (Linux)
#: Keys on a shared server expire even when a test forgets to clean up.
DEFAULT_EXPIRES = 300.0

BackendFactory = Callable[..., ResultBackend]


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_backend(backend_kind: str, tmp_path: Path) -> Iterator[BackendFactory]:
    """Return a factory of backends of one kind, closed after the test.

    Each call opens a new backend object on the same store, as a client and a worker
    would; ``memory://`` keeps results in its instance, so it hands out one object.
    """
    opened: list[ResultBackend] = []
    memory: dict[float | None, ResultBackend] = {}
    if backend_kind == "memory":
        url = "memory://"
    elif backend_kind in ("sqlite", "db+sqlite"):  # db+: Celery's database-backend spelling
        url = f"{backend_kind}:///{tmp_path / 'results.sqlite3'}"
    elif backend_kind == "file":
        url = f"file://{tmp_path / 'results'}"  # tmp_path is absolute: file:///tmp/...
    elif backend_kind == "postgres":
        url = postgres_url()  # a schema of its own, dropped after the test
    else:
        url = redis_url()

    def factory(expires: float | None = DEFAULT_EXPIRES) -> ResultBackend:
        if backend_kind == "memory" and expires in memory:
            return memory[expires]
        backend = memory[expires] = open_backend(url, expires=expires)
        opened.append(backend)
        return backend

    yield factory
    for backend in opened:
        backend.close()
    if backend_kind == "postgres":
        drop_postgres_schema(url)


@pytest.fixture
def backend(make_backend: BackendFactory) -> ResultBackend:
    return make_backend()


def new_id() -> str:
    return str(uuid.uuid4())


def test_unknown_id_is_pending_and_does_not_exist(backend: ResultBackend) -> None:
    task_id = new_id()

    meta = backend.get_task_meta(task_id)

    assert meta["status"] == states.PENDING
    assert meta["result"] is None
    assert meta["task_id"] == task_id
    assert backend.exists(task_id) is False


def test_store_and_get_success(backend: ResultBackend) -> None:
    task_id = new_id()

    backend.store_result(task_id, {"sum": [1, 2]}, states.SUCCESS)

    meta = backend.get_task_meta(task_id)
    assert meta["status"] == states.SUCCESS
    assert meta["result"] == {"sum": [1, 2]}
    assert meta["task_id"] == task_id
    assert meta["date_done"] is not None
    assert backend.exists(task_id) is True


def test_extra_fields_are_stored(backend: ResultBackend) -> None:
    task_id = new_id()

    backend.store_result(task_id, 4, states.SUCCESS, extra={"group_id": "g1", "parent_id": None})

    meta = backend.get_task_meta(task_id)
    assert meta["group_id"] == "g1"
    assert "parent_id" not in meta


def test_started_after_success_does_not_overwrite(backend: ResultBackend) -> None:
    task_id = new_id()
    backend.store_result(task_id, 4, states.SUCCESS)

    returned = backend.store_result(task_id, None, states.STARTED)

    assert returned["status"] == states.SUCCESS
    assert backend.get_task_meta(task_id)["status"] == states.SUCCESS


def test_failure_can_be_replaced_by_success(backend: ResultBackend) -> None:
    # Given a failure stored by a first delivery
    task_id = new_id()
    backend.store_result(task_id, ValueError("first try"), states.FAILURE)

    # When a redelivery succeeds
    backend.store_result(task_id, 4, states.SUCCESS)

    # Then the success wins
    meta = backend.get_task_meta(task_id)
    assert meta["status"] == states.SUCCESS
    assert meta["result"] == 4


def test_success_is_final(backend: ResultBackend) -> None:
    task_id = new_id()
    backend.store_result(task_id, 4, states.SUCCESS)

    backend.store_result(task_id, ValueError("late duplicate"), states.FAILURE)
    backend.store_result(task_id, 5, states.SUCCESS)

    meta = backend.get_task_meta(task_id)
    assert meta["status"] == states.SUCCESS
    assert meta["result"] == 4


def test_results_expire(make_backend: BackendFactory) -> None:
    backend = make_backend(expires=0.3)
    task_id = new_id()
    backend.store_result(task_id, 4, states.SUCCESS)
    assert backend.exists(task_id)

    wait_for(lambda: backend.get_task_meta(task_id)["status"] == states.PENDING, timeout=5.0)

    assert backend.exists(task_id) is False


def test_forget_deletes_the_result(backend: ResultBackend) -> None:
    task_id = new_id()
    backend.store_result(task_id, 4, states.SUCCESS)

    backend.forget(task_id)
    backend.forget(task_id)  # forgetting twice is fine

    assert backend.get_task_meta(task_id)["status"] == states.PENDING
    assert backend.exists(task_id) is False


def test_get_many_keeps_the_order_of_ids(backend: ResultBackend) -> None:
    first, unknown, second = new_id(), new_id(), new_id()
    backend.store_result(first, 1, states.SUCCESS)
    backend.store_result(second, 2, states.STARTED)

    metas = backend.get_many([second, unknown, first, second])

    assert [m["task_id"] for m in metas] == [second, unknown, first, second]
    assert [m["status"] for m in metas] == [
        states.STARTED,
        states.PENDING,
        states.SUCCESS,
        states.STARTED,
    ]
    assert backend.get_many([]) == []


def test_wait_for_returns_when_another_thread_stores(
    backend_kind: str, make_backend: BackendFactory
) -> None:
    # Given a waiter on one backend object and a writer on another (as for a client and a worker)
    waiter, writer = make_backend(), make_backend()
    task_id = new_id()
    stored_at: list[float] = []

    def store_later() -> None:
        time.sleep(0.3)  # long enough for the waiter to be blocked
        writer.store_result(task_id, 42, states.SUCCESS)
        stored_at.append(time.monotonic())

    thread = threading.Thread(target=store_later)
    thread.start()
    try:
        # When the waiter waits with a long polling interval
        meta = waiter.wait_for(task_id, timeout=10.0, interval=2.0)
        returned_at = time.monotonic()
    finally:
        thread.join()

    # Then it returns the result, soon after it was stored
    assert meta["status"] == states.SUCCESS
    assert meta["result"] == 42
    lag = returned_at - stored_at[0]
    if backend_kind in NATIVE_WAIT:
        assert waiter.has_native_wait
        assert lag < 0.2, f"waiter returned {lag:.3f}s after the store: polled, not woken"
    else:
        assert lag < 2.0, f"waiter returned {lag:.3f}s after the store: longer than the interval"


def test_wait_for_many_returns_metas_in_order(make_backend: BackendFactory) -> None:
    waiter, writer = make_backend(), make_backend()
    ids = [new_id() for _ in range(3)]
    writer.store_result(ids[1], 1, states.SUCCESS)

    def store_rest() -> None:
        time.sleep(0.1)  # the waiter must block on the two missing results
        writer.store_result(ids[2], 2, states.FAILURE)
        writer.store_result(ids[0], 0, states.SUCCESS)

    thread = threading.Thread(target=store_rest)
    thread.start()
    try:
        metas = waiter.wait_for_many(ids, timeout=10.0)
    finally:
        thread.join()

    assert [m["task_id"] for m in metas] == ids
    assert [m["status"] for m in metas] == [states.SUCCESS, states.SUCCESS, states.FAILURE]


def test_wait_for_raises_result_timeout(backend: ResultBackend) -> None:
    task_id = new_id()
    backend.store_result(task_id, None, states.STARTED)  # not ready: still times out
    started = time.monotonic()

    with pytest.raises(ResultTimeout, match=task_id) as info:
        backend.wait_for(task_id, timeout=0.3)

    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - started >= 0.3


def test_incr_is_atomic_across_threads(make_backend: BackendFactory) -> None:
    # Given 8 threads, each with its own backend object (its own connection)
    key = f"chord-counter-{new_id()}"
    backends = [make_backend() for _ in range(8)]
    seen: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(len(backends))

    def count(backend: ResultBackend) -> None:
        start.wait()
        values = [backend.incr(key) for _ in range(100)]
        with lock:
            seen.extend(values)

    # When each increments the same key 100 times
    threads = [threading.Thread(target=count, args=(b,)) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then every increment returned a distinct total, and none was lost
    assert sorted(seen) == list(range(1, 801))
    assert backends[0].incr(key) == 801


def test_incr_shares_one_backend_object_between_threads(backend: ResultBackend) -> None:
    key = f"chord-counter-{new_id()}"
    threads = [
        threading.Thread(target=lambda: [backend.incr(key) for _ in range(100)]) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert backend.incr(key) == 801


def test_save_restore_and_delete_group(backend: ResultBackend) -> None:
    group_id = new_id()
    members = [new_id() for _ in range(3)]

    assert backend.restore_group(group_id) is None
    backend.save_group(group_id, members)
    assert backend.restore_group(group_id) == members

    backend.delete_group(group_id)
    assert backend.restore_group(group_id) is None


def test_exception_round_trip(backend: ResultBackend) -> None:
    task_id = new_id()
    traceback = "Traceback (most recent call last):\n  ...\nValueError: bad input\n"

    backend.store_result(task_id, ValueError("bad input", 3), states.FAILURE, traceback)

    meta = backend.get_task_meta(task_id)
    assert meta["status"] == states.FAILURE
    assert meta["traceback"] == traceback
    assert meta["result"] == {
        "exc_type": "ValueError",
        "exc_message": ["bad input", 3],
        "exc_module": "builtins",
    }
    exc = decode_exception(meta["result"], meta["traceback"])
    assert type(exc) is ValueError
    assert exc.args == ("bad input", 3)


def test_exception_of_a_module_not_imported_becomes_remote_task_error(
    backend: ResultBackend,
) -> None:
    # Given an exception whose module this process never imported (as on a worker only)
    error_type = type("QuotaExceeded", (Exception,), {"__module__": "billing_not_imported.errors"})
    task_id = new_id()
    traceback = "Traceback (most recent call last):\nbilling_not_imported.errors.QuotaExceeded\n"
    backend.store_result(task_id, error_type("over quota", 7), states.FAILURE, traceback)

    # When the client rebuilds it
    meta = backend.get_task_meta(task_id)
    exc = decode_exception(meta["result"], meta["traceback"])

    # Then it gets a carrier naming the remote type, with the remote traceback
    assert isinstance(exc, RemoteTaskError)
    assert exc.exc_module == "billing_not_imported.errors"
    assert exc.exc_type == "QuotaExceeded"
    assert exc.remote_traceback == traceback
    assert "billing_not_imported.errors.QuotaExceeded" in str(exc)
    assert "over quota" in str(exc)


def test_held_stores_are_written_together_on_flush(backend: ResultBackend) -> None:
    # Given a thread that holds its stores (a worker running a batch of plain tasks)
    first, second = new_id(), new_id()
    backend.hold_stores()

    # When it stores two results and a late STARTED for the first
    backend.store_result(first, 1, states.SUCCESS)
    backend.store_result(second, 2, states.SUCCESS)
    backend.store_result(first, None, states.STARTED)

    # Then nothing is visible before the flush, which writes all three in order
    assert backend.get_task_meta(first)["status"] == states.PENDING
    assert backend.flush_stores() == 3
    assert [m["result"] for m in backend.get_many([first, second])] == [1, 2]
    assert backend.get_task_meta(first)["status"] == states.SUCCESS  # precedence still holds
    # ... and stores after the flush are written at once again
    third = new_id()
    backend.store_result(third, 3, states.SUCCESS)
    assert backend.get_task_meta(third)["result"] == 3


def test_held_stores_belong_to_the_holding_thread(backend: ResultBackend) -> None:
    held, direct = new_id(), new_id()
    backend.hold_stores()
    worker = threading.Thread(target=backend.store_result, args=(direct, 9, states.SUCCESS))
    worker.start()
    worker.join()
    backend.store_result(held, 8, states.SUCCESS)

    assert backend.get_task_meta(direct)["result"] == 9
    assert backend.get_task_meta(held)["status"] == states.PENDING
    backend.flush_stores()
    assert backend.get_task_meta(held)["result"] == 8
