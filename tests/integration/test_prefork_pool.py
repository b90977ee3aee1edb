"""The prefork pool with real processes dying: crashes, time limits, recycling, stop, idle CPU."""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from chard.exceptions import SoftTimeLimitExceeded
from chard.worker.pools import Job, Outcome, PreforkPool
from chard.worker.pools import prefork as prefork_module
from tests.helpers import wait_for
from tests.unit.test_pools import Collector, run_many

_FORK = multiprocessing.get_context("fork")
#: Opened by the test to release blocked jobs; children inherit it through fork.
GATE: Any = None


def work(payload: Any) -> Any:
    """Do what the payload says; module-level so forked children have it."""
    match payload:
        case "pid":
            return os.getpid()
        case "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        case "exit":
            os._exit(3)
        case "hang":
            threading.Event().wait(30)
        case "block":
            assert GATE.wait(timeout=10)
            return "released"
        case "soft":
            try:
                threading.Event().wait(10)
            except SoftTimeLimitExceeded:
                return "soft limit observed"
            return "not interrupted"
        case "unpicklable":
            return threading.Lock()
    return payload


def fail_to_initialize() -> None:
    raise RuntimeError("cannot reopen the database")


@pytest.fixture
def make_pool() -> Iterator[Any]:
    started: list[PreforkPool] = []

    def make(concurrency: int = 2, **kwargs: Any) -> PreforkPool:
        pool = PreforkPool(work, concurrency, **kwargs)
        pool.start()
        started.append(pool)
        return pool

    yield make
    for pool in started:
        pool.stop(graceful=False)


def submit(pool: PreforkPool, job: Job) -> Outcome:
    collector = Collector()
    collector.wait_for_slot(pool)
    pool.submit(job, collector)
    return collector.wait(1)[0]


def test_child_killed_mid_job_is_reported_lost_and_replaced(make_pool: Any) -> None:
    # Given a pool of one child
    pool = make_pool(1)
    [old_pid] = pool.statistics().pids

    # When the job SIGKILLs its own process
    outcome = submit(pool, Job("doomed", "sigkill"))

    # Then it is lost with the signal as exit code, and a new child takes the next job
    assert (outcome.kind, outcome.exitcode, outcome.pid) == ("lost", -signal.SIGKILL, old_pid)
    new = submit(pool, Job("next", "pid"))
    assert new.kind == "done"
    assert new.value not in (old_pid, None)
    assert pool.statistics().pids == [new.value]


