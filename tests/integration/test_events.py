"""Events end to end (issue 11): real CLI workers with -E, `chard events`, app.events.Receiver.

Every test runs on SQLite and on Redis (the ``transport`` fixture).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chard.exceptions import TimeLimitExceeded
from chard.protocol.events import EVENTS_CHANNEL, Event
from tests.helpers import IN_CI, wait_for
from tests.integration.workers import CHARD, WorkerFactory, child_pythonpath, run_cli


class Dump:
    """A running ``chard -A itproj events --dump`` and its output."""

    def __init__(self, tmp_path: Path, transport: dict[str, str]) -> None:
        self.log = tmp_path / "dump.log"
        env = {**os.environ, **transport}
        env["PYTHONPATH"] = child_pythonpath(*env.get("PYTHONPATH", "").split(os.pathsep))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [CHARD, "-A", "itproj", "events", "--dump"],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_for("-> evdump: starting capture...")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, *parts: str, timeout: float = 20.0) -> str:
        """Wait for a line holding every one of ``parts``; return it."""

        def found() -> str | None:
            assert self.proc.poll() is None, f"the dump exited:\n{self.text()}"
            return next(
                (ln for ln in self.text().splitlines() if all(p in ln for p in parts)), None
            )

        line: str = wait_for(found, timeout=timeout)
        return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture
def dump(tmp_path: Path, transport: dict[str, str]) -> Iterator[Dump]:
    running = Dump(tmp_path, transport)
    yield running
    running.stop()


def test_dump_shows_a_tasks_life_and_a_failure(
    itproj: Any, dump: Dump, workers: WorkerFactory
) -> None:
    from itproj.tasks import add, boom

    # Given a worker with events on, a client that sends task-sent, and junk on the channel
    workers.start("-E", "-c", "1", "-n", "ev1@%h")
    itproj.conf.task_send_sent_event = True
    itproj.broker.broadcast(EVENTS_CHANNEL, b"not an event batch")

    # When one task succeeds and one fails
    ok = add.delay(2, 3)
    assert ok.get(timeout=20) == 5
    bad = boom.delay()
    with pytest.raises(ValueError, match="bad input"):
        bad.get(timeout=20)

    # Then the dump shows each step, one line per event, in Celery's shape
    task = f"itproj.tasks.add({ok.id}) args=(2, 3) kwargs={{}}"
    assert dump.wait_for("task sent: " + task, "queue=celery").startswith("gen")
    assert dump.wait_for("task received: " + task).startswith("ev1@")
    dump.wait_for("task started: " + task)
    dump.wait_for("task succeeded: " + task, "result=5", "runtime=")
    failed = dump.wait_for(f"task failed: itproj.tasks.boom({bad.id})")
    assert "exception=ValueError('bad input')" in failed
    assert "traceback=Traceback (most recent call last):" in failed
    # the junk was skipped with a log line, and the dump went on
    assert "Ignoring an event batch: event batch is not JSON" in dump.text()
    itproj.conf.task_send_sent_event = False


def test_dump_shows_worker_online_heartbeats_and_offline(
    dump: Dump, workers: WorkerFactory
) -> None:
    worker = workers.start("-E", "-c", "1", "-n", "hb1@%h")

    online = dump.wait_for("hb1@", "] started: ", "freq=2.0", "sw_ident=chard")
    assert "active=0" in online
    assert "processed=0" in online
    heartbeat = dump.wait_for("hb1@", "] heartbeat: ", timeout=15)  # every 2 s
    assert "loadavg=[" in heartbeat
    assert worker.stop() == 0
    dump.wait_for("hb1@", "] shutdown: ")


def test_a_worker_without_task_events_still_sends_worker_events(
    itproj: Any, dump: Dump, workers: WorkerFactory
) -> None:
    # Given a worker started without -E (Celery's worker sends its 'worker' group anyway)
    from itproj.tasks import add

    worker = workers.start("-c", "1", "-n", "quiet1@%h")
    dump.wait_for("quiet1@", "] started: ")

    # When it runs a task and stops
    result = add.delay(1, 1)
    assert result.get(timeout=20) == 2
    dump.wait_for("quiet1@", "] heartbeat: ", "processed=1", timeout=15)
    assert worker.stop() == 0
    dump.wait_for("quiet1@", "] shutdown: ")

    # Then monitors saw the node, but not a single task event
    assert result.id not in dump.text()


def test_without_heartbeat_a_worker_sends_no_events_at_all(
    itproj: Any, dump: Dump, workers: WorkerFactory
) -> None:
    from itproj.tasks import add

    workers.start("-c", "1", "-n", "silent1@%h", "--without-heartbeat", "--without-gossip")
    assert add.delay(1, 1).get(timeout=20) == 2
    marker = itproj.events.Dispatcher(hostname="marker@test")
    marker.send("worker-online")  # the channel works: this shows, nothing before it did
    marker.close()

    dump.wait_for("marker@test")
    assert "silent1@" not in dump.text()


def test_receiver_capture_against_a_real_worker(itproj: Any, workers: WorkerFactory) -> None:
    from itproj.tasks import add

    workers.start("-E", "-c", "1", "-n", "rx1@%h")
    got: list[Event] = []

    def on_succeeded(event: Event) -> None:
        got.append(event)
        if event["uuid"] == result.id:
            receiver.should_stop = True  # Celery's way to end capture from a handler

    receiver = itproj.events.Receiver(itproj.broker, handlers={"task-succeeded": on_succeeded})
    result = add.delay(20, 22)
    receiver.capture(timeout=20)

    assert [(e["uuid"], e["result"]) for e in got] == [(result.id, "42")]
    assert got[0]["hostname"].startswith("rx1@")
    state = itproj.events.State()
    state.event(got[0])
    assert state.tasks[result.id].state == "SUCCESS"


# -- the live view, driven in tmux ------------------------------------------------------------


class Tmux:
    """A tmux server of our own (its own socket) running one command in a fixed-size window."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.socket = f"chard-test-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        line = f"cd {shlex.quote(str(cwd))} && env {exports} {shlex.join(command)}"
        self.run("new-session", "-d", "-s", "view", "-x", "160", "-y", "45", line)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "view").stdout

    def wait_for(self, *parts: str, timeout: float = 20.0) -> str:
        def shown() -> str | None:
            text = self.screen()
            return text if all(p in text for p in parts) else None

        text: str = wait_for(shown, timeout=timeout)
        return text

    def is_running(self) -> bool:
        return self.run("has-session", "-t", "view").returncode == 0

    def close(self) -> None:
        self.run("kill-server")


