"""A PostgreSQL server restarted (and crashed) under a draining worker loses nothing (issue 16).

The test runs a private server (``initdb`` into a temporary directory, on a free port), so
it can stop it without touching the shared one: a worker drains tasks with results while
the server goes down, ``immediate`` (a crash: no shutdown checkpoint) and then ``fast``,
and comes back; every task still runs and every result arrives.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import IN_CI, free_port, wait_for
from tests.integration.workers import WorkerFactory, project_tasks

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BIN = Path("/usr/lib/postgresql/15/bin")


class PrivatePostgres:
    """A PostgreSQL server of this test's own, run as the ``postgres`` user."""

    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = free_port()
        self.url = f"postgresql://root@127.0.0.1:{self.port}/postgres"
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, "postgres")
        self._as_postgres(BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "root")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._pg_ctl("-o", options, "-l", self.log, "-w", "start")

    def stop(self, mode: str) -> None:
        self._pg_ctl("-m", mode, "-w", "stop")

    def _pg_ctl(self, *args: object) -> None:
        self._as_postgres(BIN / "pg_ctl", "-D", self.data, *args)

    @staticmethod
    def _as_postgres(*argv: object) -> None:
        command = ["runuser", "-u", "postgres", "--", *map(str, argv)]
        subprocess.run(command, check=True, capture_output=True, timeout=120)


@pytest.fixture
def server() -> Iterator[PrivatePostgres]:
    if not (BIN / "initdb").exists() or shutil.which("runuser") is None:
        message = f"no PostgreSQL 15 binaries in {BIN} (or no runuser) to run a private server"
        if IN_CI:
            pytest.fail(message + " (CI=true: a missing service is a failure)")
        pytest.skip(message)
    root = Path(f"/tmp/chard-pg-{os.getpid()}-{free_port()}")  # the postgres user must reach it
    server = PrivatePostgres(root)
    server.start()
    yield server
    with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
        server.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def transport(server: PrivatePostgres) -> dict[str, str]:
    return {"CHARD_BROKER_URL": server.url, "CHARD_RESULT_BACKEND": server.url}


@pytest.fixture
def itproj_tasks(transport: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    yield from project_tasks("itproj", transport, monkeypatch)


def test_a_server_crash_and_a_restart_mid_drain_lose_nothing(
    server: PrivatePostgres, itproj_tasks: Any, workers: WorkerFactory
) -> None:
    # Given a worker draining 200 tasks whose results this process waits for
    worker = workers.start("-c", "2")
    results = [itproj_tasks.add.delay(i, 1) for i in range(200)]

    # When the server crashes (immediate stop) once some are done, and restarts; and then
    # stops cleanly (fast) and restarts
    for done, mode in ((20, "immediate"), (100, "fast")):
        wait_for(lambda n=done: sum(r.ready() for r in results) >= n, timeout=120)
        server.stop(mode)
        server.start()

    # Then every task ran and every result came back, with the right value
    assert [r.get(timeout=120) for r in results] == [i + 1 for i in range(200)]
    assert worker.proc.poll() is None
    assert "PostgreSQL notifications (listen) lost" in worker.output()  # it did see the crash
