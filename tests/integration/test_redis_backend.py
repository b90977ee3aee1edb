"""Redis-specific result backend behaviour: Celery's keys, SET+PUBLISH, pub/sub wake-ups."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis

from chard import Celery, states
from chard.backends.redis import RedisResultBackend
from chard.exceptions import BackendError
from tests.helpers import REDIS_DB, REDIS_HOST, REDIS_PORT, redis_url, wait_for

pytestmark = pytest.mark.redis

META_KEYS = {"status", "result", "traceback", "children", "date_done", "task_id"}


@pytest.fixture
def prefix() -> str:
    url = redis_url()
    return url.split("global_keyprefix=", 1)[1]


@pytest.fixture
def raw(prefix: str) -> Iterator[redis.Redis]:
    """A plain client on the test's db; deletes the test's prefix keys afterwards."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    yield client
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def make_backend(prefix: str, raw: redis.Redis) -> Iterator[Callable[..., RedisResultBackend]]:
    opened: list[RedisResultBackend] = []

    def factory(expires: float | None = 3600) -> RedisResultBackend:
        backend = RedisResultBackend(redis_url(prefix), expires=expires)
        opened.append(backend)
        return backend

    yield factory
    for backend in opened:
        backend.close()


def meta_key(prefix: str, task_id: str) -> str:
    # Like Celery, a prefix not ending in one of ":_-." gets a "_" separator.
    return f"{prefix}_celery-task-meta-{task_id}"


def subscribers(raw: redis.Redis, channel: str) -> int:
    return int(raw.pubsub_numsub(channel)[0][1])


