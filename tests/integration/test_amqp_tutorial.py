"""Celery's "Next steps" tutorial project on RabbitMQ with rpc:// results, run as a user would:
``chard -A proj worker -l INFO -Q hipri,celery`` and a client script in another process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import private_vhost
from tests.integration.workers import WorkerFactory, child_pythonpath

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]

CELERY_PY = """\
from chard import Celery

app = Celery('proj', broker={broker!r}, backend='rpc://', include=['proj.tasks'])
app.conf.update(result_expires=3600)

if __name__ == '__main__':
    app.start()
"""

TASKS_PY = """\
from .celery import app


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def xsum(numbers):
    return sum(numbers)
"""

CLIENT = """\
from chard import chain, group
from proj.celery import app
from proj.tasks import add, mul, xsum

print("add", add.delay(4, 4).get(timeout=30))
print("group", group(add.s(i, i) for i in range(10))().get(timeout=30))
print("chain", chain(add.s(4, 4) | mul.s(8))().get(timeout=30))
print("partial", (add.s(4) | mul.s(8))(16).get(timeout=30))
print("xsum", xsum.delay([1, 2, 3]).get(timeout=30))
later = add.apply_async((2, 2), queue='lopri', countdown=10)
print("lopri", app.broker.queue_size('lopri'), later.state)
"""


def test_the_tutorial_project_runs_unchanged_on_amqp_and_rpc(tmp_path: Path) -> None:
    with private_vhost() as url:
        package = tmp_path / "proj"
        package.mkdir()
        (package / "__init__.py").write_text("")
        (package / "celery.py").write_text(CELERY_PY.format(broker=url))
        (package / "tasks.py").write_text(TASKS_PY)
        workers = WorkerFactory(tmp_path, {"PYTHONPATH": str(tmp_path)})
        try:
            worker = workers.start("-Q", "hipri,celery", app="proj")
            assert ".> transport:   amqp://guest:**@" in worker.output()
            assert ".> results:     rpc://" in worker.output()
            client = subprocess.run(
                [sys.executable, "-c", textwrap.dedent(CLIENT)],
                cwd=tmp_path,
                env={"PYTHONPATH": child_pythonpath(str(tmp_path)), "PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert client.returncode == 0, client.stderr + worker.output()
            assert client.stdout.splitlines() == [
                "add 8",
                "group [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]",
                "chain 64",
                "partial 160",
                "xsum 6",
                "lopri 1 PENDING",  # waiting in RabbitMQ for its countdown; no worker reads lopri
            ]
            worker.wait_for_log("Task proj.tasks.xsum[")
        finally:
            workers.cleanup()
