"""Beat end to end: real ``chard beat`` / ``chard worker`` processes on a tmp broker.

Every run is executed by a worker running ``beatapp.record``, which appends the run's beat slot
header (``<entry>:<scheduled time>``) to a file, so the tests count sends per slot across
processes, restarts and a leader's SIGKILL. Nothing sleeps to synchronise: every wait polls the
log or the run file with a deadline.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chard.beat.store_records import slot_key
from chard.beat.store_sqlite import SQLiteScheduleStore
from tests.helpers import (
    drop_postgres_schema,
    free_port,
    postgres_url,
    private_vhost,
    redis_url,
    wait_for,
)
from tests.integration.workers import (
    CHARD,
    WorkerFactory,
    WorkerProcess,
    child_pythonpath,
    run_cli,
)

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent  # beatapp lives here: put on PYTHONPATH as a top-level package
TICK = {"tick": {"task": "beatapp.record", "every": 1.0, "args": ["tick"]}}


class Beats:
    """Start ``chard -A beatapp beat`` processes for one test; kill leftovers by PID."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.started: list[WorkerProcess] = []

    def start(
        self,
        *args: str,
        cwd: Path | None = None,
        ready: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """Start a beat (in ``cwd``: another "host"); wait for its loop unless ``ready=False``."""
        log = self.tmp_path / f"beat-{len(self.started)}.log"
        argv = [CHARD, "-A", "beatapp", "beat", "-l", "INFO", *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=cwd or self.tmp_path,
                env={**os.environ, **self.env, **(extra_env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        beat = WorkerProcess(proc, log, argv)
        self.started.append(beat)
        if ready:
            beat.wait_for_log("beat: Starting...")
        return beat

    def cleanup(self) -> None:
        for beat in self.started:
            if beat.proc.poll() is None:
                os.killpg(beat.proc.pid, signal.SIGKILL)
                beat.proc.wait(timeout=10)


@pytest.fixture
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The tmp SQLite broker by default; ``indirect`` parametrizing with "redis" or "postgres"
    swaps it (a PostgreSQL schema of the test's own, dropped after)."""
    kind = getattr(request, "param", "sqlite")
    if kind == "redis":
        yield redis_url()
    elif kind == "postgres":
        url = postgres_url()
        yield url
        drop_postgres_schema(url)
    else:
        yield f"sqlite:///{tmp_path}/chard.sqlite3"


@pytest.fixture
def env(broker_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of every process: the broker, the run file, beatapp's path."""
    return {
        "CHARD_BROKER_URL": broker_url,
        "CHARD_RESULT_BACKEND": broker_url,
        "BEATAPP_OUT": str(tmp_path / "runs.jsonl"),
        "BEATAPP_SCHEDULE": json.dumps(TICK),
        "PYTHONPATH": child_pythonpath(str(HERE)),
    }


@pytest.fixture
def beats(tmp_path: Path, env: dict[str, str]) -> Iterator[Beats]:
    factory = Beats(tmp_path, env)
    yield factory
    factory.cleanup()


@pytest.fixture
def workers(tmp_path: Path, env: dict[str, str]) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(tmp_path, env)
    yield factory
    factory.cleanup()


def start_worker(workers: WorkerFactory, env: dict[str, str], *args: str) -> WorkerProcess:
    return workers.start("-P", "threads", "-c", "4", *args, app="beatapp", extra_env=env)


def runs(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["BEATAPP_OUT"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def slots(env: dict[str, str], label: str = "tick") -> list[str]:
    return [r["slot"] for r in runs(env) if r["label"] == label]


def slot_time(slot: str) -> datetime:
    return datetime.fromisoformat(slot.partition(":")[2])


def cli(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["-A", "beatapp", "beat", *args], env, tmp_path)


def test_beat_and_worker_run_the_schedule_and_the_handler_entry(
    beats: Beats, workers: WorkerFactory, env: dict[str, str], tmp_path: Path
) -> None:
    # Given beat_schedule "tick" every 1 s and add_periodic_task(1.5, ...) in on_after_configure
    env["BEATAPP_PERIODIC"] = "1.5"
    start_worker(workers, env)
    beat = beats.start()

    # When they run for a few seconds
    wait_for(lambda: len(slots(env)) >= 3 and len(slots(env, "handler")) >= 2, timeout=10)

    # Then both entries ran, each slot once, and the start-up summary listed them with next runs
    all_slots = [r["slot"] for r in runs(env)]
    assert len(all_slots) == len(set(all_slots))
    out = beat.output()
    assert "[schedule]" in out
    assert "  . tick: beatapp.record <freq: 1.00 second> next " in out
    assert "  . from-handler: beatapp.record <freq: 1.50 seconds> next " in out


def test_a_restart_continues_from_the_stored_last_run(
    beats: Beats, workers: WorkerFactory, env: dict[str, str], tmp_path: Path
) -> None:
    # Given beat ran "tick" a few times and then stopped
    start_worker(workers, env)
    first = beats.start()
    wait_for(lambda: len(slots(env)) >= 2, timeout=10)
    assert first.stop() == 0
    store = SQLiteScheduleStore(env["CHARD_BROKER_URL"])
    ((last_run, count),) = [(e.last_run_at, e.total_run_count) for e in store.load(None)[0]]
    assert last_run is not None
    wait_for(lambda: len(slots(env)) == count, timeout=5)
    sent_before = slots(env)

    # When beat starts again
    beats.start()
    wait_for(lambda: len(slots(env)) >= count + 2, timeout=10)

    # Then the first run is the slot right after the stored last run (not skipped, not one
    # interval after the restart), sent once (no burst), and nothing was sent twice
    after = slots(env)[len(sent_before) :]
    assert after[0] == slot_key("tick", last_run + timedelta(seconds=1))
    assert slot_time(after[1]) - slot_time(after[0]) >= timedelta(seconds=0.9)
    assert len(slots(env)) == len(set(slots(env)))


@pytest.mark.parametrize(
    "broker_url",
    [
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
    indirect=True,
)
def test_beats_on_separate_hosts_send_every_slot_once_and_survive_the_leader_kill(
    beats: Beats,
    workers: WorkerFactory,
    env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 13: each beat in its own directory with its own ``-s celerybeat-schedule``."""
    # Given three beats, each started in its own directory as on three hosts, as Celery's
    # deployment docs pass -s, on one broker, and a 1 s schedule
    hosts = [tmp_path / f"host-{name}" for name in "abc"]
    for host in hosts:
        host.mkdir()
    start_worker(workers, env)
    leader = beats.start("-s", "celerybeat-schedule", cwd=hosts[0])
    leader.wait_for_log("is the leader now")
    standbys = [beats.start("-s", "celerybeat-schedule", cwd=host) for host in hosts[1:]]
    wait_for(lambda: len(slots(env)) >= 4, timeout=15)

    # Then one leads and says so; the others stand by, and say who leads
    assert "    . leader -> this beat (" in leader.output()
    for standby in standbys:
        out = standby.output()
        assert "is the leader now" not in out
        assert "this beat stands by and takes over within 5.0s" in out
    assert "sends, the others stand by" in leader.output()  # the HA line

    # When the leader is SIGKILLed (no chance to release its lease) just after it logged a
    # send, which is far from its next claim-and-send (the one at-most-once window). Its own
    # log, not the worker's record of the run: under load a worker can record a run late
    # enough for the kill to land on the next claim, and then that slot is (rightly) lost.
    def sends() -> int:
        return leader.output().count("Scheduler: Sending due task tick")

    seen = sends()
    wait_for(lambda: sends() > seen, timeout=5, interval=0.005)
    leader.kill_group()
    killed_at = time.monotonic()
    before = slots(env)

    def new_leader() -> WorkerProcess | None:
        led = [b for b in standbys if "is the leader now" in b.output()]
        return led[0] if led else None

    took_over = wait_for(new_leader, timeout=10)
    takeover = time.monotonic() - killed_at
    wait_for(lambda: len(slots(env)) >= len(before) + 3, timeout=10)

    # Then exactly one standby took over within the lease, every slot was sent once, no
    # second rhythm appeared (slots of two beats' own run state would interleave), and the
    # slot right after the leader's last one was sent (late, not skipped) before the rhythm
    # resumed from the take-over
    assert [b for b in standbys if "is the leader now" in b.output()] == [took_over]
    sent = slots(env)
    assert Counter(sent).most_common(1)[0][1] == 1, Counter(sent).most_common(3)
    times = sorted(slot_time(s) for s in sent)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.9, gaps
    last_of_leader = max(slot_time(s) for s in before)
    first_of_standby = min(t for t in times if t > last_of_leader)
    assert (first_of_standby - last_of_leader).total_seconds() < 2.0, gaps
    assert max(gaps) < 1.0 + 5.0 + 2.0, gaps
    assert takeover < 7.0
    # And -s named only Celery's state file: no beat wrote anything in its directory
    assert [list(host.iterdir()) for host in hosts] == [[], [], []]
    with capsys.disabled():
        print(f"\nbeat takeover after SIGKILL of the leader: {takeover:.2f}s (lease 5 s)")


def test_schedule_edits_through_the_cli_apply_without_a_restart(
    beats: Beats, workers: WorkerFactory, env: dict[str, str], tmp_path: Path
) -> None:
    # Given a running beat with no entries
    env["BEATAPP_SCHEDULE"] = "{}"
    start_worker(workers, env)
    beat = beats.start()

    # When an entry is added with the CLI
    added = cli(env, tmp_path, "schedule", "add", "live", "beatapp.record", "--every", "1",
                "--args", '["live"]')  # fmt: skip
    assert added.returncode == 0, added.stderr

    # Then the running beat sends it within seconds, and list shows it
    wait_for(lambda: len(slots(env, "live")) >= 2, timeout=8)
    listed = cli(env, tmp_path, "schedule", "list", "--json")
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["name"] == "live"
    assert row["origin"] == "store"
    assert row["enabled"] is True
    assert row["total_run_count"] >= 2

    # When it is disabled, then removed
    assert cli(env, tmp_path, "schedule", "disable", "live").returncode == 0
    beat.wait_for_log("beat: entry 'live' changed", timeout=5)
    assert cli(env, tmp_path, "schedule", "remove", "live").returncode == 0
    beat.wait_for_log("beat: entry 'live' removed", timeout=5)
    assert cli(env, tmp_path, "schedule", "list").stdout.strip() == "(no entries)"


def test_bad_cli_input_names_the_entry_and_the_problem(env: dict[str, str], tmp_path: Path) -> None:
    bad_cron = cli(
        env, tmp_path, "schedule", "add", "c", "beatapp.record", "--crontab", "61 * * * *"
    )
    zero = cli(env, tmp_path, "schedule", "add", "z", "beatapp.record", "--every", "0")
    unknown = cli(env, tmp_path, "schedule", "add", "u", "beatapp.nope", "--every", "5")

    assert bad_cron.returncode != 0
    assert "'c'" in bad_cron.stderr
    assert "minute '61'" in bad_cron.stderr
    assert zero.returncode != 0
    assert "'z'" in zero.stderr
    assert "not positive" in zero.stderr
    assert unknown.returncode == 0  # sent by name: the task may live only on workers
    assert "'beatapp.nope' is not registered" in unknown.stdout


def test_broken_entries_are_reported_and_the_good_ones_keep_running(
    beats: Beats, workers: WorkerFactory, env: dict[str, str]
) -> None:
    # Given a zero and a negative interval, an unknown task, and a stored crontab with minute 61
    env["BEATAPP_SCHEDULE"] = json.dumps(
        {
            **TICK,
            "zero": {"task": "beatapp.record", "every": 0},
            "negative": {"task": "beatapp.record", "every": -1},
            "ghost": {"task": "beatapp.nope", "every": 1.0},
        }
    )
    store = SQLiteScheduleStore(env["CHARD_BROKER_URL"])
    row = {"task": "beatapp.record", "schedule": {"crontab": {"minute": "61"}}, "origin": "store"}
    store._write_definition("bad-cron", json.dumps(row))
    store.close()
    worker = start_worker(workers, env)

    # When beat starts
    beat = beats.start()
    wait_for(lambda: len(slots(env)) >= 2, timeout=10)

    # Then each problem is logged naming its entry, and the good entries run
    out = beat.output()
    assert "ERROR/MainProcess] beat: beat_schedule entry 'zero' has a bad schedule" in out
    assert "ERROR/MainProcess] beat: beat_schedule entry 'negative' has a bad schedule" in out
    assert "schedule store entry 'bad-cron' has a bad schedule: crontab minute '61'" in out
    assert "WARNING/MainProcess] beat: entry 'ghost' sends task 'beatapp.nope'" in out
    assert "[problems]" in out
    worker.wait_for_log("Received unregistered task beatapp.nope")
    assert beat.proc.poll() is None


def test_worker_dash_b_embeds_beat(
    workers: WorkerFactory, env: dict[str, str], tmp_path: Path
) -> None:
    # Given `chard -A beatapp worker -B` with Celery's -s and --scheduler options
    worker = start_worker(
        workers, env, "-B", "-s", "celerybeat-schedule", "-S", "celery.beat:PersistentScheduler"
    )

    # When it runs, then it sends and runs the schedule itself, and says it leads
    wait_for(lambda: len(slots(env)) >= 2, timeout=10)
    assert "beat: running inside the worker (-B) is meant for development" in worker.output()
    assert "beat: leader -> this beat (" in worker.output()
    assert not (tmp_path / "celerybeat-schedule").exists()

    # And a warm stop stops beat too, releasing the lease
    assert worker.stop() == 0
    assert "released the leader lease" in worker.output()


def test_bad_state_file_or_scheduler_stops_beat_at_once_with_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Given -s into a missing directory, into one nobody may write (/sys refuses even root),
    # and a scheduler class chard does not have
    missing = cli(env, tmp_path, "-s", "nope/celerybeat-schedule")
    unwritable = cli(env, tmp_path, "-s", "/sys/celerybeat-schedule")
    django = cli(env, tmp_path, "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler")
    worker = run_cli(
        ["-A", "beatapp", "worker", "-B", "-s", "nope/celerybeat-schedule"], env, tmp_path
    )

    # Then each exits non-zero with one line naming the value and the fix, and sent nothing
    for done, expected in [
        (missing, "does not exist"),
        (unwritable, "is not writable"),
        (django, "'chard -A proj beat schedule add|remove|enable|disable'"),
        (worker, "does not exist"),
    ]:
        assert done.returncode != 0, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert expected in lines[0]
    assert runs(env) == []


@pytest.mark.redis
def test_an_unreachable_broker_is_retried_with_back_off_until_it_answers(
    beats: Beats, tmp_path: Path, env: dict[str, str]
) -> None:
    # Given beat started against a password-protected Redis that is not running yet
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: this test starts its own server")
    port = free_port()
    env["CHARD_BROKER_URL"] = f"redis://:s3cr3t-pw@127.0.0.1:{port}/0"
    env["CHARD_RESULT_BACKEND"] = env["CHARD_BROKER_URL"]
    beat = beats.start(ready=False)
    beat.wait_for_log("(attempt 2)", timeout=15)

    # When the server comes up
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass",
         "s3cr3t-pw", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        beat.wait_for_log("is the leader now", timeout=20)
        beat.wait_for_log("Sending due task tick", timeout=10)
    finally:
        server.terminate()
        server.wait(timeout=10)

    # Then it retried with growing pauses, logged the URL without its password, and sent
    # nothing before it held the lease
    out = beat.output()
    assert "beat: cannot reach the broker at redis://:**@127.0.0.1" in out
    assert "retrying in 1s" in out
    assert "retrying in 2s" in out
    assert "s3cr3t-pw" not in out
    assert out.index("is the leader now") < out.index("Sending due task")


def test_reading_app_conf_in_a_fresh_process_shows_the_handler_entries(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Given beatapp, whose on_after_configure handler adds "from-handler"
    env["BEATAPP_PERIODIC"] = "2.5"
    code = "import beatapp; print(sorted(beatapp.app.conf.beat_schedule))"

    # When a plain process imports it and reads app.conf (no beat, no worker, no finalize)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )

    # Then the handler has run: its entry is there beside the configured one
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['from-handler', 'tick']"


@pytest.mark.rabbitmq
@pytest.mark.parametrize("backend", ["rpc", "redis"])
def test_beat_sends_to_a_worker_on_rabbitmq(
    beats: Beats, workers: WorkerFactory, env: dict[str, str], tmp_path: Path, backend: str
) -> None:
    # Given a RabbitMQ broker (no lease store there) and an rpc:// or a Redis result backend
    with private_vhost() as url:
        env["CHARD_BROKER_URL"] = url
        env["CHARD_RESULT_BACKEND"] = "rpc://" if backend == "rpc" else redis_url()
        try:
            # When a worker and beat run (with rpc://, beat inside the worker: worker -B)
            if backend == "rpc":
                beat = start_worker(workers, env, "-B")
            else:
                start_worker(workers, env)
                beat = beats.start()

            # Then the periodic task runs on the worker, each slot once
            wait_for(lambda: len(slots(env)) >= 3, timeout=60)
            assert len(set(slots(env))) == len(slots(env))
            if backend == "rpc":  # the lease is in a local file, and the log says what HA needs
                assert "only beats sharing that file agree on one sender" in beat.output()
                assert (tmp_path / "celerybeat-schedule.chard.sqlite3").exists()
            else:
                assert "leader lease and claims are in the result backend redis://" in (
                    beat.output()
                )
        finally:
            beats.cleanup()
            workers.cleanup()
