"""``chard multi`` (issue 12): real nodes started, stopped, restarted and killed by the CLI.

Each test keeps its pid and log files in its own temporary directories, and its
teardown SIGKILLs every node whose pidfile is left there (by that PID alone), so a
failing test leaves no worker behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chard.cli.multiproc import is_alive
from tests.helpers import wait_for
from tests.integration.workers import run_cli

HOST = socket.gethostname()


class Multi:
    """Runs ``chard multi`` for one test, with its own pid and log directories."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.cwd = tmp_path
        self.env = env
        self.pids = tmp_path / "run"
        self.logs = tmp_path / "log"
        self.pids.mkdir()
        self.logs.mkdir()
        self.files = [f"--pidfile={self.pids}/%n.pid", f"--logfile={self.logs}/%n%I.log"]

    def __call__(self, *args: str, files: bool = True, timeout: float = 90.0) -> Any:
        argv = ["multi", *args, *(self.files if files else [])]
        return run_cli(argv, self.env, self.cwd, timeout=timeout)

    def pid(self, name: str) -> int:
        return int((self.pids / f"{name}.pid").read_text())

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def cleanup(self) -> None:
        for pidfile in self.pids.glob("*.pid"):
            pid = int(pidfile.read_text().strip() or 0)
            if pid and is_alive(pid):
                os.killpg(pid, signal.SIGKILL)  # each node leads its own session and group


@pytest.fixture
def multi(tmp_path: Path, sqlite_transport: dict[str, str]) -> Iterator[Multi]:
    tool = Multi(tmp_path, sqlite_transport)
    yield tool
    tool.cleanup()


