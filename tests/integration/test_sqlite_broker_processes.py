"""The SQLite broker across real processes: crash recovery, concurrency, idle cost, wake-up.

Each child is a fresh ``python -c`` interpreter (no fork), running one of the
small programs in ``CHILD`` and reporting JSON lines on stdout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chard.brokers.base import OutgoingMessage
from chard.brokers.sqlite import SQLiteBroker
from chard.exceptions import ImproperlyConfigured
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, threading, time
from chard.brokers import sqlite
from chard.brokers.base import OutgoingMessage

mode, url, *args = sys.argv[1:]

def report(**fields):
    print(json.dumps(fields), flush=True)

if mode == "hold":  # lease `want` messages, ack `n_ack`, keep heartbeating until killed
    want, n_ack = int(args[0]), int(args[1])
    lease = float(args[2]) if len(args) > 2 else 1.0
    broker = sqlite.SQLiteBroker(url, {"lease_timeout": lease})
    held = []
    while len(held) < want:
        held += broker.fetch(["work"], want - len(held), 1.0)
    for d in held[:n_ack]:
        d.ack()
    def beat():
        while True:
            broker.heartbeat()
            time.sleep(0.2)
    threading.Thread(target=beat, daemon=True).start()
    report(acked=[d.body.decode() for d in held[:n_ack]],
           held=[d.body.decode() for d in held[n_ack:]], consumer=broker.consumer_id)
    threading.Event().wait()

elif mode == "produce":  # publish `n` messages, half one by one and half in batches
    prefix, n = args[0], int(args[1])
    broker = sqlite.SQLiteBroker(url)
    bodies = [f"{prefix}-{i}".encode() for i in range(n)]
    for body in bodies[: n // 2]:
        broker.publish(OutgoingMessage("work", body))
    rest = bodies[n // 2 :]
    for start in range(0, len(rest), 25):
        broker.publish([OutgoingMessage("work", b) for b in rest[start : start + 25]])

elif mode == "consume":  # ack everything until a b"stop" message (each takes one)
    broker = sqlite.SQLiteBroker(url)
    broker.fetch(["work"], 1, 0)  # warm: connected, schema read
    report(ready=True)
    seen, is_stopping = [], False
    while not is_stopping:
        for d in broker.fetch(["work"], 10, 1.0):
            if d.body != b"stop":
                seen.append([d.body.decode(), d.delivery_count])
            elif is_stopping:
                d.reject(requeue=True)  # another consumer's stop
                continue
            is_stopping = is_stopping or d.body == b"stop"
            d.ack()
    report(seen=seen)

elif mode == "idle":  # block in an empty fetch; report the CPU it cost
    broker = sqlite.SQLiteBroker(url)
    broker.fetch(["warm-up"], 1, 0)
    cpu, wall = time.process_time(), time.monotonic()
    found = broker.fetch(["idle"], 1, float(args[0]))
    report(cpu=time.process_time() - cpu, wall=time.monotonic() - wall, found=len(found))

elif mode == "wait":  # fetch `n` times; polling all but disabled, so only a ring wakes us
    sqlite.POLL_INTERVAL_MIN = sqlite.POLL_INTERVAL_MAX = 60.0
    broker = sqlite.SQLiteBroker(url)
    for i in range(int(args[0])):
        report(waiting=i)
        (d,) = broker.fetch(["wake"], 1, 30.0)
        report(received_at=time.time(), body=d.body.decode())
        d.ack()

elif mode == "bcast_wait":  # broadcast_read `n` times with polling all but disabled
    sqlite.POLL_INTERVAL_MIN = sqlite.POLL_INTERVAL_MAX = 60.0
    broker = sqlite.SQLiteBroker(url)
    cursor = broker.broadcast_tail("c")
    for i in range(int(args[0])):
        report(waiting=i)
        ((cursor, payload),) = broker.broadcast_read("c", cursor, 30.0)
        report(received_at=time.time(), body=payload.decode())
"""


