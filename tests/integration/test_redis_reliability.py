"""Redis under stress, with real processes: a server restart under load, publish retries,
dead letters from the CLI, extended results, TLS/unix URLs and the idle command rate.

Each test that stops or restarts Redis runs its own ``redis-server`` on a free port (or a
unix socket) in ``tmp_path``, with the append-only file fsynced on every write, as a
deployment that must not lose queued work would run it; it is stopped by its PID only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from chard.brokers.base import OutgoingMessage
from chard.brokers.redis import RedisBroker
from chard.exceptions import BrokerConnectionError, WorkerLostError
from chard.sending import SendOptions, build_message
from tests.helpers import free_port, wait_for
from tests.integration.workers import WorkerFactory, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.redis]

REDIS_SERVER = "redis-server"


class RedisServer:
    """A private ``redis-server`` for one test, durable across its own restarts."""

    def __init__(self, directory: Path, *, port: int | None = None, unix: bool = False) -> None:
        self.directory = directory
        self.port = 0 if unix else (port or free_port())
        self.socket_path = directory / "r.sock" if unix else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        if self.socket_path is not None:
            return f"unix://{self.socket_path}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        if self.socket_path is not None:
            return redis.Redis(unix_socket_path=str(self.socket_path))
        return redis.Redis(host="127.0.0.1", port=self.port)

    def start(self) -> None:
        argv = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        if self.socket_path is not None:
            argv += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        log = open(self.directory / f"redis-{self.starts}.log", "wb")  # noqa: SIM115
        with log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        client = self.client()
        try:
            wait_for(lambda: self._answers(client), timeout=10)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM (Redis flushes the AOF and exits) and wait for the process to end."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)

    def _answers(self, client: redis.Redis) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"redis-server exited ({self.proc.returncode}); see {self.directory}")
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.BusyLoadingError):
            return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def transport_for(server: RedisServer) -> dict[str, str]:
    return {"CHARD_BROKER_URL": server.url, "CHARD_RESULT_BACKEND": server.url}


@pytest.fixture
def relproj_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Return a function pointing the ``relproj`` app (in this process) at a transport."""
    from relproj.celery import app

    def point(env: dict[str, str]) -> Any:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        app.close()
        return app

    yield point
    app.close()


def run_counts(marks: Path) -> Counter[str]:
    return Counter(marks.read_text().split()) if marks.exists() else Counter()


# -- 1. a redis-server restart under load ------------------------------------------------


def test_redis_restart_mid_drain_loses_nothing(
    private_redis: RedisServer, relproj_on: Any, tmp_path: Path
) -> None:
    # Given a prefork worker draining 2,000 queued tasks from a durable Redis
    app = relproj_on(transport_for(private_redis))
    workers = WorkerFactory(tmp_path, transport_for(private_redis))
    try:
        worker = workers.start("-c", "2", app="relproj")
        marks = tmp_path / "marks"
        batch = [
            build_message(app, "relproj.tasks.record", (str(marks), i), None, SendOptions())
            for i in range(2000)
        ]
        app.publish(batch)
        ids = [routed.message.id for routed in batch]
        # ... and a client blocked on the last result (pub/sub) across the restart
        waited: dict[str, Any] = {}

        def wait_last() -> None:
            try:
                waited["value"] = app.AsyncResult(ids[-1]).get(timeout=50)
            except BaseException as exc:  # reported by the assertion below
                waited["error"] = exc

        waiter = threading.Thread(target=wait_last, daemon=True)
        waiter.start()
        wait_for(lambda: sum(run_counts(marks).values()) >= 300, timeout=20)

        # When redis-server is stopped and started again on the same port mid-drain
        down = time.monotonic()
        private_redis.stop()
        done_at_restart = len(run_counts(marks))
        # The outage lasts until a consumer's broker connection has noticed it (redis-py's
        # quick retries hide a blip under a second; the lease heartbeat, every 2.5 s, is
        # sure to notice), as a real restart or failover would. Not the revocation
        # reader's notice: that path does not log "restored", the consumer's do.
        wait_for(
            lambda: any(
                notice in worker.output()
                for notice in ("Broker connection lost", "Lease heartbeat failed")
            ),
            timeout=20,
        )
        private_redis.start()
        up = time.monotonic()
        wait_for(lambda: len(run_counts(marks)) > done_at_restart + 50, timeout=20)
        resumed = time.monotonic()

        # Then every task completes, with its result stored, and nothing is lost
        assert done_at_restart < 2000, "the queue drained before the restart: not a test"
        metas = app.backend.wait_for_many(ids, timeout=40)
        assert [m["status"] for m in metas] == ["SUCCESS"] * 2000
        assert [m["result"] for m in metas] == list(range(2000))
        counts = run_counts(marks)
        assert set(counts) == set(ids)
        waiter.join(timeout=10)
        assert waited == {"value": 1999}

        # ... the same worker process noticed the loss and came back by itself
        assert worker.proc.poll() is None
        # (a consumer whose heartbeat failed says so at its next beat, up to 2.5 s after the
        # server is back: the drain can finish before that)
        worker.wait_for_log("Broker connection restored", timeout=20)
        log = worker.output()
        if "Connection to Redis lost" in log:  # a child's result store retried
            assert "Connection to Redis restored" in log
        assert "Traceback" not in log, log[-5000:]

        # ... and duplicates are few. At-least-once: a task whose ack (or result store)
        # was cut by the restart runs again once Redis is back. Only messages in flight at
        # that moment can repeat: at most concurrency + prefetch (2 + 2 * 4) of them.
        duplicates = sum(n - 1 for n in counts.values())
        print(
            f"\nredis down+up {up - down:.2f}s; worker resumed {resumed - up:.2f}s after; "
            f"{done_at_restart} done at restart; {duplicates} duplicate run(s)"
        )
        assert duplicates <= 10, counts.most_common(12)
        worker.stop()
    finally:
        workers.cleanup()


