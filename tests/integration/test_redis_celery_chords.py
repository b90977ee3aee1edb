"""Celery's chord bookkeeping on the Redis backend (a mixed fleet), key by key.

That Celery's own workers and clients agree with it is proven end to end in
tests/integration/test_mixed_fleet.py; here, the rules a redelivery relies on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from chard import Celery, chord, states
from chard.backends.redis import RedisResultBackend
from chard.exceptions import ImproperlyConfigured
from tests.helpers import REDIS_DB, REDIS_HOST, REDIS_PORT, redis_url

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix() -> str:
    return redis_url().split("global_keyprefix=", 1)[1]


@pytest.fixture
def raw(prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    yield client
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def backend(prefix: str, raw: redis.Redis) -> Iterator[RedisResultBackend]:
    opened = RedisResultBackend(redis_url(prefix), expires=600)
    yield opened
    opened.close()


def group_key(prefix: str, suffix: str) -> str:
    return f"{prefix}_celery-taskset-meta-g1{suffix}"


def test_each_member_counts_once_and_the_last_claims_the_join(
    backend: RedisResultBackend, raw: redis.Redis, prefix: str
) -> None:
    backend.set_chord_size("g1", 2)
    assert raw.get(group_key(prefix, ".s")) == b"2"
    assert backend.celery_chord_part("g1", "t1", states.SUCCESS, 10, 1) is None
    # a redelivered member (same id and index) is not counted again
    assert backend.celery_chord_part("g1", "t1", states.SUCCESS, 10, 1) is None
    assert raw.zcard(group_key(prefix, ".j")) == 1
    join = backend.celery_chord_part("g1", "t0", states.FAILURE, ValueError("no"), 0)
    assert join is not None
    failure = {"exc_type": "ValueError", "exc_message": ["no"], "exc_module": "builtins"}
    assert join.members == [("t0", states.FAILURE, failure), ("t1", states.SUCCESS, 10)]
    # Celery's member encoding: [1, id, state, result] scored by group_index
    members = raw.zrange(group_key(prefix, ".j"), 0, -1, withscores=True)
    assert [(json.loads(m), score) for m, score in members][1] == ([1, "t1", "SUCCESS", 10], 1)
    # claimed once: the same end arriving again does not claim it a second time
    assert backend.celery_chord_part("g1", "t0", states.FAILURE, ValueError("no"), 0) is None
    backend.celery_chord_done(join)
    assert raw.get(group_key(prefix, ".c")) == b"done"
    assert not raw.exists(*(group_key(prefix, s) for s in (".j", ".t", ".s", ".d")))
    # a late duplicate after the join neither re-creates the chord nor claims it
    assert backend.celery_chord_part("g1", "t1", states.SUCCESS, 10, 1) is None
    assert not raw.exists(group_key(prefix, ".j"))


def test_members_added_later_count_too(
    backend: RedisResultBackend, raw: redis.Redis, prefix: str
) -> None:
    backend.set_chord_size("g1", 1)
    raw.incr(group_key(prefix, ".t"))  # Celery's add_to_chord
    assert backend.celery_chord_part("g1", "t0", states.SUCCESS, 1, 0) is None
    join = backend.celery_chord_part("g1", "t1", states.SUCCESS, 2, None)  # index: +inf
    assert join is not None
    assert [m[2] for m in join.members] == [1, 2]


def test_compat_chords_need_the_redis_backend() -> None:
    app = Celery("compat", broker="memory://", backend="memory://", set_as_current=False)
    app.conf.chard_celery_compat = True
    add = app.task(name="add")(lambda x, y: x + y)
    with pytest.raises(ImproperlyConfigured, match="use a redis:// result backend"):
        chord([add.s(1, 1)], add.s(1)).apply_async()
    with pytest.raises(NotImplementedError, match="a mixed Celery/chard fleet shares a redis"):
        app.control.revoke("some-id")
