"""Remote control across a mixed fleet on RabbitMQ: Celery's ``celery.pidbox`` both ways.

A real Celery 5 worker and a chard worker (``chard_celery_compat``) run on one private
vhost, each on a queue of its own; Celery's CLI and client inspect the chard worker,
chard's CLI and client inspect the Celery worker, and one broadcast gets both replies.
Needs Celery (the ``dev``/``bench`` extras); skipped without it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import private_vhost, wait_for
from tests.integration.workers import CHARD, child_pythonpath

pytest.importorskip("celery")

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]

CELERY = str(Path(sys.executable).with_name("celery"))
HOST = socket.gethostname()
CHARD_NODE = f"chard1@{HOST}"
CELERY_NODE = f"celery1@{HOST}"

APP = """\
import os
import time

from {package} import Celery

app = Celery('{name}', broker={broker!r})
app.conf.chard_celery_compat = True  # an unknown setting to Celery, which ignores it


@app.task(name='pidbox.add')
def add(x, y):
    return x + y


@app.task(name='pidbox.hold')
def hold(path):
    deadline = time.monotonic() + 60  # until the test releases it, or a minute
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return 'released'
"""


@dataclass
class Fleet:
    """The two workers, and where their apps live."""

    url: str
    path: Path
    chard_pid: int
    celery_pid: int

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": child_pythonpath(str(self.path))}

    def cli(self, program: str, app: str, *args: str) -> Any:
        """Run ``program -A app <args> -j``; return its JSON output."""
        out = subprocess.run(
            [program, "-A", app, *args, "-j"], cwd=self.path, env=self.env(),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])


def _start(argv: list[str], path: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, cwd=path, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _wait_ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        return "ready." in log.read_text()

    wait_for(ready, timeout=60)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    path = tmp_path_factory.mktemp("pidbox")
    with private_vhost() as url:
        for package, name in ("celery", "celapp"), ("chard", "chapp"):
            (path / f"{name}.py").write_text(APP.format(package=package, name=name, broker=url))
        env = {**os.environ, "PYTHONPATH": child_pythonpath(str(path))}
        chard_log, celery_log = path / "chard.log", path / "celery.log"
        procs: list[subprocess.Popen[bytes]] = []
        solo = ["worker", "-P", "solo", "-l", "INFO"]
        try:
            # prefork: what `active` and `stats` need comes from the children, over pipes
            prefork = ["worker", "-P", "prefork", "-c", "2", "-l", "INFO"]
            argv = [CHARD, "-A", "chapp", *prefork, "-n", CHARD_NODE, "-Q", "on_chard"]
            procs.append(_start(argv, path, env, chard_log))
            _wait_ready(procs[0], chard_log)
            # (with mingle on: a starting Celery worker says hello to the chard node)
            argv = [CELERY, "-A", "celapp", *solo, "-n", CELERY_NODE, "-Q", "on_celery"]
            procs.append(_start([*argv, "--without-gossip"], path, env, celery_log))
            _wait_ready(procs[1], celery_log)
            assert "mingle: sync with 1 nodes" in celery_log.read_text()
            yield Fleet(url, path, procs[0].pid, procs[1].pid)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, 9)
                proc.wait(timeout=10)


def test_celerys_cli_inspects_a_chard_worker(fleet: Fleet) -> None:
    # Given a task held running on the chard worker
    import chard

    release = fleet.path / "release-chard"
    client = chard.Celery("client", broker=fleet.url)
    try:
        task_id = client.send_task("pidbox.hold", (str(release),), queue="on_chard").id

        # When Celery's own CLI asks it (ping, stats, active) by its node name (it returns
        # once that node answered; the default 1 s is too short on a loaded machine)
        only = ("-d", CHARD_NODE, "-t", "20")
        ping = fleet.cli(CELERY, "celapp", "inspect", "ping", *only)
        stats = fleet.cli(CELERY, "celapp", "inspect", "stats", *only)
        active = wait_for(
            lambda: fleet.cli(CELERY, "celapp", "inspect", "active", *only)[CHARD_NODE],
            timeout=30,
        )

        # Then the chard node answers in Celery's shapes
        assert ping == {CHARD_NODE: {"ok": "pong"}}
        node_stats = stats[CHARD_NODE]
        assert node_stats["pid"] == fleet.chard_pid
        assert node_stats["pool"]["implementation"] == "prefork"
        assert len(node_stats["pool"]["processes"]) == 2
        assert node_stats["broker"]["transport"] == "amqp"
        assert [(t["id"], t["name"]) for t in active] == [(task_id, "pidbox.hold")]
        assert active[0]["hostname"] == CHARD_NODE
    finally:
        release.touch()
        client.close()


def test_chards_cli_inspects_a_celery_worker(fleet: Fleet) -> None:
    # When chard's CLI asks the Celery worker (ping, stats, registered) by its node name
    # (it returns once that node answered; the default 1 s is too short on a loaded machine)
    only = ("-d", CELERY_NODE, "-t", "20")
    ping = fleet.cli(CHARD, "chapp", "inspect", "ping", *only)
    stats = fleet.cli(CHARD, "chapp", "inspect", "stats", *only)
    registered = fleet.cli(CHARD, "chapp", "inspect", "registered", *only)

    # Then the Celery node's replies come back as Celery's inspect prints them
    assert ping == {CELERY_NODE: {"ok": "pong"}}
    assert stats[CELERY_NODE]["pid"] == fleet.celery_pid
    assert stats[CELERY_NODE]["pool"]["implementation"] == "celery.concurrency.solo:TaskPool"
    assert {"pidbox.add", "pidbox.hold"} <= set(registered[CELERY_NODE])


def test_one_broadcast_gets_both_kinds_of_worker_once_each(fleet: Fleet) -> None:
    import celery

    import chard

    nodes = {CHARD_NODE: {"ok": "pong"}, CELERY_NODE: {"ok": "pong"}}
    # With both CLIs, and with both clients (each node answering once: chard's copy of a
    # request on Celery's pidbox is marked, so the chard node answers only chard's own)
    assert fleet.cli(CELERY, "celapp", "inspect", "ping", "-t", "2") == nodes
    assert fleet.cli(CHARD, "chapp", "inspect", "ping", "-t", "2") == nodes
    chard_app = chard.Celery("client", broker=fleet.url)
    chard_app.conf.chard_celery_compat = True
    celery_app = celery.Celery("client", broker=fleet.url)
    try:
        for app in chard_app, celery_app:
            replies = app.control.ping(timeout=2)
            assert sorted(replies, key=lambda r: next(iter(r))) == [
                {CELERY_NODE: {"ok": "pong"}},
                {CHARD_NODE: {"ok": "pong"}},
            ]

        # And control commands cross too: a rate limit set on both kinds of node at once
        for app in chard_app, celery_app:
            replies = app.control.rate_limit("pidbox.add", "10/m", reply=True, timeout=2)
            by_node = {node: reply for item in replies for node, reply in item.items()}
            assert set(by_node) == set(nodes)
            assert all("ok" in reply for reply in by_node.values()), by_node
    finally:
        chard_app.close()
        celery_app.close()


def test_a_celery_client_revokes_on_a_chard_worker_with_a_reply(fleet: Fleet) -> None:
    import celery

    celery_app = celery.Celery("client", broker=fleet.url)
    try:
        replies = celery_app.control.revoke(
            "never-sent", reply=True, timeout=2, destination=[CHARD_NODE]
        )
        assert replies == [{CHARD_NODE: {"ok": "tasks never-sent flagged as revoked"}}]
        revoked = celery_app.control.inspect(destination=[CHARD_NODE], timeout=2).revoked()
        assert revoked is not None
        assert "never-sent" in revoked[CHARD_NODE]
    finally:
        celery_app.close()


def test_celerys_other_inspect_commands_get_chards_answers_in_celerys_shapes(
    fleet: Fleet,
) -> None:
    import celery

    celery_app = celery.Celery("client", broker=fleet.url)
    try:
        inspect = celery_app.control.inspect(destination=[CHARD_NODE], timeout=5)
        queues = inspect.active_queues()
        assert queues is not None
        assert [q["name"] for q in queues[CHARD_NODE]] == ["on_chard"]
        for name in ("reserved", "scheduled", "revoked"):
            replies = getattr(inspect, name)()
            assert replies is not None, name
            assert isinstance(replies[CHARD_NODE], list), (name, replies)
        registered = inspect.registered()
        assert registered is not None
        assert {"pidbox.add", "pidbox.hold"} <= {r.split()[0] for r in registered[CHARD_NODE]}
        report = inspect.report()
        assert report is not None
        assert "chard:" in report[CHARD_NODE]["ok"]
        assert inspect.query_task("unknown-id") == {CHARD_NODE: {}}
        assert inspect.clock() == {CHARD_NODE: {"clock": 0}}
        # a command chard does not have: an error reply, as a Celery worker gives one
        memsample = inspect.memsample()
        assert memsample is not None
        assert "unknown command 'memsample'" in memsample[CHARD_NODE]["error"]
    finally:
        celery_app.close()


def test_chards_event_receiver_sees_the_celery_workers_events(fleet: Fleet) -> None:
    import celery

    import chard
    from chard.events.receiver import EventReceiver

    # Given the Celery worker's task events turned on by a Celery client
    celery_app = celery.Celery("client", broker=fleet.url)
    chard_app = chard.Celery("events", broker=fleet.url)
    try:
        on = celery_app.control.enable_events(destination=[CELERY_NODE], reply=True, timeout=3)
        assert on == [{CELERY_NODE: {"ok": "task events enabled"}}]
        receiver = EventReceiver(chard_app, handlers={})

        # When a task runs there (and its worker's heartbeats go on)
        task_id = celery_app.send_task("pidbox.add", (2, 3), queue="on_celery").id

        # Then chard's receiver (what `chard events` and the dashboard read) gets them
        # once each: a chard node took them from Celery's celeryev into chard's log
        seen: list[dict[str, Any]] = []
        for event in receiver.itercapture(timeout=20):
            if event["hostname"] == CELERY_NODE:
                seen.append(event)
            types = [e["type"] for e in seen]
            if "task-succeeded" in types and "worker-heartbeat" in types:
                break
        task_events = [e["type"] for e in seen if e.get("uuid") == task_id]
        assert task_events == ["task-received", "task-started", "task-succeeded"]
        assert next(e for e in seen if e["type"] == "task-succeeded")["result"] == "5"
    finally:
        celery_app.control.disable_events(destination=[CELERY_NODE])
        celery_app.close()
        chard_app.close()
