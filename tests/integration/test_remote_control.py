"""Remote control end to end: ``chard inspect``/``control``/``status`` against real workers.

Workers are started through the CLI (prefork, the default), on SQLite and on Redis.
Replies go through the broker's ``control`` and ``control.reply`` channels; with
prefork a node's parent answers once, asking its children what they hold. A
busy worker runs ``block_until(gate)``: the test decides when its slot frees up.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from chard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from tests.helpers import wait_for
from tests.integration.workers import WorkerFactory, WorkerProcess, run_cli

pytestmark = pytest.mark.slow

W1, W2 = "w1@rc", "w2@rc"


def chard(workers: WorkerFactory, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``chard -A itproj <args>`` against the test's transport."""
    return run_cli(["-A", "itproj", *args], workers.env, workers.tmp_path)


def inspect_json(workers: WorkerFactory, command: str, *args: str, node: str = W1) -> Any:
    """Return ``node``'s reply to ``chard inspect <command> --json`` (waiting only for it)."""
    done = chard(workers, "inspect", command, *args, "-d", node, "-t", "10", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[node]


def started(workers: WorkerFactory, name: str, *args: str) -> WorkerProcess:
    """Start a worker named ``name`` and return once its children run a task."""
    from itproj.tasks import add

    worker = workers.start("-n", name, *args)
    queue = f"warm-{uuid.uuid4().hex[:6]}"  # only this node consumes it
    chard(workers, "control", "add_consumer", queue, "-d", name, "-t", "10")
    assert add.apply_async((1, 1), queue=queue).get(timeout=15) == 2
    chard(workers, "control", "cancel_consumer", queue, "-d", name, "-t", "10")
    return worker


def test_status_with_zero_one_and_two_nodes(itproj: Any, workers: WorkerFactory) -> None:
    # With no worker: said on stderr, nothing on stdout, a non-zero exit
    none = chard(workers, "status")
    assert none.returncode != 0
    assert "no nodes replied within 1s" in none.stderr
    assert none.stdout == ""

    workers.start("-n", W1, "-c", "1")
    one = chard(workers, "status", "-t", "3")
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines() == [f"-> {W1}: OK", "", "1 node online."]

    workers.start("-n", W2, "-c", "1")
    two = chard(workers, "status", "-t", "3")
    assert sorted(two.stdout.splitlines()[:2]) == [f"-> {W1}: OK", f"-> {W2}: OK"]
    assert two.stdout.endswith("2 nodes online.\n")


def test_ping_and_inspect_two_nodes_with_and_without_destination(
    itproj: Any, workers: WorkerFactory
) -> None:
    workers.start("-n", W1, "-c", "1")
    workers.start("-n", W2, "-c", "1", "-Q", "celery,other")

    # Every node answers, in Celery's shape
    both = chard(workers, "inspect", "ping", "-t", "3")
    assert both.returncode == 0, both.stderr
    assert f"-> {W1}: OK\n        pong\n" in both.stdout
    assert f"-> {W2}: OK\n        pong\n" in both.stdout
    assert both.stdout.endswith("2 nodes online.\n")
    pings = itproj.control.ping(timeout=3)
    assert sorted(pings, key=lambda reply: list(reply)) == [
        {W1: {"ok": "pong"}},
        {W2: {"ok": "pong"}},
    ]

    # Only the named node answers
    one = chard(workers, "inspect", "active_queues", "-d", W2, "-t", "10", "--json")
    assert one.returncode == 0, one.stderr
    assert [q["name"] for q in json.loads(one.stdout)[W2]] == ["celery", "other"]
    assert list(json.loads(one.stdout)) == [W2]
    assert itproj.control.inspect(destination=[W1], timeout=10).ping() == {W1: {"ok": "pong"}}
    assert "itproj.tasks.add" in inspect_json(workers, "registered", node=W2)


def test_active_reserved_scheduled_and_query_task(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    from itproj.tasks import add, block_until

    # Given a one-process node busy with a blocker, one task leased behind it, one countdown
    worker = started(workers, W1, "-c", "1", "--prefetch-multiplier", "1")
    gate = tmp_path / "gate"
    blocker = block_until.delay(str(gate))
    worker.wait_for_log(f"[{blocker.id}] received")
    queued = add.delay(2, 3)
    later = add.apply_async((4, 4), countdown=600)

    # Then the node reports each where it is
    active = inspect_json(workers, "active")
    assert [(t["id"], t["name"]) for t in active] == [(blocker.id, "itproj.tasks.block_until")]
    assert active[0]["args"] == [str(gate)]
    assert active[0]["hostname"] == W1
    wait_for(lambda: queued.id in [t["id"] for t in inspect_json(workers, "reserved")], 15)
    scheduled = inspect_json(workers, "scheduled")
    assert [s["request"]["id"] for s in scheduled] == [later.id]
    assert scheduled[0]["eta"] > "2000"  # ISO 8601
    found = inspect_json(workers, "query_task", blocker.id, queued.id)
    assert found[blocker.id][0] == "active"
    assert found[queued.id][0] == "reserved"

    # And the CLI shows them in Celery's shape
    shown = chard(workers, "inspect", "active", "-d", W1, "-t", "10")
    assert shown.stdout.startswith(f"-> {W1}: OK\n    * {{")
    assert blocker.id in shown.stdout

    gate.touch()
    assert blocker.get(timeout=15) is True
    assert queued.get(timeout=15) == 5
    assert inspect_json(workers, "active") == []


def test_rate_limit_holds_the_tasks_beyond_it(itproj: Any, workers: WorkerFactory) -> None:
    from itproj.tasks import add

    # Given a node limited to one add a minute
    started(workers, W1, "-c", "1")
    done = chard(workers, "control", "rate_limit", "itproj.tasks.add", "1/m", "-d", W1, "-t", "10")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"-> {W1}: OK\n        new rate limit set successfully\n")
    assert "itproj.tasks.add [rate_limit=1/m]" in inspect_json(workers, "registered")

    # When three are sent: the first runs, the other two wait on the node, leased
    first, *held = [add.delay(i, i) for i in range(3)]
    assert first.get(timeout=15) == 0
    wait_for(
        lambda: {r.id for r in held} <= {t["id"] for t in inspect_json(workers, "reserved")},
        timeout=15,
    )
    assert [r.state for r in held] == ["PENDING", "PENDING"]

    # Then lifting the limit lets them run at once
    lifted = chard(workers, "control", "rate_limit", "itproj.tasks.add", "0", "-d", W1, "-t", "10")
    assert "rate limit disabled successfully" in lifted.stdout
    assert [r.get(timeout=15) for r in held] == [2, 4]


def test_time_limit_reaches_the_processes_that_run_the_task(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    from itproj.tasks import sleep_then_mark

    # Given a node told that sleep_then_mark may run 1 s at most
    started(workers, W1, "-c", "1")
    done = chard(
        workers, "control", "time_limit", "itproj.tasks.sleep_then_mark", "0.5", "1", "-d", W1
    )
    assert done.stdout.startswith(f"-> {W1}: OK\n        time limits set successfully\n")

    # When one that would sleep 30 s runs, the soft limit interrupts it in its process
    slow = sleep_then_mark.delay(30, str(tmp_path / "ran"))
    with pytest.raises((SoftTimeLimitExceeded, TimeLimitExceeded)):
        slow.get(timeout=20)
    assert slow.state == "FAILURE"
    assert not (tmp_path / "ran").exists()


def test_add_consumer_makes_a_node_consume_a_new_queue(itproj: Any, workers: WorkerFactory) -> None:
    from itproj.tasks import add

    # Given a task waiting on a queue no node consumes
    started(workers, W1, "-c", "1")
    queue = f"extra-{uuid.uuid4().hex[:6]}"
    waiting = add.apply_async((20, 22), queue=queue)
    assert [q["name"] for q in inspect_json(workers, "active_queues")] == ["celery"]

    # When the node is told to consume it
    done = chard(workers, "control", "add_consumer", queue, "-d", W1, "-t", "10")
    assert done.stdout.startswith(f"-> {W1}: OK\n        add consumer {queue}\n")

    # Then it runs the task, and lists the queue
    assert waiting.get(timeout=15) == 42
    assert [q["name"] for q in inspect_json(workers, "active_queues")] == ["celery", queue]


def test_shutdown_stops_only_the_named_node(itproj: Any, workers: WorkerFactory) -> None:
    first = workers.start("-n", W1, "-c", "1")
    workers.start("-n", W2, "-c", "1")

    done = chard(workers, "control", "shutdown", "-d", W1, "-t", "10")

    assert done.stdout.startswith(f"-> {W1}: OK\n        shutting down\n")
    assert first.proc.wait(timeout=20) == 0
    first.wait_for_log("Got shutdown from remote")
    left = chard(workers, "status", "-t", "3")
    assert left.stdout.splitlines() == [f"-> {W2}: OK", "", "1 node online."]


def test_bad_input_is_one_line_and_a_non_zero_exit(itproj: Any, workers: WorkerFactory) -> None:
    worker = workers.start("-n", W1, "-c", "1")

    unknown = chard(workers, "inspect", "frobnicate")
    bad_rate = chard(workers, "control", "rate_limit", "itproj.tasks.add", "10/x")
    nobody = chard(workers, "inspect", "ping", "-d", "nobody@rc")
    extra = chard(workers, "control", "cancel_consumer", "a", "b")

    for done in (unknown, bad_rate, nobody, extra):
        assert done.returncode != 0
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stdout == ""
    assert "unknown inspect command 'frobnicate'; available: active," in unknown.stderr
    assert "invalid rate limit '10/x'; use e.g. '10/s'" in bad_rate.stderr
    assert "no node named nobody@rc replied within 1s" in nobody.stderr
    assert "too many arguments ['b']" in extra.stderr

    # And a command the node does not know is answered with an error, never stopping it
    replies = itproj.control.broadcast("frobnicate", destination=[W1], reply=True, timeout=10)
    assert "unknown command 'frobnicate'" in replies[0][W1]["error"]
    worker.wait_for_log("Received unknown control command 'frobnicate'")
    assert itproj.control.ping([W1], timeout=10) == [{W1: {"ok": "pong"}}]


def test_help_lists_every_command(tmp_path: Path) -> None:
    top = run_cli(["--help"], {}, tmp_path)
    for name in ("inspect", "control", "status", "worker"):
        assert f"\n  {name} " in top.stdout
    inspect_help = run_cli(["inspect", "--help"], {}, tmp_path).stdout
    control_help = run_cli(["control", "--help"], {}, tmp_path).stdout
    for name in ("ping", "active", "reserved", "scheduled", "registered", "stats", "conf"):
        assert f"\n  {name}" in inspect_help
    for name in ("rate_limit", "time_limit", "add_consumer", "cancel_consumer", "shutdown"):
        assert f"\n  {name}" in control_help
    assert "List the tasks running now" in inspect_help
