"""A mixed fleet: real Celery 5 workers and clients beside chard's on one Redis.

Each test has its own key prefix (kombu's and Celery's backend's ``global_keyprefix``,
chard's ``?global_keyprefix=``), so both sides share queues and result keys with each
other and with nothing else. Workers are real processes: ``chard -A mixedfleet.chardside
worker`` and ``python -m celery -A mixedfleet.celeryside worker -P solo``.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import RUN_ID, redis_url
from tests.integration.workers import WorkerFactory, WorkerProcess, child_pythonpath

pytest.importorskip("celery", reason="the mixed-fleet tests need Celery (the dev extra)")

from mixedfleet import bodies, celeryside, chardside  # noqa: E402  (after the skip)

pytestmark = pytest.mark.slow

#: The repository root, on the workers' path: the test apps import ``tests.helpers``.
ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class Fleet:
    """One test's prefix, a client of each kind, and a way to start workers of each kind."""

    prefix: str
    chard: Any  # chard.Celery
    celery: Any  # celery.Celery
    workers: WorkerFactory
    compat: bool

    def env(self, side: str) -> dict[str, str]:
        return {
            "MIXED_PREFIX": self.prefix,
            "MIXED_COMPAT": "1" if self.compat else "0",
            "MIXED_SIDE": side,
            "PYTHONPATH": ROOT,
        }

    def chard_worker(self, *args: str) -> WorkerProcess:
        return self.workers.start(
            "-P", "solo", *args, app="mixedfleet.chardside", extra_env=self.env("chard")
        )

    def celery_worker(self, *args: str) -> WorkerProcess:
        """Start ``celery worker`` (solo pool) and wait for its "ready." line."""
        tmp = self.workers.tmp_path
        log = tmp / f"celery-{len(self.workers.started)}.log"
        argv = [
            sys.executable, "-m", "celery", "-A", "mixedfleet.celeryside", "worker",
            "-P", "solo", "-c", "1", "-l", "INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-n", f"celery-{uuid.uuid4().hex[:6]}@%h", *args,
        ]  # fmt: skip
        import os

        env = {**os.environ, **self.env("celery")}
        env["PYTHONPATH"] = child_pythonpath(ROOT)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        worker = WorkerProcess(proc, log, argv)
        self.workers.started.append(worker)
        worker.wait_for_log("ready.", timeout=30)
        return worker


def _fleet(tmp_path: Path, compat: bool) -> Iterator[Fleet]:
    prefix = f"chardtest-{RUN_ID}-mixed-{uuid.uuid4().hex[:6]}"
    redis_url(prefix)  # skips (or fails under CI) without Redis
    factory = WorkerFactory(tmp_path, {})
    fleet = Fleet(prefix, chardside.build(prefix, compat), celeryside.build(prefix), factory,
                  compat)  # fmt: skip
    yield fleet
    factory.cleanup()
    fleet.chard.close()
    fleet.celery.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A mixed fleet with chard's default settings."""
    yield from _fleet(tmp_path, compat=False)


@pytest.fixture
def compat_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A mixed fleet whose chard side sets ``chard_celery_compat = True``."""
    yield from _fleet(tmp_path, compat=True)


def test_celery_client_to_chard_worker_basics(fleet: Fleet) -> None:
    fleet.chard_worker()
    celery = fleet.celery
    add = celery.tasks["mixed.add"]
    assert add.delay(2, 3).get(timeout=15) == 5
    assert celery.send_task("mixed.add", (4, 4)).get(timeout=15) == 8
    assert add.apply_async((1, 1), priority=9).get(timeout=15) == 2
    # the result is Celery's meta: chard's AsyncResult reads it too
    result = add.delay(5, 5)
    assert result.get(timeout=15) == 10
    assert fleet.chard.AsyncResult(result.id).get(timeout=5) == 10


def test_chard_client_to_celery_worker_basics(fleet: Fleet) -> None:
    fleet.celery_worker()
    chard = fleet.chard
    add = chard.tasks["mixed.add"]
    assert add.delay(2, 3).get(timeout=15) == 5
    assert chard.send_task("mixed.add", (4, 4)).get(timeout=15) == 8
    assert add.apply_async((1, 1), priority=9).get(timeout=15) == 2
    result = add.delay(5, 5)
    assert result.get(timeout=15) == 10
    assert fleet.celery.AsyncResult(result.id).get(timeout=5) == 10
