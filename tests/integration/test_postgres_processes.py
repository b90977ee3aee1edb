"""PostgreSQL as broker and result backend across real processes (issue 16).

CLI workers run the test project (``itproj``) with both URLs on one PostgreSQL schema of
the test's own: a round trip, a SIGKILLed node's tasks finishing elsewhere, a slow task
running once, an idle worker that sends no query at all, and a publish that wakes a
consumer in another process within milliseconds (LISTEN/NOTIFY, not polling).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chard.brokers.base import OutgoingMessage
from chard.brokers.postgres import PostgresBroker
from tests.helpers import POSTGRES_DB, POSTGRES_HOST, POSTGRES_PORT, wait_for
from tests.integration.workers import WorkerFactory

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
#: How long the idle worker is watched.
IDLE_WINDOW = 4.0


@pytest.fixture
def transport(postgres_transport: dict[str, str]) -> dict[str, str]:
    """Point ``itproj`` and ``workers`` (see conftest) at PostgreSQL for every test here."""
    return postgres_transport


def test_a_task_runs_and_its_result_returns(itproj: Any, workers: WorkerFactory) -> None:
    workers.start("-c", "2")
    from itproj.tasks import add

    results = [add.delay(i, i) for i in range(20)]

    assert [r.get(timeout=20) for r in results] == [2 * i for i in range(20)]


def test_a_sigkilled_workers_tasks_run_elsewhere(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a worker holding a running task and prefetched ones
    first = workers.start("-c", "2")
    from itproj.tasks import sleep_then_mark

    marker = tmp_path / "runs"
    results = [sleep_then_mark.delay(0.5, str(marker)) for _ in range(8)]
    wait_for(lambda: "received" in first.output(), timeout=10)

    # When the whole node is SIGKILLed and another worker starts
    first.kill_group()
    workers.start("-c", "2")

    # Then every task completes: the dead node's leases lapse, the rows are leased again
    for result in results:
        assert result.get(timeout=40) == 0.5
    assert len(marker.read_text().splitlines()) >= 8


@pytest.mark.slow
def test_a_slow_task_runs_once_on_a_healthy_worker(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # A task longer than its lease (10 s) runs once: the heartbeat keeps extending it
    worker = workers.start("-c", "2")
    from itproj.tasks import sleep_then_mark

    marker = tmp_path / "once"
    result = sleep_then_mark.delay(12, str(marker))
    assert result.get(timeout=40) == 12
    assert len(marker.read_text().splitlines()) == 1
    assert worker.output().count(f"[{result.id}] received") == 1


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_an_idle_worker_sends_no_queries(itproj: Any, workers: WorkerFactory) -> None:
    # Given a prefork worker (2 children) that has run a task and gone idle; its worker
    # events (a heartbeat broadcast every 2 s, as Celery's) are off: consuming is under test
    worker = workers.start("-c", "2", "--without-heartbeat")
    from itproj.tasks import add

    assert add.delay(1, 2).get(timeout=20) == 3
    pids = _process_tree(worker.pid)
    wait_for(lambda: len(_sessions(pids)) >= 2, timeout=10)  # its database and its listener
    # The task's result, its ack (it may follow the result by a fetch, tens of ms later)
    # and the next fetch have settled once two looks half a second apart see the same
    # idle sessions
    looks: list[dict[str, tuple[int, Any, str]]] = [{}]

    def settled() -> bool:
        now = _sessions(pids)
        same = now == looks[-1] and all(s[2] == "idle" for s in now.values())
        looks.append(now)
        return same

    wait_for(settled, timeout=30, interval=0.5)

    # When it is watched for a few seconds
    before, cpu_before, started = _sessions(pids), _cpu_seconds(pids), time.monotonic()
    time.sleep(IDLE_WINDOW)  # a measurement window, not a synchronisation
    after, cpu_after, elapsed = _sessions(pids), _cpu_seconds(pids), time.monotonic() - started

    # Then none of its sessions started a query, and its processes barely used the CPU
    queried = {
        app: after[app][1] for app in after if before.get(app, (None, None))[1] != after[app][1]
    }
    cpu_share = (cpu_after - cpu_before) / elapsed
    print(
        f"\nidle worker: {len(after)} PostgreSQL sessions, {len(queried)} started a query in "
        f"{elapsed:.1f}s; CPU {cpu_share:.2%} of one core for {len(pids)} processes"
    )
    assert worker.proc.poll() is None
    assert queried == {}, f"an idle worker queried: {queried}"
    assert cpu_share < 0.05

    # And a task sent now is still picked up at once (woken, not polled)
    sent = time.monotonic()
    assert add.delay(2, 2).get(timeout=20) == 4
    print(f"round trip on the idle worker: {(time.monotonic() - sent) * 1000:.1f} ms")


def test_sessions_ended_mid_drain_lose_nothing(itproj: Any, workers: WorkerFactory) -> None:
    # Given a worker draining 300 tasks whose results this process waits for
    worker = workers.start("-c", "2")
    from itproj.tasks import add

    results = [add.delay(i, 1) for i in range(300)]
    pids = _process_tree(worker.pid) | {os.getpid()}

    # When the server ends every session of the worker and of this client, three times
    # while they work (what a database restart does to its clients)
    ended = 0
    for done in (30, 120, 210):
        wait_for(lambda n=done: sum(r.ready() for r in results) >= n, timeout=60)
        ended += _terminate_sessions(pids)
    assert ended >= 6  # each time at least the worker's database and listening sessions

    # Then every task ran and every result came back, with the right value
    assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(300)]
    assert worker.proc.poll() is None
    print(
        f"\nended {ended} sessions; the worker logged:",
        *[line for line in worker.output().splitlines() if "WARNING" in line or "ERROR" in line],
        sep="\n",
    )


CHILD = r"""
import json, sys, time
from chard.brokers.postgres import PostgresBroker