def test_a_fetch_repeated_after_a_lost_reply_keeps_both_leases(
    private_redis: RedisServer,
) -> None:
    """redis-py re-sends a command whose reply a restart cut off, with the same arguments.

    The first run of the fetch script did lease a message; the repeat must lease the next
    one under new tags, not overwrite the first lease (which lost that message for good).
    """
    broker = RedisBroker(private_redis.url)
    client = private_redis.client()
    try:
        broker.publish([OutgoingMessage("q", b"first"), OutgoingMessage("q", b"second")])
        args = ["", broker.consumer_id, broker.lease_timeout, 1, "same-base", "", "0q", "1", 0, "q"]

        broker._fetch_script(args=args)
        broker._fetch_script(args=args)  # the retry, identical arguments

        assert sorted(client.hvals("chard.held")) == [b"first", b"second"]
        assert client.zcard("chard.held.expiry") == 2
    finally:
        client.close()
        broker.close()


def test_revocations_outlive_a_redis_restart_and_are_followed_again(
    private_redis: RedisServer, relproj_on: Any, tmp_path: Path
) -> None:
    # Given a worker, and a task that waits in Redis for its countdown, revoked
    app = relproj_on(transport_for(private_redis))
    workers = WorkerFactory(tmp_path, transport_for(private_redis))
    marks = tmp_path / "marks"
    try:
        worker = workers.start("-c", "1", app="relproj")
        # (a task run proves it reads the revoke log: "ready." comes before that)
        assert app.send_task("relproj.tasks.describe", (1,)).get(timeout=10) == "1"
        before = app.send_task("relproj.tasks.record", (str(marks), 1), countdown=3)
        before.revoke()
        worker.wait_for_log(f"Tasks flagged as revoked: {before.id}")

        # When Redis restarts, the worker's revocation reader notices and comes back
        private_redis.stop()
        worker.wait_for_log("Cannot read revocations", timeout=20)
        private_redis.start()
        worker.wait_for_log("Reading revocations again", timeout=40)

        # Then a revocation sent after the restart reaches it, and neither task runs
        after = app.send_task("relproj.tasks.record", (str(marks), 2), countdown=1)
        after.revoke()
        worker.wait_for_log(f"Tasks flagged as revoked: {after.id}")
        wait_for(lambda: {before.state, after.state} == {"REVOKED"}, timeout=20)
        assert not marks.exists()

        # And the revoke log itself survived: a worker started now knows both
        newcomer = workers.start("-c", "1", app="relproj")
        newcomer.wait_for_log("2 revoked task id(s) in force")
    finally:
        workers.cleanup()


# -- 2. the client's publish retry policy --------------------------------------------------

FAST_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.3}


