"""Redis-specific result backend behaviour: Celery's keys, SET+PUBLISH, pub/sub wake-ups."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from chard import states
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


def test_a_store_between_read_and_wait_is_not_missed(
    make_backend: Callable[..., RedisResultBackend],
) -> None:
    # Given a waiter that has read "pending" and subscribed (the first wait only subscribes)
    backend = make_backend()
    key = backend.task_key("t3")
    assert backend.get_task_meta("t3")["status"] == states.PENDING
    started = time.monotonic()
    backend._wait_for_change([key], timeout=2)
    assert time.monotonic() - started < 0.5

    # When the result is stored before the waiter waits again
    make_backend().store_result("t3", 3, states.SUCCESS)

    # Then the next wait returns at once instead of sleeping out its timeout
    started = time.monotonic()
    backend._wait_for_change([key], timeout=2)
    assert time.monotonic() - started < 0.5


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
