"""Celery 5 and chard on one RabbitMQ vhost: each one's client feeds the other's worker.

Needs Celery (the ``bench`` extra); skipped without it. Outcomes are read from the worker
logs, so no result backend is shared.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import private_vhost, wait_for
from tests.integration.workers import CHARD, child_pythonpath

pytest.importorskip("celery")

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]

APP = """\
from {package} import Celery

app = Celery('{name}', broker={broker!r})


@app.task(name='interop.add')
def add(x, y):
    return x + y
"""

CLIENT = """\
from {module} import add

print(add.delay(2, 3).id)
print(add.apply_async((5, 5), countdown=1).id)
"""


def _write(tmp_path: Path, broker: str) -> None:
    (tmp_path / "celapp.py").write_text(APP.format(package="celery", name="celapp", broker=broker))
    (tmp_path / "chapp.py").write_text(APP.format(package="chard", name="chapp", broker=broker))


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": child_pythonpath(str(tmp_path))}


def _send(tmp_path: Path, module: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CLIENT.format(module=module))],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _run_worker(argv: list[str], tmp_path: Path, log: Path, done: list[str]) -> str:
    """Start a worker, wait until its log shows every task id in ``done`` succeeded; kill it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=_env(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def finished() -> bool:
            assert proc.poll() is None, log.read_text()
            return all(f"[{task_id}] succeeded in" in log.read_text() for task_id in done)

        wait_for(finished, timeout=60)
        return log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _result(log: str, task_id: str) -> str:
    """The value a worker logged for ``task_id`` ("... succeeded in 0.01s: 5" -> "5")."""
    (line,) = [ln for ln in log.splitlines() if f"[{task_id}] succeeded in" in ln]
    return line.rsplit(": ", 1)[1]


def test_a_chard_client_feeds_a_celery_worker_and_the_reverse(tmp_path: Path) -> None:
    celery_bin = str(Path(sys.executable).with_name("celery"))
    with private_vhost() as url:
        _write(tmp_path, url)

        # chard sends (a countdown included, held in RabbitMQ's delay queues), Celery runs
        sent = _send(tmp_path, "chapp")
        log = _run_worker(
            [celery_bin, "-A", "celapp", "worker", "-P", "solo", "-l", "INFO"],
            tmp_path,
            tmp_path / "celery.log",
            sent,
        )
        assert [_result(log, task_id) for task_id in sent] == ["5", "10"]

        # Celery sends, chard runs
        sent = _send(tmp_path, "celapp")
        log = _run_worker(
            [CHARD, "-A", "chapp", "worker", "-P", "solo", "-l", "INFO"],
            tmp_path,
            tmp_path / "chard.log",
            sent,
        )
        assert [_result(log, task_id) for task_id in sent] == ["5", "10"]


ROUTED_APP = """\
from {package} import Celery
from {kombu} import Exchange, Queue

app = Celery('{name}', broker={broker!r})
media = Exchange('media', type='topic')
app.conf.task_queues = (
    Queue('celery', Exchange('celery'), routing_key='celery'),
    Queue('videos', media, routing_key='media.video.#'),
    Queue('images', media, routing_key='media.image.#'),
)
app.conf.task_routes = {{
    'routed.encode': {{'queue': 'videos', 'routing_key': 'media.video.encode'}},
    'routed.thumb': {{'exchange': 'media', 'routing_key': 'media.image.thumb'}},
}}


@app.task(name='routed.encode')
def encode(x):
    return f'encoded {{x}}'


@app.task(name='routed.thumb')
def thumb(x):
    return f'thumb {{x}}'
"""

ROUTED_CLIENT = """\
from {module} import encode, thumb

print(encode.delay(1).id)
print(thumb.delay(2).id)
"""


def test_topic_routes_cross_between_celery_and_chard(tmp_path: Path) -> None:
    # Given the same task_queues (a topic exchange) and task_routes in a Celery and a chard app
    celery_bin = str(Path(sys.executable).with_name("celery"))
    with private_vhost() as url:
        for package, kombu, name in ("celery", "kombu", "celroute"), ("chard", "chard", "chroute"):
            text = ROUTED_APP.format(package=package, kombu=kombu, name=name, broker=url)
            (tmp_path / f"{name}.py").write_text(text)

        # When each one's client sends while the other's worker consumes the topic queues
        consume = ["worker", "-P", "solo", "-Q", "videos,images", "-l", "INFO"]
        for worker, client in (
            ([celery_bin, "-A", "celroute", *consume], "chroute"),
            ([CHARD, "-A", "chroute", *consume], "celroute"),
        ):
            log = tmp_path / f"{client}-to-worker.log"
            proc = _start(worker, tmp_path, log)
            try:
                _wait_in_log(proc, log, ["ready."])
                sent = _send_code(tmp_path, ROUTED_CLIENT.format(module=client))

                # Then each task ran from the queue its route names, by its routing key
                text = _wait_in_log(proc, log, [f"[{task_id}] succeeded" for task_id in sent])
                assert [_result(text, task_id) for task_id in sent] == ["'encoded 1'", "'thumb 2'"]
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _wait_in_log(proc: subprocess.Popen[bytes], log: Path, wanted: list[str]) -> str:
    """Wait until every text in ``wanted`` is in the log of the live ``proc``; return the log."""

    def found() -> bool:
        assert proc.poll() is None, log.read_text()
        return all(text in log.read_text() for text in wanted)

    wait_for(found, timeout=60)
    return log.read_text()


def _start(argv: list[str], tmp_path: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, cwd=tmp_path, env=_env(tmp_path), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _send_code(tmp_path: Path, code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.split()