def test_publish_to_a_dead_redis_retries_then_names_the_url_and_the_fix(
    relproj_on: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a broker URL (with a password) where nothing listens
    port = free_port()
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    app = relproj_on({"CHARD_BROKER_URL": url, "CHARD_RESULT_BACKEND": url})
    monkeypatch.setitem(app.conf, "task_publish_retry_policy", FAST_POLICY)
    from relproj.tasks import record

    # When a client sends a task
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError) as caught:
        record.delay("/nowhere", 1)
    elapsed = time.monotonic() - started

    # Then it tried 1 + max_retries times, sleeping per the policy (0.1 s, then 0.3 s)
    retries = [r.getMessage() for r in caplog.records if "Publish failed" in r.getMessage()]
    assert len(retries) == 2
    assert "retry 1/2 in 0.10s" in retries[0]
    assert "retry 2/2 in 0.30s" in retries[1]
    assert 0.4 <= elapsed < 15
    # ... and the error names the redacted URL, the count, the cause and both fixes
    message = str(caught.value)
    print(f"\n{message}")
    assert message.startswith(f"cannot publish to the broker at 'redis://:**@127.0.0.1:{port}/0'")
    assert "s3cret" not in message
    assert "unreachable after 3 attempt(s)" in message
    assert "Connection refused" in message
    assert "Start the broker or fix broker_url" in message
    assert "raise max_retries or interval_max in task_publish_retry_policy" in message
    assert isinstance(caught.value, ConnectionError)  # Celery users catch OperationalError/this


def test_publish_succeeds_when_redis_comes_back_within_the_retry_window(
    relproj_on: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    # Given a Redis that is down when the client publishes
    server = RedisServer(tmp_path)
    app = relproj_on(transport_for(server))
    policy = {"max_retries": 40, "interval_start": 0.1, "interval_step": 0.1, "interval_max": 0.5}
    monkeypatch.setitem(app.conf, "task_publish_retry_policy", policy)
    from relproj.tasks import record

    marks = tmp_path / "marks"
    sent: dict[str, Any] = {}

    def send() -> None:
        try:
            sent["result"] = record.delay(str(marks), 7)
        except BaseException as exc:  # reported by the assertion below
            sent["error"] = exc

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        # When the server starts while the client is retrying
        wait_for(lambda: "Publish failed" in caplog.text, timeout=10)
        server.start()
        sender.join(timeout=30)

        # Then the publish went through, once, and a worker runs the task
        assert "error" not in sent, sent
        assert app.broker.queue_size("celery") == 1
        workers = WorkerFactory(tmp_path, transport_for(server))
        try:
            workers.start("-c", "1", app="relproj")
            assert sent["result"].get(timeout=15) == 7
        finally:
            workers.cleanup()
        assert run_counts(marks) == {sent["result"].id: 1}
    finally:
        sender.join(timeout=30)
        server.stop()


# -- 3. the dead-letter store from the CLI -------------------------------------------------


def chard_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["-A", "relproj", "dead-letters", *args], env, cwd)


def test_a_poison_pill_is_listed_and_runs_after_a_redrive(
    transport: dict[str, str], relproj_on: Any, tmp_path: Path
) -> None:
    app = relproj_on(transport)
    workers = WorkerFactory(tmp_path, transport)
    try:
        # Given a task that kills its worker process every time (task_max_deliveries=2)
        worker = workers.start("-c", "1", app="relproj")
        from relproj.tasks import poison

        result = poison.delay(3)
        with pytest.raises(WorkerLostError, match="delivered 3 times"):
            result.get(timeout=30)
        worker.stop()

        # When an operator lists the dead letters
        listed = chard_cli(transport, tmp_path, "list")
        as_json = chard_cli(transport, tmp_path, "list", "--json")

        # Then the poison pill is there, with its task, reason, age and delivery count
        assert listed.returncode == 0, listed.stderr
        print(f"\n{listed.stdout}")
        [letter] = json.loads(as_json.stdout)
        assert letter["queue"] == "celery"
        assert letter["task"] == "relproj.tasks.poison"
        assert letter["task_id"] == result.id
        assert letter["deliveries"] == 3
        assert "delivered 3 times and its worker died each time" in letter["reason"]
        assert letter["age"].endswith(("s", "m"))
        header = listed.stdout.splitlines()[0].split()
        assert header[:4] == ["ID", "QUEUE", "TASK", "TASK"]
        assert "DELIVERIES" in header
        assert "REASON" in header
        assert f"relproj.tasks.poison  {result.id}" in listed.stdout
        assert "1 dead letter(s)." in listed.stdout

        # When the fixed release is deployed and the letter re-driven
        workers.start("-c", "1", app="relproj", extra_env={"RELPROJ_FIXED": "1"})
        redriven = chard_cli(transport, tmp_path, "redrive", letter["id"])

        # Then it runs (its death count reset: a full set of deliveries) and succeeds
        assert redriven.returncode == 0, redriven.stderr
        assert f"relproj.tasks.poison[{result.id}] -> queue 'celery'" in redriven.stdout
        assert "Re-drove 1 dead letter(s)." in redriven.stdout
        wait_for(lambda: app.AsyncResult(result.id).state == "SUCCESS", timeout=20)
        assert app.AsyncResult(result.id).result == "fixed 3"
        assert chard_cli(transport, tmp_path, "list").stdout.strip() == "No dead letters."

        # ... and an unknown id, or no id at all, is refused with a hint
        again = chard_cli(transport, tmp_path, "redrive", letter["id"])
        assert again.returncode == 1
        assert f"no dead letter with id {letter['id']}; see `dead-letters list`" in again.stderr
        assert chard_cli(transport, tmp_path, "redrive").returncode == 2
    finally:
        workers.cleanup()


