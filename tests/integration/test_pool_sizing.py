"""Sizing a prefork node while it runs (issue 12): ``--autoscale`` and ``--max-memory-per-child``.

Children are counted from /proc; every wait is for the event itself, with a deadline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import wait_for
from tests.integration.test_prefork_supervisor import children_of
from tests.integration.workers import WorkerFactory, run_cli


def test_autoscale_grows_under_a_burst_and_shrinks_after_it(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a node that may run 1 to 4 children, with a one-second cool-down
    worker = workers.start(
        "--autoscale=4,1",
        "--prefetch-multiplier",
        "1",
        extra_env={"AUTOSCALE_KEEPALIVE": "1"},
    )
    assert "concurrency: {min=1, max=4} (prefork)" in worker.output()
    wait_for(lambda: len(children_of(worker.pid)) == 1, timeout=20)
    from itproj.tasks import block_until

    # When a burst of tasks waits, longer than one child can run
    gate = tmp_path / "gate"
    results = [block_until.delay(str(gate), 60) for _ in range(8)]

    # Then the pool grows to its max, and logs why
    wait_for(lambda: len(children_of(worker.pid)) == 4, timeout=30)
    worker.wait_for_log("Autoscale: scaling up")

    # When the burst is over
    gate.touch()
    assert [r.get(timeout=60) for r in results] == [True] * 8

    # Then after the cool-down the pool shrinks back to its min, retiring children warmly
    wait_for(lambda: len(children_of(worker.pid)) == 1, timeout=30)
    worker.wait_for_log("Autoscale: scaling down to 1 processes")
    worker.wait_for_log("retired (the pool shrank)")
    assert "exited (code" not in worker.output()


def test_a_child_over_its_memory_limit_is_replaced_after_its_task(
    itproj: Any, workers: WorkerFactory
) -> None:
    # Given one child that may use 200 MiB
    worker = workers.start("-c", "1", "--max-memory-per-child", str(200 * 1024))
    from itproj.tasks import hog, pid

    first = pid.delay().get(timeout=20)
    assert pid.delay().get(timeout=20) == first  # under the limit: kept

    # When a task leaves it holding more than that
    assert hog.delay(300).get(timeout=30) == first

    # Then the child is replaced, and the next task runs in the new one
    worker.wait_for_log("over max_memory_per_child (204800 KiB)")
    worker.wait_for_log("went over its memory limit; replaced")
    wait_for(lambda: children_of(worker.pid) and first not in children_of(worker.pid), timeout=20)
    assert pid.delay().get(timeout=20) != first


def test_bad_worker_options_get_one_line_naming_the_value(
    sqlite_transport: dict[str, str], tmp_path: Path
) -> None:
    cases = {
        "8": "Error: malformed autoscale value '8'; give max,min processes",
        "2,8": "Error: autoscale value '2,8' needs max >= min",
        "a,b": "Error: malformed autoscale value 'a,b'",
    }
    for value, message in cases.items():
        done = run_cli(
            ["-A", "itproj", "worker", f"--autoscale={value}"], sqlite_transport, tmp_path
        )
        assert done.returncode != 0
        assert done.stderr.strip().startswith(message), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1

    for pool, message in {
        "bogus": "Error: unknown pool 'bogus'; choose one of: prefork, gevent, solo, threads",
        "eventlet": "Error: the eventlet pool is not supported: eventlet is deprecated",
    }.items():
        done = run_cli(["-A", "itproj", "worker", "-P", pool], sqlite_transport, tmp_path)
        assert done.returncode != 0
        assert done.stderr.strip().startswith(message), done.stderr

    missing = tmp_path / "no" / "such"
    for option, kind in (
        ("--pidfile", "cannot write pidfile"),
        ("--logfile", "cannot open logfile"),
    ):
        done = run_cli(
            ["-A", "itproj", "worker", option, str(missing / "w1")], sqlite_transport, tmp_path
        )
        assert done.returncode != 0
        assert done.stderr.strip() == (
            f"Error: {kind} '{missing / 'w1'}': No such file or directory; "
            f"fix its directory or {option}"
        )


def test_pool_grow_and_shrink_resize_a_running_node_warmly(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a node of one child, and the calls the pool_grow/pool_shrink commands make
    requests = tmp_path / "resize"
    worker = workers.start(
        "-c",
        "1",
        "--prefetch-multiplier",
        "1",
        app="resizeproj",
        extra_env={"RESIZE_REQUESTS": str(requests)},
    )
    from resizeproj import announce_then_block

    def ask(line: str) -> None:
        with open(requests, "a") as fh:
            fh.write(line + "\n")

    # When it grows by two
    ask("pool_grow 2")

    # Then three children run
    wait_for(lambda: len(children_of(worker.pid)) == 3, timeout=20)
    worker.wait_for_log("Pool grows from 1 to 3 processes")

    # Given one of them busy
    gate = tmp_path / "gate"
    started = [tmp_path / f"started-{i}" for i in range(3)]
    first = announce_then_block.delay(str(started[0]), str(gate))
    busy = wait_for(lambda: _pid_in(started[0]), timeout=20)

    # When the pool shrinks by two, the idle children go at once
    ask("pool_shrink 2")
    wait_for(lambda: children_of(worker.pid) == {busy}, timeout=20)
    wait_for(lambda: worker.output().count("retired (the pool shrank)") == 2, timeout=10)

    # Given two children, both busy (each holds at most one message ahead, so of two
    # more tasks at least one runs in the new child)
    ask("pool_grow 1")
    wait_for(lambda: len(children_of(worker.pid)) == 2, timeout=20)
    more = [announce_then_block.delay(str(path), str(gate)) for path in started[1:]]
    wait_for(lambda: any(_pid_in(p) not in (None, busy) for p in started[1:]), timeout=20)

    # When the pool shrinks by one, a busy child is retired warmly: it finishes its task
    ask("pool_shrink 1")
    worker.wait_for_log("Pool shrinks from 2 to 1 processes")
    assert len(children_of(worker.pid)) == 2  # both still running their tasks
    gate.touch()
    assert [r.get(timeout=30) for r in [first, *more]] == [True, True, True]
    wait_for(lambda: len(children_of(worker.pid)) == 1, timeout=20)
    wait_for(lambda: worker.output().count("retired (the pool shrank)") == 3, timeout=10)
    assert "exited (code" not in worker.output()


def _pid_in(path: Path) -> int | None:
    """Return the pid a task wrote to ``path`` (None until it has started)."""
    text = path.read_text() if path.exists() else ""
    return int(text) if text else None
