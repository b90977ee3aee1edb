"""``-P gevent`` (issue 12): many I/O-bound tasks at once in one process, soft limits, warm stop."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import IN_CI, wait_for
from tests.integration.workers import WorkerFactory

if not IN_CI:  # the dev extra installs it: under CI a missing gevent is a failure
    pytest.importorskip("gevent")


def test_two_hundred_sleeping_tasks_run_at_once_on_c_200(
    itproj: Any, workers: WorkerFactory
) -> None:
    # Given a gevent worker of 200 greenlets
    worker = workers.start("-P", "gevent", "-c", "200")
    assert "concurrency: 200 (gevent)" in worker.output()
    from itproj.tasks import meet_all

    # When 200 tasks each wait until all 200 run in that process at the same time
    results = [meet_all.delay(200, 60) for _ in range(200)]

    # Then every one of them saw the 200 together
    assert [r.get(timeout=90) for r in results] == [True] * 200


def test_soft_time_limit_and_warm_shutdown(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    worker = workers.start("-P", "gevent", "-c", "10")
    from itproj.tasks import announce_then_sleep, soft_limited

    # A soft time limit interrupts a sleeping greenlet, which may handle it
    assert soft_limited.delay().get(timeout=20) == "soft limit observed"

    # A warm stop lets a running task finish before the worker exits
    marker = tmp_path / "task"
    running = announce_then_sleep.delay(str(marker), 2)
    wait_for(marker.exists, timeout=20)
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=30) == 0
    assert marker.read_text().splitlines() == ["started", "finished"]
    assert running.get(timeout=10) == 2
    assert "Warning" not in worker.output()  # no gevent patching complaint, no pool warning
