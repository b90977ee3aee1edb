"""``--autoscale`` (issue 12): the decision, its cool-down, and what control commands call.

The decision is driven with a fake clock; real children growing and shrinking under a
burst are in tests/integration/test_autoscale.py.
"""

from __future__ import annotations

import pytest

from chard import Celery
from chard.exceptions import ImproperlyConfigured
from chard.worker.autoscale import Autoscaler, parse_autoscale
from chard.worker.worker import Worker


class FakePool:
    """Stands in for the supervisor: a size, a busy count and the resizes asked for."""

    def __init__(self, size: int) -> None:
        self._size = size
        self.busy_now = 0
        self.resizes: list[int] = []

    @property
    def size(self) -> int:
        return self._size

    def busy(self) -> int:
        return self.busy_now

    def resize(self, concurrency: int) -> None:
        self.resizes.append(concurrency)
        self._size = concurrency


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scaler(pool: FakePool, waiting: list[int], clock: Clock, keepalive: float = 30.0) -> Autoscaler:
    return Autoscaler(pool, lambda: waiting[0], 8, 2, keepalive=keepalive, clock=clock)


def test_grows_at_once_to_the_demand_capped_at_max() -> None:
    pool, clock, waiting = FakePool(2), Clock(), [0]
    autoscaler = scaler(pool, waiting, clock)

    pool.busy_now, waiting[0] = 2, 3
    autoscaler.tick()
    assert pool.size == 5

    waiting[0] = 50
    autoscaler.tick()
    assert pool.resizes == [5, 8]


def test_shrinks_to_min_only_after_the_cool_down() -> None:
    pool, clock, waiting = FakePool(2), Clock(), [0]
    autoscaler = scaler(pool, waiting, clock, keepalive=30.0)
    pool.busy_now, waiting[0] = 8, 10
    autoscaler.tick()
    assert pool.size == 8

    # When the burst is over
    pool.busy_now, waiting[0] = 0, 0
    clock.now += 29
    autoscaler.tick()
    assert pool.size == 8  # still cooling down

    clock.now += 2
    autoscaler.tick()
    assert pool.size == 2


def test_demand_during_the_cool_down_restarts_it() -> None:
    pool, clock, waiting = FakePool(8), Clock(), [0]
    autoscaler = scaler(pool, waiting, clock, keepalive=10.0)
    clock.now += 9
    pool.busy_now = 8
    autoscaler.tick()  # needed again
    pool.busy_now = 0
    clock.now += 9
    autoscaler.tick()
    assert pool.size == 8


def test_update_and_forced_scaling_are_what_control_commands_call() -> None:
    pool, clock, waiting = FakePool(2), Clock(), [0]
    autoscaler = scaler(pool, waiting, clock)

    assert autoscaler.update(max=4, min=1) == (4, 1)
    autoscaler.force_scale_up(5)
    assert (pool.size, autoscaler.max_concurrency) == (7, 7)
    autoscaler.force_scale_down(10)
    assert (pool.size, autoscaler.min_concurrency) == (1, 1)
    with pytest.raises(ValueError, match="needs max >= min"):
        autoscaler.update(max=1, min=3)


@pytest.mark.parametrize(
    ("value", "bounds"), [("10,3", (10, 3)), ("4, 0", (4, 0)), ((6, 2), (6, 2))]
)
def test_parse_autoscale(value: str | tuple[int, int], bounds: tuple[int, int]) -> None:
    assert parse_autoscale(value) == bounds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("8", "malformed autoscale value '8'"),
        ("a,b", "malformed autoscale value 'a,b'"),
        ("1,2,3", "malformed"),
        ("2,8", "autoscale value '2,8' needs max >= min"),
        ("0,0", "needs max >= min >= 0 and max >= 1"),
    ],
)
def test_malformed_autoscale_names_the_value(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_autoscale(value)


def test_the_settings_size_a_node_as_the_options_do(app: Celery) -> None:
    app.conf.update(worker_autoscale=(6, 2), worker_max_memory_per_child=512_000)

    worker = Worker(app)

    assert (worker.autoscale, worker.concurrency, worker.max_memory_per_child) == (
        (6, 2),
        2,
        512_000,
    )
    assert ".> concurrency: {min=2, max=6} (prefork)" in worker.banner()


def test_a_bad_autoscale_setting_or_pool_names_the_value(app: Celery) -> None:
    app.conf.worker_autoscale = "8"
    with pytest.raises(ImproperlyConfigured, match="malformed autoscale value '8'"):
        Worker(app)
    app.conf.worker_autoscale = None
    with pytest.raises(ImproperlyConfigured, match="unknown pool 'bogus'"):
        Worker(app, pool="bogus")
    with pytest.raises(ImproperlyConfigured, match="--autoscale needs the prefork pool"):
        Worker(app, pool="threads", autoscale="4,2")
