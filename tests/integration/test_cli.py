"""The ``chard`` command line, run as a subprocess like a user would."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import chard
from chard.exceptions import TimeLimitExceeded
from chard.worker.worker import expand_hostname
from tests.helpers import wait_for
from tests.integration.workers import WorkerFactory, run_cli

pytestmark = pytest.mark.slow


def test_version(tmp_path: Path) -> None:
    done = run_cli(["--version"], {}, tmp_path)
    assert done.returncode == 0
    assert chard.__version__ in done.stdout


def test_call_result_and_purge(
    itproj: Any, workers: WorkerFactory, transport: dict[str, str], tmp_path: Path
) -> None:
    # call: sends by name and prints the id; result: prints the value once a worker ran it
    sent = run_cli(
        ["-A", "itproj", "call", "itproj.tasks.add", "--args=[2, 2]"], transport, tmp_path
    )
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    pending = run_cli(["-A", "itproj", "result", task_id], transport, tmp_path)
    assert pending.returncode == 1
    assert "PENDING" in pending.stderr
    workers.start("-c", "1")
    assert itproj.AsyncResult(task_id).get(timeout=10) == 4
    shown = run_cli(["-A", "itproj", "result", task_id], transport, tmp_path)
    assert shown.stdout.strip() == "4"

    # purge -f: deletes what waits in the queue (no worker consumes "idle")
    for _ in range(3):
        run_cli(
            ["-A", "itproj", "call", "itproj.tasks.add", "--args=[1, 1]", "-Q", "idle"],
            transport,
            tmp_path,
        )
    purged = run_cli(["-A", "itproj", "purge", "-f", "-Q", "idle"], transport, tmp_path)
    assert "Purged 3 messages" in purged.stdout
    assert itproj.broker.queue_size("idle") == 0


def test_bad_app_and_bad_arguments_say_what_to_do(tmp_path: Path) -> None:
    missing = run_cli(["-A", "no_such_project", "worker"], {}, tmp_path)
    assert missing.returncode != 0
    assert "cannot import 'no_such_project'" in missing.stderr

    (tmp_path / "plain.py").write_text("x = 1\n")
    no_app = run_cli(["-A", "plain", "worker"], {"PYTHONPATH": str(tmp_path)}, tmp_path)
    assert "no chard/Celery app found in 'plain'" in no_app.stderr
    assert "-A plain:app" in no_app.stderr

    bad_args = run_cli(["-A", "itproj", "call", "itproj.tasks.add", "--args=[1,"], {}, tmp_path)
    assert "--args must be JSON" in bad_args.stderr


def test_unknown_broker_scheme_lists_the_supported_ones(tmp_path: Path) -> None:
    done = run_cli(["-A", "itproj", "-b", "kafka://localhost", "purge", "-f"], {}, tmp_path)
    assert done.returncode != 0
    assert "unknown broker URL scheme 'kafka'" in done.stderr
    assert "redis://" in done.stderr
    assert "sqlite://" in done.stderr


@pytest.mark.usefixtures("itproj")
def test_logfile_and_pidfile(workers: WorkerFactory, tmp_path: Path) -> None:
    logfile, pidfile = tmp_path / "w.log", tmp_path / "w.pid"
    worker = workers.start("--logfile", str(logfile), "--pidfile", str(pidfile), ready=False)
    wait_for(lambda: logfile.exists() and "ready." in logfile.read_text(), timeout=15)
    assert int(pidfile.read_text()) == worker.pid
    assert worker.stop() == 0
    assert not pidfile.exists()


def _tree_cpu_seconds(pid: int) -> float:
    """CPU time (user+system) of ``pid`` and its children, from /proc."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


@pytest.mark.usefixtures("itproj")
def test_idle_worker_uses_almost_no_cpu(workers: WorkerFactory) -> None:
    worker = workers.start("-c", "2")
    before, started = _tree_cpu_seconds(worker.pid), time.monotonic()
    time.sleep(3.0)  # measuring idleness over a span of time is the point here
    used = _tree_cpu_seconds(worker.pid) - before
    elapsed = time.monotonic() - started
    assert used / elapsed < 0.05, f"idle worker used {used:.3f}s CPU in {elapsed:.1f}s"


def test_cold_shutdown_returns_running_tasks(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a worker in the middle of a long task
    worker = workers.start("-c", "1")
    from itproj.tasks import sleep_then_mark

    marker = tmp_path / "cold"
    result = sleep_then_mark.delay(3, str(marker))
    worker.wait_for_log(f"[{result.id}] received")

    # When Ctrl-C arrives twice (warm, then cold)
    worker.signal(signal.SIGINT)
    worker.wait_for_log("Warm shutdown")
    worker.signal(signal.SIGINT)
    worker.wait_for_log("Cold shutdown")
    worker.proc.wait(timeout=15)

    # Then the interrupted task was returned, not lost, and runs on the next worker
    assert not marker.exists()
    workers.start("-c", "1")
    assert result.get(timeout=20) == 3


def test_celerys_worker_flags_purge_limit_and_fair(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    from itproj.tasks import add, block_until

    # Given three tasks waiting before the worker starts
    stale = [add.delay(1, 1) for _ in range(3)]
    assert itproj.broker.queue_size("celery") == 3

    # When a worker starts with Celery's flags
    worker = workers.start(
        "-c", "1", "-n", "flags1@%h", "--purge", "--time-limit", "1", "-O", "fair",
        "--without-mingle", "--without-gossip",
    )  # fmt: skip

    # Then --purge dropped them before consuming, and said so
    assert "Purged 3 messages from 1 queue(s)." in worker.log.read_text()
    assert itproj.broker.queue_size("celery") == 0
    assert all(r.state == "PENDING" for r in stale)
    # --time-limit is every task's hard limit (block_until would wait 30 s)
    with pytest.raises(TimeLimitExceeded):
        block_until.delay(str(tmp_path / "never"), 30).get(timeout=30)
    # -O fair leases one message per child
    node = expand_hostname("flags1@%h")
    stats = itproj.control.inspect(destination=[node], timeout=10).stats()
    assert stats is not None
    assert stats[node]["prefetch_count"] == 1