def test_a_waiter_on_another_thread_is_woken_within_milliseconds(
    make_backend: Callable[..., RedisResultBackend], raw: redis.Redis, prefix: str
) -> None:
    backend = make_backend()
    woken: dict[str, Any] = {}

    def wait() -> None:
        woken["meta"] = backend.wait_for("t1", timeout=10)
        woken["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_for(lambda: subscribers(raw, meta_key(prefix, "t1")) == 1)

    stored_at = time.monotonic()
    make_backend().store_result("t1", 42, states.SUCCESS)
    waiter.join(timeout=5)

    assert woken["meta"]["result"] == 42
    assert woken["at"] - stored_at < 0.1  # a poll interval would be 0.5 s or more


def test_the_stored_value_is_celerys_meta_at_celerys_key(
    make_backend: Callable[..., RedisResultBackend], raw: redis.Redis, prefix: str
) -> None:
    backend = make_backend()
    backend.store_result("ok", {"sum": 4}, states.SUCCESS)
    backend.store_result("bad", ValueError("bad input"), states.FAILURE, traceback="Tb")

    ok = json.loads(raw.get(meta_key(prefix, "ok")) or b"null")
    bad = json.loads(raw.get(meta_key(prefix, "bad")) or b"null")

    assert set(ok) == META_KEYS
    assert (ok["status"], ok["result"], ok["task_id"], ok["children"]) == (
        "SUCCESS",
        {"sum": 4},
        "ok",
        [],
    )
    assert ok["date_done"].endswith("+00:00")
    assert bad["result"] == {
        "exc_type": "ValueError",
        "exc_message": ["bad input"],
        "exc_module": "builtins",
    }
    assert bad["traceback"] == "Tb"


def test_a_store_is_published_on_the_keys_channel(
    make_backend: Callable[..., RedisResultBackend], raw: redis.Redis, prefix: str
) -> None:
    channel = meta_key(prefix, "t2")
    pubsub = raw.pubsub()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    pubsub.subscribe(channel)
    assert wait_for(lambda: pubsub.get_message(timeout=0.1))["type"] == "subscribe"

    make_backend().store_result("t2", "done", states.SUCCESS)

    message = wait_for(lambda: pubsub.get_message(timeout=0.1))
    assert message["channel"] == channel.encode()
    assert message["data"] == raw.get(channel)
    pubsub.close()


def test_ttl_comes_from_expires(
    make_backend: Callable[..., RedisResultBackend], raw: redis.Redis, prefix: str
) -> None:
    make_backend(expires=60).store_result("a", 1, states.SUCCESS)
    make_backend(expires=1.5).store_result("b", 1, states.SUCCESS)
    make_backend(expires=None).store_result("c", 1, states.SUCCESS)

    assert 55 <= raw.ttl(meta_key(prefix, "a")) <= 60
    assert 1000 <= raw.pttl(meta_key(prefix, "b")) <= 1500
    assert raw.ttl(meta_key(prefix, "c")) == -1


@pytest.mark.parametrize("when", ["before-watch", "before-confirm", "before-read", "after-read"])
def test_a_store_at_any_step_of_a_wait_is_seen_at_once(
    make_backend: Callable[..., RedisResultBackend],
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    # Given a waiter, and a writer that stores the result at one step of the wait
    waiter, writer = make_backend(), make_backend()

    def store() -> None:
        writer.store_result("t3", 3, states.SUCCESS)

    if when == "before-watch":
        store()
    elif when == "before-confirm":  # SUBSCRIBE sent, Redis's reply not read yet
        waiter.watch(["t3"])
        store()
    else:
        real_mget = waiter._mget

        def mget(keys: Sequence[str]) -> list[bytes | None]:
            if when == "before-read":
                store()
            values = real_mget(keys)
            if when == "after-read":
                store()
            return values

        monkeypatch.setattr(waiter, "_mget", mget)

    # When it waits with a long timeout
    started = time.monotonic()
    meta = waiter.wait_for("t3", timeout=10)

    # Then it has the result at once, by the read or by the published message
    assert meta["result"] == 3
    assert time.monotonic() - started < 1.0


def test_a_stored_result_costs_one_read_and_no_subscription(
    make_backend: Callable[..., RedisResultBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a result stored before anyone waits for it
    waiter, writer = make_backend(), make_backend()
    writer.store_result("t4", 4, states.SUCCESS)
    read: list[str] = []
    real_mget = waiter._mget
    monkeypatch.setattr(waiter, "_mget", lambda keys: read.extend(keys) or real_mget(keys))

    # When the caller waits for it
    meta = waiter.wait_for("t4", timeout=5)

    # Then one read brought it, and no pub/sub connection was opened for it
    assert meta["result"] == 4
    assert read == [waiter.task_key("t4")]
    assert waiter._listener._conn is None


def test_waiting_for_n_results_reads_each_key_once(
    make_backend: Callable[..., RedisResultBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 300 tasks whose results are stored one by one while the waiter waits
    waiter, writer = make_backend(), make_backend()
    ids = [f"many-{i}" for i in range(300)]
    read: list[str] = []
    real_mget = waiter._mget
    monkeypatch.setattr(waiter, "_mget", lambda keys: read.extend(keys) or real_mget(keys))

    def store_all() -> None:
        for n, task_id in enumerate(ids):
            writer.store_result(task_id, n, states.SUCCESS)

    # When the waiter collects them all
    writer_thread = threading.Thread(target=store_all)
    writer_thread.start()
    metas = waiter.wait_for_many(ids, timeout=30)
    writer_thread.join(timeout=10)

    # Then it has them in order, and read each key at most twice (O(N), not once per
    # wake-up): once before subscribing, once after Redis confirmed the subscription
    assert [m["result"] for m in metas] == list(range(300))
    assert max(collections.Counter(read).values()) <= 2
    assert set(read) <= {waiter.task_key(t) for t in ids}


def test_incr_counts_and_expires(
    make_backend: Callable[..., RedisResultBackend], raw: redis.Redis, prefix: str
) -> None:
    backend = make_backend(expires=30)

    assert [backend.incr("chord-counter") for _ in range(3)] == [1, 2, 3]
    assert 25_000 <= raw.pttl(f"{prefix}_chord-counter") <= 30_000


def test_an_unreachable_server_raises_backend_error_naming_the_url() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = RedisResultBackend(f"redis://:s3cret@127.0.0.1:{port}/9")

    with pytest.raises(BackendError) as caught:
        backend.get_task_meta("x")

    assert f"redis://:**@127.0.0.1:{port}/9" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    backend.close()


# -- the process's result listener: watched by waiters, one connection, loss and fork ----------


def listener_client_id(raw: redis.Redis, backend: RedisResultBackend) -> str:
    """The server's id of the backend's pub/sub connection (found by its local address)."""
    host, port = backend._listener._conn._sock.getsockname()[:2]
    return next(str(c["id"]) for c in raw.client_list() if c["addr"] == f"{host}:{port}")


def test_delay_subscribes_nothing_and_a_waiter_only_what_it_finds_pending(
    raw: redis.Redis, prefix: str, make_backend: Callable[..., RedisResultBackend]
) -> None:
    # Given an app whose broker and backend are Redis, and no worker
    url = redis_url(prefix)
    app = Celery("watching", broker=url, backend=url, set_as_current=False)
    add = app.task(name="watching.add")(lambda x, y: x + y)
    writer = make_backend()
    try:
        # When tasks are sent, no result channel is subscribed, and no pub/sub connection opened
        first, second = add.delay(2, 2), add.delay(3, 3)
        channels = [meta_key(prefix, first.id), meta_key(prefix, second.id)]
        assert [subscribers(raw, c) for c in channels] == [0, 0]
        assert app.backend._listener._conn is None

        # Then a get() that finds its task pending subscribes to that channel alone,
        # and takes the result stored meanwhile, also from another thread (aget)
        got: dict[str, Any] = {}
        waiter = threading.Thread(target=lambda: got.update(v=asyncio.run(first.aget(timeout=10))))
        waiter.start()
        wait_for(lambda: [subscribers(raw, c) for c in channels] == [1, 0])
        writer.store_result(first.id, 4, states.SUCCESS)
        waiter.join(timeout=10)
        assert got == {"v": 4}
        assert first.get(timeout=5) == 4

        # And the next subscription carries the UNSUBSCRIBE of the channel nobody waits on
        waiter = threading.Thread(target=lambda: got.update(v=second.get(timeout=10)))
        waiter.start()
        wait_for(lambda: [subscribers(raw, c) for c in channels] == [0, 1])
        writer.store_result(second.id, 6, states.SUCCESS)
        waiter.join(timeout=10)
        assert got == {"v": 6}
    finally:
        app.close()


def test_a_finished_threads_connection_is_closed_not_left_to_the_collector(
    make_backend: Callable[..., RedisResultBackend],
) -> None:
    # aget() reads on a worker thread that then ends. redis-py's connections sit in
    # reference cycles, so one left to the garbage collector could have its socket
    # finalized first: an "unclosed socket" ResourceWarning in whichever test collected it.
    lane = make_backend()._lane
    opened: list[Any] = []

    def use() -> None:
        lane.execute("PING")
        opened.append(lane.connection())

    # When a thread that used the lane ends, its connection is closed with it
    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    assert opened[0]._sock is None

    # And close() closes the connections of the threads still there
    use()
    assert opened[1]._sock is not None
    lane.close()
    assert opened[1]._sock is None


def test_a_waiter_whose_connection_is_killed_subscribes_and_reads_again(
    make_backend: Callable[..., RedisResultBackend], raw: redis.Redis, prefix: str
) -> None:
    # Given a waiter blocked on a result, subscribed
    waiter, writer = make_backend(), make_backend()
    got: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: got.update(meta=waiter.wait_for("k1", timeout=20)))
    thread.start()
    wait_for(lambda: subscribers(raw, meta_key(prefix, "k1")) == 1)

    # When its connection is killed and the result is stored while it is down
    raw.client_kill_filter(_id=listener_client_id(raw, waiter))
    writer.store_result("k1", "after the loss", states.SUCCESS)
    started = time.monotonic()
    thread.join(timeout=15)

    # Then the waiter still gets it (no message reached it: it read the key again)
    assert got["meta"]["result"] == "after the loss"
    assert time.monotonic() - started < 5


def test_waiters_on_many_threads_share_one_connection(
    make_backend: Callable[..., RedisResultBackend],
) -> None:
    waiter, writer = make_backend(), make_backend()
    got: dict[int, Any] = {}
    barrier = threading.Barrier(9)

    def wait(n: int) -> None:
        waiter.watch([f"th-{n}"])
        barrier.wait()
        got[n] = waiter.wait_for(f"th-{n}", timeout=20)["result"]

    threads = [threading.Thread(target=wait, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for n in reversed(range(8)):
        writer.store_result(f"th-{n}", n * 10, states.SUCCESS)
    for thread in threads:
        thread.join(timeout=20)

    assert got == {n: n * 10 for n in range(8)}
    assert waiter._listener._conn is not None  # one connection served all eight


def test_a_forked_child_listens_on_its_own_connection_and_the_parents_survives(
    make_backend: Callable[..., RedisResultBackend], raw: redis.Redis, prefix: str
) -> None:
    # Given a backend whose listener is subscribed in the parent
    waiter, writer = make_backend(), make_backend()
    waiter.watch(["parent-task"])
    wait_for(lambda: subscribers(raw, meta_key(prefix, "parent-task")) == 1)
    parent_conn = listener_client_id(raw, waiter)

    # When a forked child waits through the very same backend object for a result stored
    # once it has subscribed (by a thread of its own), and exits
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:

            def store_once_subscribed() -> None:
                wait_for(lambda: subscribers(raw, meta_key(prefix, "child-task")) == 1)
                writer.store_result("child-task", "for the child", states.SUCCESS)

            threading.Thread(target=store_once_subscribed, daemon=True).start()
            meta = waiter.wait_for("child-task", timeout=10)
            mine = listener_client_id(raw, waiter)
            code = 0 if meta["result"] == "for the child" and mine != parent_conn else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    # Then the child used a connection of its own, and the parent's still hears its result
    assert os.waitstatus_to_exitcode(status) == 0
    assert listener_client_id(raw, waiter) == parent_conn
    writer.store_result("parent-task", "for the parent", states.SUCCESS)
    assert waiter.wait_for("parent-task", timeout=10)["result"] == "for the parent"
