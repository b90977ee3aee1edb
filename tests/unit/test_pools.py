"""Execution pools of one process: results, concurrency, resize, stop and statistics.

The prefork node (child processes that consume, killed for hard time limits) is tested
through real workers in tests/integration/test_prefork_supervisor.py.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from chard.exceptions import ImproperlyConfigured, SoftTimeLimitExceeded
from chard.worker.pools import Job, Outcome, Pool, PoolStats, create_pool
from chard.worker.pools.solo import SoloPool
from tests.helpers import wait_for

#: Set by a test before its pool starts.
BARRIER: Any = None
#: Jobs that block wait on this until the test sets it (an Event, threading or multiprocessing).
GATE: Any = None


def echo(payload: Any) -> Any:
    return payload


def whoami(payload: Any) -> int:
    """Return the process id, or the thread ident for in-process pools."""
    return os.getpid() if payload == "pid" else threading.get_ident()


def meet(payload: Any) -> str:
    """Return once every job of the test runs at the same time (BARRIER's party count)."""
    BARRIER.wait(timeout=10)
    return "met"


def block(payload: Any) -> Any:
    """Return ``payload`` once the test opens GATE."""
    assert GATE.wait(timeout=10)
    return payload


def explode(payload: Any) -> Any:
    raise RuntimeError(f"boom {payload}")


def catch_soft_limit(payload: Any) -> str:
    try:
        threading.Event().wait(10)
    except SoftTimeLimitExceeded:
        return "soft"
    return "not interrupted"


class Collector:
    """An ``on_done`` callback that records outcomes and lets the test wait for them."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self._cond = threading.Condition()

    def __call__(self, outcome: Outcome) -> None:
        with self._cond:
            self.outcomes.append(outcome)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[Outcome]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.outcomes) >= count, timeout), (
                f"got {len(self.outcomes)} of {count} outcomes: {self.outcomes}"
            )
            return list(self.outcomes)

    def wait_for_slot(self, pool: Pool, timeout: float = 10.0) -> None:
        """Wait until ``pool`` has a free slot; slots free up just before on_done runs."""
        with self._cond:
            assert self._cond.wait_for(lambda: pool.free_slots() > 0, timeout), "no free slot"


def start_pool(kind: str, target: Any, concurrency: int, **kwargs: Any) -> Pool:
    pool = create_pool(kind, target, concurrency, **kwargs)
    pool.start()
    return pool


@pytest.fixture
def pools() -> Iterator[list[Pool]]:
    """Collect pools a test starts, and cold-stop any it leaves running."""
    started: list[Pool] = []
    yield started
    for pool in started:
        pool.stop(graceful=False)


def run_many(pool: Pool, jobs: list[Job]) -> list[Outcome]:
    """Submit every job as soon as a slot is free, the way the consumer will, and wait for all."""
    collector = Collector()
    for job in jobs:
        collector.wait_for_slot(pool)
        pool.submit(job, collector)
    return collector.wait(len(jobs))


@pytest.mark.parametrize("kind", ["threads", "solo"])
def test_in_process_pools_cannot_terminate_a_job_and_say_so(
    kind: str, pools: list[Pool], caplog: pytest.LogCaptureFixture
) -> None:
    pool = start_pool(kind, echo, 1)
    pools.append(pool)

    assert pool.terminate("job-1", signal.SIGKILL) is False
    assert f"the {kind} pool cannot terminate job job-1" in caplog.text


def test_create_pool_names_the_kinds_when_unknown() -> None:
    with pytest.raises(
        ImproperlyConfigured,
        match="unknown pool 'greenlets'; choose one of: prefork, gevent, solo, threads",
    ):
        create_pool("greenlets", echo, 1)


def test_eventlet_is_refused_with_the_reason() -> None:
    with pytest.raises(ImproperlyConfigured, match="eventlet is deprecated by its maintainers"):
        create_pool("eventlet", echo, 1)


@pytest.mark.parametrize("concurrency", [0, -1])
def test_concurrency_must_be_positive(concurrency: int) -> None:
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        create_pool("threads", echo, concurrency)


def test_solo_pool_refuses_more_than_one_slot() -> None:
    with pytest.raises(ValueError, match="use the threads or prefork pool"):
        create_pool("solo", echo, 4)


@pytest.mark.parametrize(("kind", "concurrency"), [("solo", 1), ("threads", 4)])
def test_many_jobs_return_their_values(kind: str, concurrency: int, pools: list[Pool]) -> None:
    # Given a started pool
    pool = start_pool(kind, echo, concurrency)
    pools.append(pool)

    # When 200 jobs run
    outcomes = run_many(pool, [Job(str(i), i) for i in range(200)])

    # Then each job reports its own value, once
    assert sorted(o.value for o in outcomes) == list(range(200))
    assert all(o.kind == "done" and o.value == int(o.job.id) for o in outcomes)
    assert pool.statistics().processed == 200


@pytest.mark.parametrize("kind", ["threads"])
def test_concurrency_is_honoured(kind: str, pools: list[Pool]) -> None:
    global BARRIER
    # Given a pool of 3 and a barrier that only opens when 3 jobs run at once
    BARRIER = threading.Barrier(3)
    pool = start_pool(kind, meet, 3)
    pools.append(pool)
    collector = Collector()

    # When 3 jobs are submitted
    for i in range(3):
        pool.submit(Job(str(i), None), collector)

    # Then the pool is full, and all three meet at the barrier
    assert pool.free_slots() == 0
    with pytest.raises(RuntimeError, match="no free slot for job 'extra'"):
        pool.submit(Job("extra", None), collector)
    assert [o.value for o in collector.wait(3)] == ["met"] * 3
    wait_for(lambda: pool.free_slots() == 3)


@pytest.mark.parametrize("kind", ["solo", "threads"])
def test_target_that_raises_reports_done_with_none(
    kind: str, pools: list[Pool], caplog: pytest.LogCaptureFixture
) -> None:
    pool = start_pool(kind, explode, 1)
    pools.append(pool)
    collector = Collector()

    pool.submit(Job("bad", 1), collector)

    [outcome] = collector.wait(1)
    assert (outcome.kind, outcome.value) == ("done", None)
    # The pool still works afterwards
    pool.submit(Job("bad-again", 2), collector)
    second = collector.wait(2)[1]
    assert second.kind == "done"
    assert "pool target raised for job bad" in caplog.text


@pytest.mark.parametrize("kind", ["threads"])
def test_resize_grows_and_shrinks(kind: str, pools: list[Pool]) -> None:
    pool = start_pool(kind, echo, 2)
    pools.append(pool)

    pool.resize(4)
    assert pool.free_slots() == 4
    wait_for(lambda: len(pool.statistics().pids) == 4)
    assert run_many(pool, [Job(str(i), i) for i in range(20)])

    pool.resize(1)
    assert pool.free_slots() == 1
    wait_for(lambda: len(pool.statistics().pids) == 1)
    assert pool.statistics().concurrency == 1
    assert len(run_many(pool, [Job(str(i), i) for i in range(5)])) == 5


@pytest.mark.parametrize("kind", ["threads"])
def test_shrinking_lets_busy_workers_finish(kind: str, pools: list[Pool]) -> None:
    global GATE
    # Given two busy workers
    GATE = threading.Event()
    pool = start_pool(kind, block, 2)
    pools.append(pool)
    collector = Collector()
    pool.submit(Job("a", "a"), collector)
    pool.submit(Job("b", "b"), collector)

    # When the pool shrinks to one
    pool.resize(1)

    # Then no slot frees up until both jobs finish, and both report done
    assert pool.free_slots() == 0
    GATE.set()
    assert sorted(o.value for o in collector.wait(2)) == ["a", "b"]
    wait_for(lambda: pool.free_slots() == 1 and len(pool.statistics().pids) == 1)


@pytest.mark.parametrize("kind", ["solo", "threads"])
def test_submit_from_on_done(kind: str, pools: list[Pool]) -> None:
    pool = start_pool(kind, echo, 1)
    pools.append(pool)
    collector = Collector()

    def on_done(outcome: Outcome) -> None:
        collector(outcome)
        if outcome.value < 3:
            pool.submit(Job(str(outcome.value + 1), outcome.value + 1), on_done)

    pool.submit(Job("0", 0), on_done)

    assert [o.value for o in collector.wait(4)] == [0, 1, 2, 3]


@pytest.mark.parametrize("kind", ["threads"])
def test_graceful_stop_waits_for_running_jobs(kind: str) -> None:
    global GATE
    GATE = threading.Event()
    pool = start_pool(kind, block, 2)
    collector = Collector()
    pool.submit(Job("slow", "slow"), collector)

    # When stop() runs in another thread while the job blocks
    stopper = threading.Thread(target=pool.stop)
    stopper.start()
    wait_for(lambda: pool.free_slots() == 0)  # stopping: no new jobs
    assert stopper.is_alive()
    assert collector.outcomes == []

    # Then it returns only after the job finished and reported done
    GATE.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert [(o.kind, o.value) for o in collector.outcomes] == [("done", "slow")]
    assert pool.statistics().pids == []


def test_threads_cold_stop_reports_running_jobs_lost() -> None:
    global GATE
    GATE = threading.Event()
    pool = start_pool("threads", block, 2)
    collector = Collector()
    pool.submit(Job("stuck", "stuck"), collector)

    pool.stop(graceful=False)

    [outcome] = collector.outcomes
    assert (outcome.job.id, outcome.kind) == ("stuck", "lost")
    GATE.set()  # the abandoned thread finishes; its result is dropped, not reported twice
    wait_for(lambda: pool.statistics().pids == [])
    assert len(collector.outcomes) == 1


def test_graceful_stop_timeout_abandons_jobs() -> None:
    global GATE
    GATE = threading.Event()
    pool = start_pool("threads", block, 1)
    collector = Collector()
    pool.submit(Job("stuck", "stuck"), collector)

    pool.stop(graceful=True, timeout=0.05)

    assert [o.kind for o in collector.outcomes] == ["lost"]
    GATE.set()


@pytest.mark.parametrize("kind", ["solo", "threads"])
def test_submit_after_stop_raises(kind: str) -> None:
    pool = start_pool(kind, echo, 1)
    pool.stop()

    assert pool.free_slots() == 0
    with pytest.raises(RuntimeError):
        pool.submit(Job("late", 1), Collector())
    pool.stop()  # idempotent


def test_initializer_runs_in_each_thread(pools: list[Pool]) -> None:
    pool = start_pool("threads", initialized_by, 2, initializer=record_initializer)
    pools.append(pool)

    outcomes = run_many(pool, [Job(str(i), "thread") for i in range(20)])

    assert all(o.value is True for o in outcomes)


#: Where record_initializer notes which process or thread it ran in.
_INITIALIZED: set[int] = set()


def record_initializer() -> None:
    _INITIALIZED.add(os.getpid())
    _INITIALIZED.add(threading.get_ident())


def initialized_by(payload: str) -> bool:
    return (os.getpid() if payload == "pid" else threading.get_ident()) in _INITIALIZED


def test_solo_runs_jobs_inline_and_calls_on_done_before_returning() -> None:
    pool = SoloPool(whoami, 1)
    pool.start()
    collector = Collector()

    pool.submit(Job("1", "thread"), collector)

    [outcome] = collector.outcomes
    assert outcome.value == outcome.pid == threading.get_ident()
    assert pool.statistics() == PoolStats("solo", 1, 0, 1, [threading.get_ident()])


def test_solo_soft_time_limit_raises_inside_the_target() -> None:
    pool = SoloPool(catch_soft_limit, 1)
    pool.start()
    collector = Collector()

    pool.submit(Job("1", None, soft_time_limit=0.05), collector)

    assert collector.outcomes[0].value == "soft"


def test_solo_warns_once_about_hard_time_limits(caplog: pytest.LogCaptureFixture) -> None:
    pool = SoloPool(echo, 1)
    pool.start()

    with caplog.at_level(logging.WARNING):
        for i in range(3):
            pool.submit(Job(str(i), i, time_limit=1.0), Collector())

    assert caplog.text.count("does not support hard time limits") == 1


def test_threads_warn_once_about_time_limits(
    pools: list[Pool], caplog: pytest.LogCaptureFixture
) -> None:
    pool = start_pool("threads", echo, 2)
    pools.append(pool)

    with caplog.at_level(logging.WARNING):
        run_many(pool, [Job(str(i), i, soft_time_limit=1.0) for i in range(5)])

    assert caplog.text.count("does not support time limits") == 1


@pytest.mark.parametrize("kind", ["threads"])
def test_statistics_count_busy_and_processed(kind: str, pools: list[Pool]) -> None:
    global GATE
    GATE = threading.Event()
    pool = start_pool(kind, block, 2)
    pools.append(pool)
    collector = Collector()

    pool.submit(Job("1", 1), collector)
    stats = pool.statistics()
    assert (stats.kind, stats.concurrency, stats.busy, stats.processed) == (kind, 2, 1, 0)
    assert len(stats.pids) == 2

    GATE.set()
    collector.wait(1)
    wait_for(lambda: pool.statistics().processed == 1)
    assert pool.statistics().busy == 0