@pytest.fixture
def tmux_view(tmp_path: Path, transport: dict[str, str]) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        message = "tmux is not installed (apt-get install -y tmux)"
        if IN_CI:
            pytest.fail(message + "; CI must install it")
        pytest.skip(message)
    env = {**transport, "PYTHONPATH": child_pythonpath(), "TERM": "xterm-256color"}
    view = Tmux([CHARD, "-A", "itproj", "events"], env, tmp_path)
    yield view
    view.close()


def test_live_view_in_a_terminal(itproj: Any, tmux_view: Tmux, workers: WorkerFactory) -> None:
    from itproj.tasks import add

    # Given the live view, and then a worker with events on
    tmux_view.wait_for("chard events:", "WORKERS", "TASKS")
    workers.start("-E", "-c", "1", "-n", "tui1@%h")
    tmux_view.wait_for("tui1@", "ONLINE", "1 worker(s) online")

    # When a task runs
    result = add.delay(3, 4)
    assert result.get(timeout=20) == 7

    # Then the view lists it with its state, and Enter shows its detail and timeline
    screen = tmux_view.wait_for(result.id, "SUCCESS", "itproj.tasks.add")
    assert "SUCCESS 1" in screen
    tmux_view.run("send-keys", "-t", "view", "Enter")
    detail = tmux_view.wait_for(f"TASK {result.id}", "result: 7", "timeline:")
    assert "received" in detail
    assert "succeeded" in detail

    # And q quits
    tmux_view.run("send-keys", "-t", "view", "q")
    wait_for(lambda: not tmux_view.is_running())


def test_events_cli_refuses_what_it_cannot_do(
    tmp_path: Path, sqlite_transport: dict[str, str]
) -> None:
    no_tty = run_cli(["-A", "itproj", "events"], sqlite_transport, tmp_path)
    assert no_tty.returncode == 2
    assert "the live view needs a terminal; use --dump" in no_tty.stderr

    camera = run_cli(["-A", "itproj", "events", "-c", "myapp.Camera"], sqlite_transport, tmp_path)
    assert camera.returncode == 2
    assert "snapshot cameras are not supported" in camera.stderr


def test_an_end_the_node_records_itself_is_an_event_too(
    itproj: Any, dump: Dump, workers: WorkerFactory
) -> None:
    from itproj.tasks import hang

    # Given a prefork worker with events on, and a task over its hard time limit (1 s)
    workers.start("-E", "-c", "1", "-n", "tl1@%h")

    # When the parent kills the child running it
    result = hang.delay()
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=30)

    # Then task-failed still comes, from the node's main process (the child is dead)
    failed = dump.wait_for(f"task failed: itproj.tasks.hang({result.id})")
    assert "TimeLimitExceeded" in failed
    started = dump.wait_for(f"task started: itproj.tasks.hang({result.id})")
    assert _pid_of(failed) != _pid_of(started)


def _pid_of(line: str) -> str:
    return line.split("pid=", 1)[1].split(",", 1)[0]
