"""Redis under stress, with real processes: a server restart under load, publish retries,
dead letters from the CLI, extended results, TLS/unix URLs and the idle command rate.

Each test that stops or restarts Redis runs its own ``redis-server`` on a free port (or a
unix socket) in ``tmp_path``, with the append-only file fsynced on every write, as a
deployment that must not lose queued work would run it; it is stopped by its PID only.
"""

from __future__ import annotations

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

from tests.helpers import wait_for
from tests.integration.workers import WorkerFactory

pytestmark = [pytest.mark.slow, pytest.mark.redis]

REDIS_SERVER = "redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
            app.build_task_message("relproj.tasks.record", (str(marks), i)) for i in range(2000)
        ]
        app.publish_batch(batch)
        ids = [message.id for message, _queue in batch]
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
        # The outage lasts until the worker's broker connection has noticed it (redis-py's
        # quick retries hide a blip under a second; the lease heartbeat, every 2.5 s, is
        # sure to notice), as a real restart or failover would.
        worker.wait_for_log("cannot reach the Redis broker", timeout=20)
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
        log = worker.output()
        assert "Broker connection restored" in log
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