def test_redrive_all(transport: dict[str, str], relproj_on: Any, tmp_path: Path) -> None:
    # Given three undecodable messages set aside by a worker
    app = relproj_on(transport)
    for body in (b"\x00one", b"\x00two", b"\x00three"):
        app.broker.publish(OutgoingMessage("side", body))
    workers = WorkerFactory(tmp_path, transport)
    try:
        worker = workers.start("-c", "1", "-Q", "side", app="relproj")
        wait_for(lambda: len(app.broker.dead_letters()) == 3, timeout=15)
        worker.stop()
    finally:
        workers.cleanup()

    # When all are re-driven
    redriven = chard_cli(transport, tmp_path, "redrive", "--all")

    # Then each is back on its queue, unchanged
    assert redriven.returncode == 0, redriven.stderr
    assert "Re-drove 3 dead letter(s)." in redriven.stdout
    assert app.broker.dead_letters() == []
    assert app.broker.queue_size("side") == 3
    assert app.broker.purge("side") == 3


# -- 4. result_extended ---------------------------------------------------------------------


def test_extended_results_are_stored_as_celery_does(
    private_redis: RedisServer, relproj_on: Any, tmp_path: Path
) -> None:
    # Given a worker for an app with result_extended=True
    relproj_on(transport_for(private_redis))
    workers = WorkerFactory(tmp_path, transport_for(private_redis))
    try:
        workers.start("-c", "1", "-n", "node7@%h", app="relproj")
        from relproj.tasks import describe

        # When a task runs
        result = describe.apply_async((5,), {"label": "x="}, queue="celery")
        assert result.get(timeout=15) == "x=5"
    finally:
        workers.cleanup()

    # Then the raw value at Celery's key carries Celery's extended fields
    client = private_redis.client()
    try:
        raw = client.get(f"celery-task-meta-{result.id}")
        ttl = client.ttl(f"celery-task-meta-{result.id}")
    finally:
        client.close()
    assert raw is not None
    meta = json.loads(raw)
    assert meta["status"] == "SUCCESS"
    assert meta["result"] == "x=5"
    assert meta["task_id"] == result.id
    assert meta["name"] == "relproj.tasks.describe"
    assert meta["args"] == [5]  # a real JSON list, not a repr
    assert meta["kwargs"] == {"label": "x="}
    assert meta["worker"] == f"node7@{socket.gethostname()}"
    assert meta["retries"] == 0
    assert meta["queue"] == "celery"
    assert meta["date_done"]
    assert 3500 < ttl <= 3600  # result_expires
    # ... and the client reads them back as Celery's AsyncResult does
    assert result.name == "relproj.tasks.describe"
    assert result.args == [5]
    assert result.kwargs == {"label": "x="}
    assert result.worker == meta["worker"]
    assert result.queue == "celery"
    assert result.retries == 0


# -- 5. a unix socket, end to end ---------------------------------------------------------


