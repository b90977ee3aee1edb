"""Remote control of what a node does at run time (issues 11 and 12), through the CLI.

``enable_events``/``disable_events`` flip the node's one event switch (shared memory,
so every prefork child follows it); ``pool_grow``/``pool_shrink``/``autoscale`` resize
a running prefork node. Workers are real CLI processes on SQLite and Redis; children
are counted from /proc, and every wait is for the event itself, with a deadline.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.integration.test_prefork_supervisor import children_of
from tests.integration.workers import WorkerFactory, run_cli

pytestmark = pytest.mark.slow

NODE = "rt@runtime"


def control(workers: WorkerFactory, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``chard -A itproj control <args> -d NODE -t 10`` and return the finished process."""
    return run_cli(
        ["-A", "itproj", "control", *args, "-d", NODE, "-t", "10"], workers.env, workers.tmp_path
    )


def test_events_switched_on_and_off_at_run_time(itproj: Any, workers: WorkerFactory) -> None:
    # Given a prefork node started without -E
    workers.start("-n", NODE, "-c", "2")
    from itproj.tasks import add

    # When events are enabled remotely
    on = control(workers, "enable_events")
    assert on.returncode == 0, on.stderr
    assert f"-> {NODE}: OK\n        task events enabled" in on.stdout
    again = itproj.control.enable_events(destination=[NODE], reply=True, timeout=10)
    assert again == [{NODE: {"ok": "task events already enabled"}}]

    # Then a task run by a child is reported start to end
    seen: dict[str, list[str]] = {}
    result = add.delay(20, 22)

    def record(event: dict[str, Any]) -> None:
        seen.setdefault(event.get("uuid", ""), []).append(event["type"])
        if event["type"] == "task-succeeded" and event.get("uuid") == result.id:
            receiver.should_stop = True

    receiver = itproj.events.Receiver(itproj.broker, handlers={"*": record}, from_start=True)
    receiver.capture(timeout=30)
    assert result.get(timeout=10) == 42
    assert {"task-received", "task-started", "task-succeeded"} <= set(seen[result.id])

    # When they are disabled again, the node says so
    off = itproj.control.disable_events(destination=[NODE], reply=True, timeout=10)
    assert off == [{NODE: {"ok": "task events disabled"}}]


def test_pool_grow_and_shrink_through_control(itproj: Any, workers: WorkerFactory) -> None:
    # Given a prefork node with one child
    worker = workers.start("-n", NODE, "-c", "1")
    wait_for(lambda: len(children_of(worker.pid)) == 1, timeout=20)

    # When the pool grows by two through remote control
    grown = control(workers, "pool_grow", "2")
    assert grown.returncode == 0, grown.stderr
    assert "pool will grow" in grown.stdout

    # Then three children run, and the node says so
    wait_for(lambda: len(children_of(worker.pid)) == 3, timeout=20)
    stats = itproj.control.inspect(destination=[NODE], timeout=10).stats()
    assert stats[NODE]["pool"]["max-concurrency"] == 3
    assert stats[NODE]["prefetch_count"] == 3 * itproj.conf.worker_prefetch_multiplier

    # When it shrinks by two, two idle children retire warmly and one stays
    shrunk = itproj.control.pool_shrink(2, destination=[NODE], reply=True, timeout=10)
    assert shrunk == [{NODE: {"ok": "pool will shrink"}}]
    wait_for(lambda: len(children_of(worker.pid)) == 1, timeout=20)
    from itproj.tasks import add

    assert add.delay(1, 2).get(timeout=20) == 3


def test_autoscale_bounds_change_at_run_time(itproj: Any, workers: WorkerFactory) -> None:
    # Given a node that autoscales between 1 and 3 children
    worker = workers.start("-n", NODE, "--autoscale=3,1")
    wait_for(lambda: len(children_of(worker.pid)) == 1, timeout=20)

    # When its bounds become 4 and 2
    changed = control(workers, "autoscale", "4", "2")
    assert changed.returncode == 0, changed.stderr
    assert "autoscale now max=4 min=2" in changed.stdout

    # Then it keeps at least two children
    wait_for(lambda: len(children_of(worker.pid)) == 2, timeout=20)


def test_autoscale_on_a_node_without_it_is_an_error_reply(
    itproj: Any, workers: WorkerFactory
) -> None:
    workers.start("-n", NODE, "-c", "1")
    replies = itproj.control.autoscale(4, 2, destination=[NODE], reply=True, timeout=10)
    assert replies is not None
    assert len(replies) == 1
    assert "autoscale is not enabled on this node" in replies[0][NODE]["error"]