@pytest.mark.parametrize(
    ("signum", "exitcode"),
    [
        (signal.SIGTERM, -signal.SIGKILL),  # children ignore SIGTERM and SIGINT: SIGKILL goes
        (signal.SIGINT, -signal.SIGKILL),
        (signal.SIGKILL, -signal.SIGKILL),
        (signal.SIGUSR1, -signal.SIGUSR1),
    ],
)
def test_terminate_signals_only_the_child_running_that_job(
    make_pool: Any, signum: int, exitcode: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Given two children, each running a job that would run for 30 s
    pool = make_pool(2)
    collector = Collector()
    pool.submit(Job("victim", "hang"), collector)
    pool.submit(Job("bystander", "hang"), collector)

    # When one job is terminated
    with caplog.at_level(logging.INFO, "chard.worker.pools.prefork"):
        assert pool.terminate("victim", signum) is True
        (outcome,) = collector.wait(1)

    # Then its child died of the signal, reported lost (logged as asked for, not as a crash)
    assert (outcome.job.id, outcome.kind, outcome.exitcode) == ("victim", "lost", exitcode)
    (exit_record,) = [r for r in caplog.records if "exited (code" in r.getMessage()]
    assert exit_record.levelno == logging.INFO
    # And the other job runs on, while a new child takes the freed slot
    assert pool.statistics().busy == 1
    assert pool.terminate("no-such-job", signal.SIGKILL) is False
    assert submit(pool, Job("next", "ok")).value == "ok"


def test_child_exiting_mid_job_reports_its_exit_code(make_pool: Any) -> None:
    pool = make_pool(2)

    outcome = submit(pool, Job("quits", "exit"))

    assert (outcome.kind, outcome.exitcode) == ("lost", 3)
    assert len(run_many(pool, [Job(str(i), i) for i in range(10)])) == 10


def test_hard_time_limit_kills_the_child(make_pool: Any) -> None:
    pool = make_pool(2)
    pids = set(pool.statistics().pids)

    outcome = submit(pool, Job("slow", "hang", time_limit=0.2))

    assert (outcome.kind, outcome.exitcode) == ("timeout", -signal.SIGKILL)
    assert outcome.pid in pids
    wait_for(lambda: len(pool.statistics().pids) == 2 and outcome.pid not in pool.statistics().pids)
    assert submit(pool, Job("after", "ok")).value == "ok"


def test_hard_time_limit_is_not_applied_to_fast_jobs(make_pool: Any) -> None:
    pool = make_pool(2)

    outcomes = run_many(pool, [Job(str(i), i, time_limit=5.0) for i in range(50)])

    assert {o.kind for o in outcomes} == {"done"}


def test_soft_time_limit_raises_inside_the_target(make_pool: Any) -> None:
    pool = make_pool(1)
    [pid] = pool.statistics().pids

    outcome = submit(pool, Job("soft", "soft", soft_time_limit=0.1, time_limit=10))

    assert (outcome.kind, outcome.value, outcome.pid) == ("done", "soft limit observed", pid)


def test_max_tasks_per_child_replaces_children(make_pool: Any) -> None:
    pool = make_pool(2, max_tasks_per_child=3)

    outcomes = run_many(pool, [Job(str(i), "pid") for i in range(12)])

    counts: dict[int, int] = {}
    for outcome in outcomes:
        counts[outcome.value] = counts.get(outcome.value, 0) + 1
    assert max(counts.values()) <= 3
    assert len(counts) >= 4
    wait_for(lambda: len(pool.statistics().pids) == 2)


def test_cold_stop_kills_children_and_reports_jobs_lost(make_pool: Any) -> None:
    global GATE
    GATE = _FORK.Event()
    pool = make_pool(2)
    pids = pool.statistics().pids
    collector = Collector()
    pool.submit(Job("running", "block"), collector)

    pool.stop(graceful=False)

    [outcome] = collector.outcomes
    assert (outcome.job.id, outcome.kind, outcome.exitcode) == ("running", "lost", -9)
    assert pool.statistics().pids == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_graceful_stop_timeout_kills_what_is_still_running(make_pool: Any) -> None:
    pool = make_pool(1)
    collector = Collector()
    pool.submit(Job("hung", "hang"), collector)

    pool.stop(graceful=True, timeout=0.1)

    assert [(o.kind, o.exitcode) for o in collector.outcomes] == [("lost", -9)]


def test_idle_child_killed_from_outside_is_replaced(make_pool: Any) -> None:
    pool = make_pool(2)
    victim = pool.statistics().pids[0]

    os.kill(victim, signal.SIGKILL)

    wait_for(lambda: len(pool.statistics().pids) == 2 and victim not in pool.statistics().pids)
    assert len(run_many(pool, [Job(str(i), i) for i in range(4)])) == 4


def test_children_ignore_sigint(make_pool: Any) -> None:
    pool = make_pool(1)
    [pid] = pool.statistics().pids

    os.kill(pid, signal.SIGINT)

    assert submit(pool, Job("still here", "pid")).value == pid


def test_unpicklable_result_is_reported_as_none(make_pool: Any) -> None:
    pool = make_pool(1)
    [pid] = pool.statistics().pids

    outcome = submit(pool, Job("lock", "unpicklable"))

    assert (outcome.kind, outcome.value, outcome.pid) == ("done", None, pid)


def test_failing_initializer_backs_off_instead_of_fork_looping(
    make_pool: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(prefork_module, "RESPAWN_BACKOFF", 0.2)
    with caplog.at_level(logging.WARNING, logger="chard.worker.pools.prefork"):
        make_pool(1, initializer=fail_to_initialize)
        wait_for(lambda: caplog.text.count("exited unexpectedly") >= 2)
    # A tight loop would have forked hundreds of children by now
    assert caplog.text.count("exited unexpectedly") < 10


def test_idle_pool_uses_no_cpu(make_pool: Any) -> None:
    pool = make_pool(2)
    run_many(pool, [Job(str(i), i) for i in range(10)])
    before = resource.getrusage(resource.RUSAGE_SELF)
    children_before = [_cpu_ticks(pid) for pid in pool.statistics().pids]

    threading.Event().wait(1.0)  # the measurement window, not synchronisation

    after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert used < 0.05
    children_after = [_cpu_ticks(pid) for pid in pool.statistics().pids]
    assert all(a - b <= 2 for a, b in zip(children_after, children_before, strict=True))


def _cpu_ticks(pid: int) -> int:
    """Return the user plus system clock ticks ``pid`` has used, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def batch_work(payload: list[Any]) -> list[Any]:
    """A batch target: run each item through ``work``, reporting progress as execute.run does."""
    from chard.worker.pools.base import report_progress

    out = []
    for index, item in enumerate(payload):
        report_progress(index)
        out.append(work(item))
    return out


def test_a_busy_child_takes_one_job_ahead_and_starts_it_when_free(make_pool: Any) -> None:
    global GATE
    GATE = _FORK.Event()
    pool = make_pool(1, queue_ahead=1)
    collector = Collector()

    # Given one child blocked on a job, the pool still offers a slot to queue behind it
    pool.submit(Job("first", "block"), collector)
    assert pool.free_slots() == 1
    pool.submit(Job("second", "pid"), collector)
    assert pool.free_slots() == 0

    # When the first job is released, the queued one runs in the same child
    GATE.set()
    outcomes = collector.wait(2)
    assert [(o.job.id, o.kind) for o in outcomes] == [("first", "done"), ("second", "done")]
    assert outcomes[1].value == outcomes[1].pid


def test_a_job_queued_behind_a_dying_one_is_reported_unstarted(make_pool: Any) -> None:
    pool = make_pool(1, queue_ahead=1)
    collector = Collector()

    pool.submit(Job("killer", "sigkill"), collector)
    pool.submit(Job("innocent", "pid"), collector)

    outcomes = {o.job.id: o for o in collector.wait(2)}
    assert outcomes["killer"].kind == "lost"
    assert outcomes["innocent"].kind == "unstarted"  # to run again, with no death counted


def test_queued_job_hard_limit_counts_from_its_own_start(make_pool: Any) -> None:
    global GATE
    GATE = _FORK.Event()
    pool = make_pool(1, queue_ahead=1)
    collector = Collector()

    # A queued job with a 1 s limit waits 1.5 s behind a blocked one: it must not be killed
    pool.submit(Job("slow-first", "block"), collector)
    pool.submit(Job("limited", "pid", time_limit=1.0), collector)
    threading.Timer(1.5, GATE.set).start()

    outcomes = collector.wait(2, timeout=15)
    assert [(o.job.id, o.kind) for o in outcomes] == [("slow-first", "done"), ("limited", "done")]


def test_a_batch_that_kills_its_child_reports_how_far_it_got() -> None:
    pool = PreforkPool(batch_work, 1)
    pool.start()
    try:
        collector = Collector()
        pool.submit(Job("batch", ["a", "b", "sigkill", "c"]), collector)
        [outcome] = collector.wait(1)
        assert (outcome.kind, outcome.progress) == ("lost", 2)

        pool.submit(Job("batch-ok", ["a", "b"]), collector)
        ok = collector.wait(2)[1]
        assert (ok.kind, ok.value, ok.progress) == ("done", ["a", "b"], None)
    finally:
        pool.stop(graceful=False)


def test_terminate_spares_a_job_queued_behind_and_a_batch_neighbour() -> None:
    # Given a child running a batch (its first message hangs) with a job queued behind it
    pool = PreforkPool(batch_work, 1, queue_ahead=1)
    pool.start()
    try:
        collector = Collector()
        pool.submit(Job("batch", ["hang", "a"]), collector)
        pool.submit(Job("queued", ["pid"]), collector)

        # When a terminate names the queued job, or a batch message that is not running
        assert pool.terminate("queued", signal.SIGKILL) is False
        assert pool.terminate("batch", signal.SIGKILL, item=1) is False
        assert collector.outcomes == []

        # Then only a terminate naming the running message signals the child
        assert pool.terminate("batch", signal.SIGKILL, item=0) is True
        outcomes = {o.job.id: o for o in collector.wait(2)}
        assert (outcomes["batch"].kind, outcomes["batch"].progress) == ("lost", 0)
        assert outcomes["queued"].kind == "unstarted"  # run again elsewhere, uncounted
    finally:
        pool.stop(graceful=False)


def test_a_big_job_waits_in_the_pool_for_a_free_child(make_pool: Any) -> None:
    global GATE
    GATE = _FORK.Event()
    pool = make_pool(1, queue_ahead=1)
    collector = Collector()

    # Given a busy child, and a job too big to queue in its pipe
    pool.submit(Job("first", "block"), collector)
    assert pool.free_slots() == 1
    big = "x" * (prefork_module.AHEAD_MAX_BYTES * 2)

    # When the free slot is used for it, submit accepts it (it waits in the pool)
    pool.submit(Job("big", big), collector)
    assert pool.free_slots() == 0

    # Then it runs as soon as the child is free
    GATE.set()
    outcomes = collector.wait(2)
    assert [(o.job.id, o.kind) for o in outcomes] == [("first", "done"), ("big", "done")]
    assert outcomes[1].value == big