@pytest.fixture
def tasks(sqlite_transport: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in sqlite_transport.items():
        monkeypatch.setenv(key, value)
    from itproj import tasks
    from itproj.celery import app

    app.close()
    yield tasks
    app.close()


def test_start_runs_detached_nodes_that_work_and_stop_ends_them(multi: Multi, tasks: Any) -> None:
    # When two nodes are started
    started = multi("start", "w1", "w2", "-A", "itproj", "-l", "INFO", "-c", "1")

    # Then each is reported up, in Celery's words, and runs in a session of its own
    assert started.returncode == 0, started.stdout + started.stderr
    assert "> Starting nodes...\n" in started.stdout
    assert f"> w1@{HOST}: OK" in started.stdout
    assert f"> w2@{HOST}: OK" in started.stdout
    pids = [multi.pid("w1"), multi.pid("w2")]
    assert all(is_alive(pid) and os.getsid(pid) == pid for pid in pids)
    assert tasks.add.delay(2, 3).get(timeout=20) == 5
    assert "ready." in multi.log("w1")

    # When they are stopped, with a third node that never ran
    stopped = multi("stop", "w1", "w2", "w3")

    # Then the third is said to be down and the others get TERM, and exit
    assert f"> w3@{HOST}: DOWN" in stopped.stdout
    assert f"> w1@{HOST}: TERM -> {pids[0]}" in stopped.stdout
    assert f"> w2@{HOST}: TERM -> {pids[1]}" in stopped.stdout
    wait_for(lambda: not any(is_alive(pid) for pid in pids), timeout=30)
    assert not list(multi.pids.glob("*.pid"))  # each removed its own on a clean stop


def test_stopwait_returns_once_the_running_task_finished(
    multi: Multi, tasks: Any, tmp_path: Path
) -> None:
    # Given a node running a task
    assert multi("start", "w1", "-A", "itproj", "-l", "INFO", "-c", "1").returncode == 0
    pid = multi.pid("w1")
    marker = tmp_path / "task"
    result = tasks.announce_then_sleep.delay(str(marker), 2)
    wait_for(marker.exists, timeout=20)

    # When it is stopped, waiting
    stopped = multi("stopwait", "w1")

    # Then the task finished before the command returned, and the node is gone
    assert "finished" in marker.read_text()
    assert not is_alive(pid)
    assert f"> w1@{HOST}: OK" in stopped.stdout
    assert "> Waiting for 1 node -> " in stopped.stdout
    assert result.get(timeout=10) == 2


def test_restart_starts_a_new_process_and_kill_ends_it(multi: Multi, tasks: Any) -> None:
    assert multi("start", "w1", "-A", "itproj", "-c", "1").returncode == 0
    first = multi.pid("w1")

    restarted = multi("restart", "w1", "-A", "itproj", "-c", "1")

    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert f"> Restarting node w1@{HOST}: OK" in restarted.stdout
    second = multi.pid("w1")
    assert second != first
    assert not is_alive(first)
    assert is_alive(second)
    assert tasks.add.delay(1, 1).get(timeout=20) == 2

    killed = multi("kill", "w1")

    assert f"Sending KILL to node w1@{HOST} ({second})" in killed.stdout
    wait_for(lambda: not is_alive(second), timeout=10)
    assert not (multi.pids / "w1.pid").exists()


def test_start_refuses_a_node_whose_pidfile_names_a_live_process(multi: Multi) -> None:
    assert multi("start", "w1", "-A", "itproj", "-c", "1").returncode == 0
    pid = multi.pid("w1")

    again = multi("start", "w1", "-A", "itproj", "-c", "1")

    assert again.returncode == 1
    assert f"> w1@{HOST}: FAILED" in again.stdout
    assert f"names running process {pid}" in again.stdout
    assert multi.pid("w1") == pid
    assert is_alive(pid)


def test_a_node_that_fails_to_start_is_reported_with_its_log(multi: Multi) -> None:
    started = multi("start", "w1", "w2", "-A", "no_such_project_module", "-c", "1")

    assert started.returncode == 1
    assert f"> w1@{HOST}: FAILED" in started.stdout
    assert "the node exited with code" in started.stdout
    assert "no_such_project_module" in started.stdout  # the log's last lines, shown
    assert f"> w2@{HOST}: FAILED" in started.stdout  # and the others are still tried


def test_bad_arguments_get_one_line_naming_the_value(multi: Multi, tmp_path: Path) -> None:
    nothing = multi("start", "0", "-A", "itproj")
    assert nothing.returncode == 2
    assert nothing.stderr.strip() == (
        "Error: node range '0' expands to no nodes; give a count of 1 or more"
    )

    missing = tmp_path / "no" / "such" / "dir"
    no_dir = multi("start", "w1", "-A", "itproj", f"--pidfile={missing}/%n.pid", files=False)
    assert no_dir.returncode == 1
    assert f"pidfile directory '{missing}' does not exist" in no_dir.stdout
    assert not any(multi.pids.iterdir())


def test_show_names_and_expand_print_without_starting_anything(multi: Multi) -> None:
    show = multi("show", "3", "-A", "itproj", "-c", "3", "-c:1", "10", files=False)
    lines = show.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].endswith(
        f"-m chard -A itproj worker -c 10 -n celery1@{HOST} "
        "--pidfile=celery1.pid --logfile=celery1%I.log"
    )
    # chard's global -A before multi reaches every node, as Celery's does
    (line,) = run_cli(
        ["-A", "itproj", "multi", "show", "w1"], multi.env, multi.cwd
    ).stdout.splitlines()
    assert f"-m chard -A itproj worker -n w1@{HOST} " in line
    names = multi("names", "w1", "w2", files=False)
    assert names.stdout.split() == [f"w1@{HOST}", f"w2@{HOST}"]
    expand = multi("expand", "%n.pid", "w1", "w2", files=False)
    assert expand.stdout.split() == ["w1.pid", "w2.pid"]
    assert not list(multi.cwd.glob("*.pid"))


def test_stop_says_which_nodes_are_not_running_and_goes_on(multi: Multi) -> None:
    # Given a node that runs, and one whose pidfile names a process that has exited
    assert multi("start", "w1", "-A", "itproj", "-c", "1").returncode == 0
    pid = multi.pid("w1")
    gone = subprocess.Popen(["true"])
    gone.wait()
    (multi.pids / "w2.pid").write_text(f"{gone.pid}\n")

    # When all three are stopped
    stopped = multi("stopwait", "w2", "w3", "w1")

    # Then each one not running is named, and the running one is still stopped
    assert f"Could not signal w2@{HOST} ({gone.pid}): No such process" in stopped.stdout
    assert f"> w3@{HOST}: DOWN" in stopped.stdout
    assert f"> w1@{HOST}: TERM -> {pid}" in stopped.stdout
    assert f"> w1@{HOST}: OK" in stopped.stdout
    assert not is_alive(pid)
