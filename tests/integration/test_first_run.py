"""Issue 14: a first run that explains itself, tried as a new user would, through the CLI.

The banner shows at every log level; "ready." only once the broker and backend answer;
a broker that is down is retried with back-off (password hidden); and every
configuration mistake is one line on stderr with a non-zero exit from every command.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.integration.workers import WorkerFactory, run_cli

pytestmark = pytest.mark.slow

#: Every command that loads the app, with the arguments it needs.
COMMANDS = [
    ["worker", "-P", "solo"],
    ["beat"],
    ["call", "proj.tasks.add", "--args=[1, 2]"],
    ["result", "0b1e7c3c-0000-4000-8000-000000000000"],
    ["purge", "-f"],
]


def _write_app(tmp_path: Path, name: str, body: str) -> dict[str, str]:
    """Write module ``name`` defining ``app``; return the environment that imports it."""
    (tmp_path / f"{name}.py").write_text(
        "from chard import Celery\n\n" + textwrap.dedent(body).strip() + "\n"
    )
    return {"PYTHONPATH": str(tmp_path)}


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    """Assert the command failed with exactly one line on stderr, and return it."""
    assert done.returncode != 0, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


# -- the banner ------------------------------------------------------------------------------
def test_the_banner_shows_at_the_default_log_level_and_quiet_hides_it(
    sqlite_transport: dict[str, str], tmp_path: Path
) -> None:
    # Given the test project and nothing to do (--burst: the worker exits when idle)
    args = ["-A", "itproj", "worker", "-P", "solo", "--burst"]

    # When it starts at the default level (WARNING), and again with -q
    shown = run_cli(args, sqlite_transport, tmp_path)
    quiet = run_cli([*args, "-q"], sqlite_transport, tmp_path)
    quiet_global = run_cli(["-q", *args], sqlite_transport, tmp_path)

    # Then the banner (config, queues, tasks) is printed the first time only
    assert shown.returncode == 0, shown.stderr
    assert "[tasks]" in shown.stdout
    assert "  . itproj.tasks.add" in shown.stdout
    assert ".> transport:   sqlite:///" in shown.stdout
    for done in (quiet, quiet_global):
        assert done.returncode == 0, done.stderr
        assert "[tasks]" not in done.stdout + done.stderr


def test_the_embedded_defaults_hint_names_only_brokers_that_exist(tmp_path: Path) -> None:
    env = _write_app(tmp_path, "bare", "app = Celery('bare')")

    done = run_cli(["-A", "bare", "worker", "-P", "solo", "--burst"], env, tmp_path)

    assert done.returncode == 0, done.stderr
    assert "No broker configured: using the embedded SQLite file chard.sqlite3" in done.stdout
    assert "redis://" in done.stdout
    assert "RabbitMQ" not in done.stdout
    assert "PostgreSQL" not in done.stdout


# -- a broker that is down at start ------------------------------------------------------------
@pytest.mark.redis
def test_ready_only_once_a_broker_that_was_down_answers(
    workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a worker started against a password-protected Redis that is not running yet
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: this test starts its own server")
    port = free_port()
    url = f"redis://:s3cr3t-pw@127.0.0.1:{port}/0"
    worker = workers.start(
        "-P", "solo", ready=False, extra_env={"CHARD_BROKER_URL": url, "CHARD_RESULT_BACKEND": url}
    )
    worker.wait_for_log("(attempt 2)", timeout=20)
    assert "ready." not in worker.output()

    # When the server comes up
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass",
         "s3cr3t-pw", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        worker.wait_for_log("ready.", timeout=30)
    finally:
        worker.stop()
        server.terminate()
        server.wait(timeout=10)

    # Then it waited with growing pauses, said why, and never showed the password
    out = worker.output()
    assert "worker: cannot reach the broker at redis://:**@127.0.0.1" in out
    assert "not ready, retrying in 1s" in out
    assert "not ready, retrying in 2s" in out
    assert "s3cr3t-pw" not in out
    assert out.index("[tasks]") < out.index("cannot reach the broker") < out.index("ready.")


def test_with_retries_off_or_used_up_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    env = _write_app(
        tmp_path,
        "downapp",
        f"""
        app = Celery('down', broker='redis://:pw-123@127.0.0.1:{port}/0')
        app.conf.broker_connection_retry_on_startup = False
        """,
    )
    (tmp_path / "twice.py").write_text(
        "from downapp import app\napp.conf.broker_connection_retry_on_startup = True\n"
        "app.conf.broker_connection_max_retries = 1\n"
    )

    off = run_cli(["-A", "downapp", "worker", "-P", "solo"], env, tmp_path)
    used_up = run_cli(["-A", "twice:app", "worker", "-P", "solo", "-q"], env, tmp_path)

    line = _error_line(off)
    assert f"worker cannot reach the broker at 'redis://:**@127.0.0.1:{port}/0' after 1 " in line
    assert "start it or fix broker_url" in line
    assert "after 2 attempt(s)" in used_up.stderr
    assert "(attempt 1)" in used_up.stderr  # the one retry was logged
    for done in (off, used_up):
        assert "pw-123" not in done.stdout + done.stderr
        assert "ready." not in done.stdout + done.stderr


# -- configuration errors: one line, every command ---------------------------------------------
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_bad_setting_value_is_one_line_from_every_command(
    tmp_path: Path, command: list[str]
) -> None:
    env = _write_app(
        tmp_path,
        "badconf",
        "app = Celery('bad', broker='memory://', worker_prefetch_multiplier='four')",
    )

    done = run_cli(["-A", "badconf", *command], env, tmp_path)

    line = _error_line(done)
    assert "setting 'worker_prefetch_multiplier' is 'four' (str); it must be int" in line


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(
    ("option", "url", "expected"),
    [
        ("-b", "kafka://localhost", "unknown broker URL scheme 'kafka'"),
        ("-b", "sqs://key:pw-9@localhost//", "uses sqs:// (Amazon SQS), which chard does not "
         "support yet; use one of sqlite://, memory://, redis://, rediss://, unix://, amqp://"),
        ("--result-backend", "amqp://", "uses amqp:// (Celery 4's AMQP backend, removed in "
         "Celery 5: use rpc://), which chard does not support yet"),
    ],
    ids=["unknown", "sqs", "amqp-backend"],
)  # fmt: skip
def test_a_url_chard_cannot_use_is_one_line_from_every_command(
    tmp_path: Path, command: list[str], option: str, url: str, expected: str
) -> None:
    # Even a command that would not use it (beat and the backend): the configuration is wrong
    env = _write_app(
        tmp_path, "urlapp", "app = Celery('urls', broker='memory://', backend='memory://')"
    )

    done = run_cli(["-A", "urlapp", option, url, *command], env, tmp_path)

    line = _error_line(done)
    assert expected in line
    assert "pw-9" not in done.stderr
    assert "ready." not in done.stdout + done.stderr


def test_the_traceback_is_shown_with_traceback_or_debug(tmp_path: Path) -> None:
    env = _write_app(
        tmp_path, "rpcapp", "app = Celery('rpc', broker='memory://', backend='amqp://')"
    )

    plain = run_cli(["-A", "rpcapp", "worker", "-P", "solo"], env, tmp_path)
    traced = run_cli(["--traceback", "-A", "rpcapp", "worker", "-P", "solo"], env, tmp_path)
    debug = run_cli(["-A", "rpcapp", "worker", "-P", "solo", "-l", "DEBUG"], env, tmp_path)

    assert "Traceback" not in plain.stderr
    for done in (traced, debug):
        assert done.returncode != 0
        assert "Traceback (most recent call last)" in done.stderr
        assert "ImproperlyConfigured: result backend 'amqp://' uses amqp://" in done.stderr