def test_round_trip_over_a_unix_socket(relproj_on: Any, tmp_path: Path) -> None:
    # Given a redis-server on a unix socket only (no TCP port)
    server = RedisServer(tmp_path, unix=True)
    server.start()
    try:
        env = transport_for(server)
        assert env["CHARD_BROKER_URL"].startswith("unix://")
        app = relproj_on(env)
        workers = WorkerFactory(tmp_path, env)
        try:
            worker = workers.start("-c", "1", app="relproj")
            from relproj.tasks import describe

            # When a task goes through it, Then the result comes back through it too
            assert describe.delay(3, label="u").get(timeout=15) == "u3"
            assert "unix://" in worker.output()  # the banner's transport
        finally:
            workers.cleanup()
        assert app.broker.queue_size("celery") == 0
    finally:
        server.stop()


# -- 6. no busy polling ---------------------------------------------------------------------

#: What an idle worker may cost its Redis, in client commands per second per consumer
#: process (each prefork child consumes by itself). Expected per child: one fetch script
#: and one blocking BLMOVE per poll interval (1 s) and a lease heartbeat script every
#: lease_timeout / 4 (2.5 s), 2.4/s; and for the whole node one blocking XREAD of the
#: revoke channel every 2 s (the parent follows it for its children).
IDLE_COMMANDS_PER_SECOND_PER_PROCESS = 3.0
IDLE_CHILDREN = 2


def test_an_idle_worker_blocks_on_redis(
    private_redis: RedisServer, relproj_on: Any, tmp_path: Path
) -> None:
    # Given an idle prefork worker (2 children) on a Redis nobody else uses
    relproj_on(transport_for(private_redis))
    workers = WorkerFactory(tmp_path, transport_for(private_redis))
    client = private_redis.client()
    try:
        worker = workers.start("-c", str(IDLE_CHILDREN), app="relproj")
        # Settled in: every child blocks on its queue and both channel readers follow
        wait_for(lambda: _calls(client).get("blmove", 0) >= IDLE_CHILDREN, timeout=20)
        wait_for(lambda: _calls(client).get("xread", 0) >= 2, timeout=20)

        # When we watch the server's commands for about 5 seconds
        client.config_resetstat()
        sent, elapsed = _client_commands(private_redis, seconds=5.0)
        processed = int(client.info("stats")["total_commands_processed"]) - 1  # our RESETSTAT
        calls = _calls(client)
        assert worker.proc.poll() is None

        # Then the worker sent a few commands per second, most of its time blocked;
        # the scripts it runs cost a dozen more cheap calls server-side per fetch
        # (a connection's set-up -- HELLO, SCRIPT LOAD, CLIENT -- happens once, not per second:
        # a child still connecting when the window opens is not polling)
        setup = {"HELLO", "SCRIPT", "CLIENT"}
        rate = sum(n for command, n in sent.items() if command not in setup) / elapsed
        print(
            f"\nidle worker: {rate:.2f} client commands/s {dict(sent)}; "
            f"{processed / elapsed:.1f}/s server-side including script calls {calls}"
        )
        assert rate <= IDLE_COMMANDS_PER_SECOND_PER_PROCESS * IDLE_CHILDREN, sent
        assert sent["BLMOVE"] >= 3 * IDLE_CHILDREN  # each blocks, rather than polling
        # Two readers per node, each blocking up to 2 s: the revoke log and the control
        # channel (the mailbox that answers inspect/control, issue 11)
        assert sent["XREAD"] <= 2 * (5.0 / 2 + 1)
        assert processed / elapsed <= 20 * IDLE_CHILDREN, calls
    finally:
        client.close()
        workers.cleanup()


def _calls(client: redis.Redis) -> dict[str, int]:
    """Return calls per command from INFO commandstats (``cmdstat_evalsha`` -> ``evalsha``)."""
    info = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


def _client_commands(server: RedisServer, seconds: float) -> tuple[Counter[str], float]:
    """Count the commands clients send (MONITOR, minus those scripts run) for ``seconds``."""
    client = server.client()
    sent: Counter[str] = Counter()
    try:
        with client.monitor() as monitor:
            started = time.monotonic()
            # An idle worker sends something every second, so next_command() returns.
            while time.monotonic() - started < seconds:
                command = monitor.next_command()
                if command["client_type"] != "lua":
                    sent[str(command["command"]).split(" ", 1)[0].upper()] += 1
            elapsed = time.monotonic() - started
    finally:
        client.close()
    return sent, elapsed