url, rounds = sys.argv[1], int(sys.argv[2])
broker = PostgresBroker(url)
broker.fetch(["wake"], 1, 0.01)  # warm: connected, listening
for i in range(rounds):
    print(json.dumps({"waiting": i}), flush=True)
    (d,) = broker.fetch(["wake"], 1, 30.0)
    print(json.dumps({"received_at": time.time(), "body": d.body.decode()}), flush=True)
    d.ack()
broker.close()
"""


@pytest.fixture
def consumer(postgres_transport: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    url = postgres_transport["CHARD_BROKER_URL"]
    PostgresBroker(url).close()  # the tables exist before the child looks
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, "3"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    yield child
    if child.poll() is None:
        child.kill()
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_publish_wakes_a_consumer_in_another_process_within_milliseconds(
    consumer: subprocess.Popen[str], postgres_transport: dict[str, str]
) -> None:
    latencies = []
    with PostgresBroker(postgres_transport["CHARD_BROKER_URL"]) as broker:
        for i in range(3):
            # Given the consumer blocked in a fetch with a 30 s timeout
            assert _report(consumer) == {"waiting": i}
            wait_for(lambda: _process_state(consumer.pid) == "S", timeout=10.0, interval=0.005)

            # When a message is published
            sent = time.time()
            broker.publish(OutgoingMessage("wake", f"w{i}".encode()))

            # Then it arrives long before any poll would have found it
            report = _report(consumer)
            assert report["body"] == f"w{i}"
            latencies.append(report["received_at"] - sent)
    print(
        f"\npublish to a consumer in another process: {[f'{x * 1000:.1f} ms' for x in latencies]}"
    )
    assert max(latencies) < 0.25, latencies


# -- helpers ---------------------------------------------------------------------------------


def _report(child: subprocess.Popen[str]) -> dict[str, Any]:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, f"child exited with {child.wait()} before reporting"
    report: dict[str, Any] = json.loads(line)
    return report


def _process_tree(pid: int) -> set[int]:
    """Return ``pid`` and its descendants (from /proc's children lists)."""
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            todo.extend(int(child) for child in task.read_text().split())
    return found


def _sessions(pids: set[int]) -> dict[str, tuple[int, Any, str]]:
    """Return ``name/pid -> (backend pid, query_start, state)`` of the sessions of ``pids``."""
    import psycopg

    conninfo = f"postgresql://{POSTGRES_HOST}:{POSTGRES_PORT}/{POSTGRES_DB}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, pid, query_start, state FROM pg_stat_activity"
            " WHERE application_name LIKE 'chard-%%'"
        ).fetchall()
    return {
        f"{app}/{pid}": (pid, start, state)
        for app, pid, start, state in rows
        if int(app.rpartition("-")[2]) in pids
    }


def _terminate_sessions(pids: set[int]) -> int:
    """End the PostgreSQL sessions of ``pids`` (by their ``chard-…-<pid>`` names); count them."""
    import psycopg

    conninfo = f"postgresql://{POSTGRES_HOST}:{POSTGRES_PORT}/{POSTGRES_DB}"
    names = [f"%-{pid}" for pid in pids]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE 'chard-%%' AND application_name LIKE ANY(%s)",
            (names,),
        ).fetchall()
    return len(rows)


def _cpu_seconds(pids: set[int]) -> float:
    """Return the CPU time (user + system) the live processes among ``pids`` have used."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _process_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0]