def spawn(mode: str, url: str, *args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, url, *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def read_report(child: subprocess.Popen[str]) -> dict[str, Any]:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, f"child exited with {child.wait()} before reporting"
    report: dict[str, Any] = json.loads(line)
    return report


def finish(child: subprocess.Popen[str], timeout: float = 30.0) -> dict[str, Any]:
    """Wait for a child's exit and return its last report."""
    out, _ = child.communicate(timeout=timeout)
    assert child.returncode == 0, f"child failed with {child.returncode}"
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.sqlite3'}"


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Collect started children; kill any still running when the test ends."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_killed_consumer_loses_nothing(url: str, children: list[subprocess.Popen[str]]) -> None:
    # Given 200 messages, and a consumer that leased 50, acked 20 and is then SIGKILLed
    with SQLiteBroker(url, {"lease_timeout": 1.0}) as broker:
        all_ids = {f"m{i}" for i in range(200)}
        broker.publish([OutgoingMessage("work", i.encode()) for i in sorted(all_ids)])
        children.append(victim := spawn("hold", url, 50, 20))
        report = read_report(victim)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        acked, held = set(report["acked"]), set(report["held"])
        assert (len(acked), len(held)) == (20, 30)

        # When a second consumer drains the queue
        counts: dict[str, list[int]] = {}

        def drain() -> bool:
            for delivery in broker.fetch(["work"], 50, 0.2):
                counts.setdefault(delivery.body.decode(), []).append(delivery.delivery_count)
                delivery.ack()
            return len(counts) >= 180

        wait_for(drain, timeout=20.0)

    # Then each message was acked exactly once overall; the held ones came back as 2nd delivery
    assert set(counts) | acked == all_ids
    assert not set(counts) & acked
    assert all(len(c) == 1 for c in counts.values())
    assert {i for i, (c,) in counts.items() if c == 2} == held
    assert {i for i, (c,) in counts.items() if c == 1} == all_ids - acked - held


def test_a_killed_consumers_leases_are_taken_over_at_once(
    url: str, children: list[subprocess.Popen[str]]
) -> None:
    # Given 10 messages, and a consumer on a 60 s lease that leased 5, acked 2 and is SIGKILLed
    with SQLiteBroker(url) as supervisor:
        all_ids = {f"m{i}" for i in range(10)}
        supervisor.publish([OutgoingMessage("work", i.encode()) for i in sorted(all_ids)])
        children.append(victim := spawn("hold", url, 5, 2, 60.0))
        report = read_report(victim)
        victim.send_signal(signal.SIGKILL)
        victim.wait()

        # When its supervisor takes its leases over
        taken = supervisor.take_over(report["consumer"])

        # Then it holds the unacked ones at once, as their first delivery still
        assert sorted(d.body.decode() for d in taken) == sorted(report["held"])
        assert {d.delivery_count for d in taken} == {1}

        # And requeued, they are fetched with the rest, none counted twice
        for delivery in taken:
            delivery.reject(requeue=True)
        rest = supervisor.fetch(["work"], 10, 0)
        assert sorted(d.body.decode() for d in rest) == sorted(all_ids - set(report["acked"]))
        assert {d.delivery_count for d in rest} == {1}
        supervisor.ack_many(rest)


def test_concurrent_producers_and_consumers_lose_and_duplicate_nothing(
    url: str, children: list[subprocess.Popen[str]]
) -> None:
    # Given three consumers waiting, and three producers publishing 300 messages each
    SQLiteBroker(url).close()  # create the schema before the race starts
    consumers = [spawn("consume", url) for _ in range(3)]
    children.extend(consumers)
    # Each consumer is up before anything is sent: a consumer still starting on a busy
    # machine would otherwise find the work taken, and the fairness check below fail
    for consumer in consumers:
        assert read_report(consumer) == {"ready": True}
    producers = [spawn("produce", url, f"p{n}", 300) for n in range(3)]
    children.extend(producers)
    for producer in producers:
        assert producer.wait(timeout=30) == 0

    # When every message is published, each consumer is told to stop (after the work)
    with SQLiteBroker(url) as broker:
        broker.publish([OutgoingMessage("work", b"stop", priority=9) for _ in consumers])
        reports = [finish(consumer) for consumer in consumers]
        assert broker.queue_size("work") == 0

    # Then every message was delivered exactly once, and never redelivered
    seen = Counter(body for r in reports for body, _ in r["seen"])
    assert set(seen) == {f"p{n}-{i}" for n in range(3) for i in range(300)}
    assert set(seen.values()) == {1}
    assert {count for r in reports for _, count in r["seen"]} == {1}
    assert all(r["seen"] for r in reports), "a consumer got no work at all"


def test_an_idle_consumer_costs_almost_no_cpu(
    url: str, children: list[subprocess.Popen[str]]
) -> None:
    children.append(child := spawn("idle", url, 2.0))

    report = finish(child)

    assert report["found"] == 0
    assert report["wall"] >= 1.9
    assert report["cpu"] / report["wall"] < 0.05, report


def wake_latencies(child: subprocess.Popen[str], send: Callable[[str], None]) -> list[float]:
    """Each time ``child`` reports that it waits, ``send`` it a body once it sleeps.

    Returns how long each body took to reach it (its "received_at" minus the send time).
    """
    latencies = []
    for i in range(3):
        assert read_report(child) == {"waiting": i}
        # Once the child sleeps in the kernel, it is blocked in its wait.
        wait_for(lambda: _process_state(child.pid) == "S", timeout=10.0, interval=0.005)
        sent = time.time()
        send(f"w{i}")
        report = read_report(child)
        assert report["body"] == f"w{i}"
        latencies.append(report["received_at"] - sent)
    return latencies


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_publish_wakes_a_waiting_consumer_at_once(
    url: str, children: list[subprocess.Popen[str]]
) -> None:
    # Given a consumer in another process whose polling is all but disabled
    children.append(child := spawn("wait", url, 3))
    with SQLiteBroker(url) as broker:
        # When a message is published, three times
        latencies = wake_latencies(
            child, lambda body: broker.publish(OutgoingMessage("wake", body.encode()))
        )

    # Then the doorbell woke it each time long before any poll would
    assert max(latencies) < 0.25, latencies


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_broadcast_wakes_a_reader_in_another_process_at_once(
    url: str, children: list[subprocess.Popen[str]]
) -> None:
    # Given a broadcast reader in another process whose polling is all but disabled
    SQLiteBroker(url).close()  # the schema exists before the child reads the tail
    children.append(child := spawn("bcast_wait", url, 3))
    with SQLiteBroker(url) as broker:
        # When this process broadcasts, three times
        latencies = wake_latencies(child, lambda body: broker.broadcast("c", body.encode()))

    # Then the broadcast doorbell woke the reader each time long before any poll would
    assert max(latencies) < 0.25, latencies


def _process_state(pid: int) -> str:
    """Return the scheduler state letter of ``pid`` (R running, S sleeping, ...)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0]


def test_a_forked_child_uses_its_own_connection(url: str) -> None:
    # Given a broker the parent has used (connection open, doorbell bound)
    with SQLiteBroker(url) as broker:
        broker.publish([OutgoingMessage("q", b"for-parent"), OutgoingMessage("q", b"x")])
        (mine,) = broker.fetch(["q"], 1, timeout=0.1)

        # When a forked child uses the same object
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                (theirs,) = broker.fetch(["q"], 1, timeout=1.0)
                theirs.ack()
                broker.publish(OutgoingMessage("q", b"from-child"))
                code = 0 if theirs.body == b"x" else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)

        # Then the child worked, and the parent's connection and lease are intact
        assert os.waitstatus_to_exitcode(status) == 0
        mine.ack()
        assert [d.body for d in broker.fetch(["q"], 10, timeout=1.0)] == [b"from-child"]
        assert broker.queue_size("q") == 0


def test_a_child_forked_during_another_threads_write_can_write(url: str) -> None:
    """The CI hang of a prefork child: forked while a parent thread was inside a write.

    SQLite keeps a process's locks on a file in memory shared by all its connections;
    a child forked mid-transaction inherits "this process holds the WAL write lock"
    from a connection it never uses, and every write of its own is then BUSY for good.
    """
    # Given a broker one thread keeps inside a write transaction for up to HOLD seconds
    hold = 2.0
    broker = SQLiteBroker(url, {"busy_timeout": 1.0})
    inside, release = threading.Event(), threading.Event()

    def write_slowly() -> None:
        def action(conn: Any) -> None:
            conn.execute("INSERT INTO chard_messages (queue, priority, due_at, body)"
                         " VALUES ('q', 0, 0, x'00')")  # fmt: skip
            inside.set()
            release.wait(hold)  # the fork must wait for this transaction, however long

        broker._write(action)

    holder = threading.Thread(target=write_slowly)
    holder.start()
    assert inside.wait(10)

    # When the main thread forks meanwhile, and the child writes through the same broker
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            broker.publish(OutgoingMessage("q", b"from-child"))
            code = 0
        except BaseException as exc:
            os.write(2, f"child: {exc!r}\n".encode())
        finally:
            os._exit(code)
    release.set()
    holder.join()
    _, status = os.waitpid(pid, 0)

    # Then the child's write went through (it was BUSY until its busy_timeout before)
    assert os.waitstatus_to_exitcode(status) == 0
    assert broker.queue_size("q") == 2
    broker.close()


def test_relative_and_absolute_urls_create_missing_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    relative = SQLiteBroker("sqlite:///rel/dir/broker.sqlite3")
    absolute = SQLiteBroker(f"sqlite:///{tmp_path}/abs/broker.sqlite3")
    relative.close()
    absolute.close()

    assert absolute.url.startswith("sqlite:////")
    assert relative.path == tmp_path / "rel" / "dir" / "broker.sqlite3"
    assert absolute.path == tmp_path / "abs" / "broker.sqlite3"

    assert (tmp_path / "rel" / "dir" / "broker.sqlite3").is_file()
    assert (tmp_path / "abs" / "broker.sqlite3").is_file()


@pytest.mark.parametrize(
    ("make_url", "expected"),
    [
        (lambda tmp: f"sqlite:///{tmp}/a-file/broker.sqlite3", "a-file"),  # parent is a file
        (lambda tmp: f"sqlite:///{tmp}/a-dir", "a-dir"),  # the database is a directory
        (lambda tmp: "sqlite://", "no file path"),
        (lambda tmp: "sqlite:///:memory:", "memory://"),
    ],
)
def test_a_bad_location_names_the_path_and_the_fix(
    tmp_path: Path, make_url: Any, expected: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "a-dir").mkdir()

    with pytest.raises(ImproperlyConfigured, match=expected) as raised:
        SQLiteBroker(make_url(tmp_path))

    assert "; " in str(raised.value)  # the hint after the problem


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_directory_is_reported(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)

    with pytest.raises(ImproperlyConfigured, match="not writable"):
        SQLiteBroker(f"sqlite:///{locked}/broker.sqlite3")
