"""chard vs Celery on one Redis (and chard on PostgreSQL): enqueue, drain, end-to-end, latency.

    .venv/bin/python -m bench            # full run: 3 interleaved rounds, medians
    .venv/bin/python -m bench --quick    # smoke run with tiny N (chard only if Celery is missing)

Both systems run the same tasks (``bench/apps``) with the same worker command line
(``-P prefork -c 2 -l WARNING``), on the same Redis server: chard in ``--chard-db``
(default 10) under a fresh ``bench-<uuid>`` key prefix, Celery in ``--celery-db``
(default 11), which is flushed. Rounds interleave the systems (chard, celery, chard,
celery ...) so drift on a shared machine hits both; the table shows the medians.
See bench/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import procstat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APPS = HERE / "apps"
BIN = Path(sys.executable).parent
RESULTS = HERE / "results" / "latest.md"

#: (key, label, unit, higher is better, target ratio chard/celery)
ROWS: list[tuple[str, str, str, bool, float | None]] = [
    ("enqueue_delay", "enqueue: delay()", "msg/s", True, 5.0),
    ("enqueue_group", "enqueue: group of N", "msg/s", True, None),
    ("drain", "drain: N queued, 2 procs", "tasks/s", True, 7.0),
    ("e2e", "end-to-end with results", "tasks/s", True, 4.0),
    ("rtt_p50", "round-trip p50", "ms", False, 0.5),
    ("rtt_p90", "round-trip p90", "ms", False, None),
    ("rtt_p99", "round-trip p99", "ms", False, None),
    ("rss_mib", "worker peak RSS (tree)", "MiB", False, 1.0),
    ("idle_cpu", "idle worker CPU (tree)", "% core", False, None),
]


@dataclass
class Config:
    n: int
    group_n: int
    e2e_n: int
    latency_n: int
    idle_seconds: float
    rounds: int
    systems: list[str]
    redis_base: str
    postgres: str
    chard_db: int
    celery_db: int
    output: Path
    timeout: float
    #: Workers send task events (``-E``): the cost of monitoring.
    events: bool = False
    #: RabbitMQ server (no vhost): both systems on it, each in a vhost of its own, rpc://.
    rabbitmq: str | None = None


@dataclass
class System:
    """One side of the comparison: how to reach its Redis db and start its worker."""

    name: str
    broker_url: str
    app_module: str
    cli: str
    reset_client: redis.Redis | None
    prefix: str | None = None  # chard: delete keys under it; Celery: FLUSHDB its own db
    logs: list[Path] = field(default_factory=list)
    #: On RabbitMQ: the vhost (created and deleted by the run) and results over rpc://.
    vhost: str | None = None
    #: chard on PostgreSQL: (server URL, schema of its own, dropped by ``reset``)
    postgres: tuple[str, str] | None = None
    #: Seconds between two looks at the queue while draining (a count(*) costs PostgreSQL more)
    poll_interval: float = 0.002
    #: More environment for its processes (Procrastinate's URL)
    extra_env: dict[str, str] = field(default_factory=dict)

    def worker_argv(self, events: bool = False) -> list[str]:
        """Return the worker command: 2 processes' worth, as alike as the systems allow."""
        if self.name == "procrastinate":  # one asyncio process per worker: start two
            one = f"{self.cli} --app {self.app_module}.app worker -c 2 -q ''"
            return ["sh", "-c", f"{one} & {one} & wait"]
        argv = [self.cli, "-A", self.app_module, "worker", "-P", "prefork", "-c", "2"]
        return [*argv, "-l", "WARNING", *(["-E"] if events else [])]

    def env(self) -> dict[str, str]:
        path = os.pathsep.join([str(APPS), str(ROOT), os.environ.get("PYTHONPATH", "")])
        return {
            **os.environ,
            "PYTHONPATH": path.rstrip(os.pathsep),
            "BENCH_BROKER_URL": self.broker_url,
            "BENCH_BACKEND_URL": "rpc://" if self.vhost else "",
            **self.extra_env,
        }

    def reset(self) -> None:
        """Forget every message, result and counter of this system."""
        if self.vhost is not None:
            amqp_purge(self.broker_url, "celery")
            return
        if self.postgres is not None:
            self._sql(f'DROP SCHEMA IF EXISTS "{self.postgres[1]}" CASCADE')
            if self.name == "procrastinate":  # its tables must exist before a defer
                self._sql(f'CREATE SCHEMA "{self.postgres[1]}"')
                argv = [self.cli, "--app", f"{self.app_module}.app", "schema", "--apply"]
                subprocess.run(argv, env=self.env(), cwd=ROOT, check=True, capture_output=True)
            return
        assert self.reset_client is not None
        if self.prefix is None:
            self.reset_client.flushdb()
            return
        keys = list(self.reset_client.scan_iter(match=f"{self.prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            self.reset_client.delete(*keys[i : i + 1000])

    def pending(self) -> int:
        """Messages not yet done: still queued, or fetched and not yet acknowledged.

        Read from each system's own Redis keys (one pipeline), so the drained task can be a
        true no-op for both: chard's ``celery`` list plus its lease zset, Celery's (kombu's)
        ``celery`` list plus its ``unacked`` hash. Celery acks on start by default, so its
        count misses at most the 8 prefetched messages at the very end: a few ms of 20,000.
        """
        if self.vhost is not None:  # ready messages only: unacked are invisible without the
            return amqp_ready(self.broker_url, "celery")  # management plugin (<= prefetch)
        if self.name == "procrastinate":
            return int(
                self._sql(
                    f'SELECT count(*) FROM "{self.postgres[1]}".procrastinate_jobs'  # type: ignore[index]
                    " WHERE status IN ('todo', 'doing')"
                )
            )
        if self.postgres is not None:  # leased rows stay in the table until acked
            return int(self._sql(f'SELECT count(*) FROM "{self.postgres[1]}".chard_messages'))
        assert self.reset_client is not None
        prefix = self.prefix or ""
        held = f"{prefix}chard.leases" if self.prefix is not None else "unacked"
        pipe = self.reset_client.pipeline(transaction=False)
        pipe.llen(f"{prefix}celery")
        if self.prefix is not None:
            pipe.zcard(held)
        else:
            pipe.hlen(held)
        queued, in_flight = pipe.execute()
        return int(queued) + int(in_flight)

    def _sql(self, sql: str) -> Any:
        """Run one statement on the PostgreSQL server (a connection kept between calls)."""
        import psycopg  # only the chard-pg system needs the postgres extra

        assert self.postgres is not None
        conn = getattr(self, "_pg", None)
        if conn is None or conn.closed:
            conn = self._pg = psycopg.connect(self.postgres[0], autocommit=True)
        cursor = conn.execute(sql)
        return cursor.fetchone()[0] if cursor.description else None


def amqp_purge(url: str, queue: str) -> None:
    import pika  # only for the RabbitMQ rows

    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
            channel.queue_purge(queue)


def amqp_ready(url: str, queue: str) -> int:
    import pika

    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        try:
            return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def _amqp_systems(cfg: Config) -> list[System]:
    assert cfg.rabbitmq is not None
    out = []
    for name in cfg.systems:
        vhost = f"bench-{name}-{uuid.uuid4().hex[:8]}"
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        out.append(
            System(
                name=name,
                broker_url=f"{cfg.rabbitmq.rstrip('/')}/{vhost}",
                app_module="benchapp" if name == "chard" else "benchapp_celery",
                cli=str(BIN / name),
                reset_client=None,
                vhost=vhost,
            )
        )
    return out


def _systems(cfg: Config) -> list[System]:
    if cfg.rabbitmq:
        return _amqp_systems(cfg)
    out = []
    for name in cfg.systems:
        if name == "chard":
            prefix = f"bench-{uuid.uuid4().hex}"
            url = f"{cfg.redis_base}/{cfg.chard_db}"
            out.append(
                System(
                    name="chard",
                    broker_url=f"{url}?global_keyprefix={prefix}",
                    app_module="benchapp",
                    cli=str(BIN / "chard"),
                    reset_client=redis.Redis.from_url(url),
                    prefix=prefix,
                )
            )
        elif name == "chard-pg":
            schema = f"bench_{uuid.uuid4().hex[:12]}"
            out.append(
                System(
                    name="chard-pg",
                    broker_url=f"{cfg.postgres}?schema={schema}",
                    app_module="benchapp",
                    cli=str(BIN / "chard"),
                    reset_client=None,
                    postgres=(cfg.postgres, schema),
                    poll_interval=0.02,
                )
            )
        elif name == "procrastinate":
            schema = f"bench_proc_{uuid.uuid4().hex[:12]}"
            options = urllib.parse.quote(f"-c search_path={schema}")
            out.append(
                System(
                    name="procrastinate",
                    broker_url="",
                    app_module="benchapp_procrastinate",
                    cli=str(BIN / "procrastinate"),
                    reset_client=None,
                    postgres=(cfg.postgres, schema),
                    poll_interval=0.02,
                    extra_env={"BENCH_PROCRASTINATE_URL": f"{cfg.postgres}?options={options}"},
                )
            )
        else:
            url = f"{cfg.redis_base}/{cfg.celery_db}"
            out.append(
                System(
                    name="celery",
                    broker_url=url,
                    app_module="benchapp_celery",
                    cli=str(BIN / "celery"),
                    reset_client=redis.Redis.from_url(url),
                )
            )
    return out


def client(system: System, op: str, n: int, timeout: float) -> dict[str, Any]:
    """Run one client measurement in a fresh process; return its JSON answer."""
    argv = [sys.executable, "-m", "bench.client", system.name, op, str(n)]
    proc = subprocess.run(
        argv, env=system.env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{system.name} {op} client failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


class WorkerRun:
    """A worker process started through its CLI, with a peak-RSS sampler on its tree."""

    def __init__(self, system: System, log: Path, events: bool = False) -> None:
        self.system = system
        argv = system.worker_argv(events)
        system.logs.append(log)
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            env=system.env(),
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.rss = procstat.PeakRss(self.proc.pid).start()

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            text = Path(self._log.name).read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"{self.system.name} worker exited ({self.proc.returncode}):\n{text}"
            )

    def stop(self) -> int:
        """Warm-stop the worker (SIGKILL its group after 20 s); return peak RSS in KiB."""
        peak = self.rss.stop()
        if self.proc.poll() is None:
            if self.system.name == "procrastinate":  # its workers are the shell's children
                os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        return peak


def wait_drained(system: System, worker: WorkerRun, total: int, timeout: float) -> float:
    """Poll the broker; return tasks/s from the first message taken to the last one done.

    Timing starts when the queue first shrinks, so worker start-up (imports, fork,
    Celery's mingle) is excluded for both systems alike.
    """
    deadline = time.monotonic() + timeout
    first: float | None = None
    while True:
        left = system.pending()
        now = time.perf_counter()
        if first is None and left < total:
            first = now
        if left == 0:
            assert first is not None
            elapsed = now - first
            return total / elapsed if elapsed > 0 else float("inf")
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{system.name}: {left}/{total} not done after {timeout}s")
        time.sleep(system.poll_interval)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def one_round(system: System, cfg: Config, logdir: Path, index: int) -> dict[str, float]:
    """Measure every row once for ``system``."""
    out: dict[str, float] = {}
    system.reset()
    out["enqueue_group"] = client(system, "enqueue-group", cfg.group_n, cfg.timeout)["rate"]
    system.reset()
    sent = client(system, "enqueue-delay", cfg.n, cfg.timeout)
    out["enqueue_delay"] = sent["rate"]
    worker = WorkerRun(system, logdir / f"{system.name}-{index}.log", cfg.events)
    try:
        out["drain"] = wait_drained(system, worker, int(sent["sent"]), cfg.timeout)
        out["e2e"] = client(system, "e2e", cfg.e2e_n, cfg.timeout)["rate"]
        samples = client(system, "latency", cfg.latency_n, cfg.timeout)["samples"]
        for q in (50, 90, 99):
            out[f"rtt_p{q}"] = percentile(samples, q) * 1000
        time.sleep(min(1.0, cfg.idle_seconds))  # let the last results and acks settle
        worker.check_alive()
        pids = procstat.tree(worker.proc.pid)
        before = sum(procstat.cpu_seconds(p) for p in pids)
        time.sleep(cfg.idle_seconds)
        used = sum(procstat.cpu_seconds(p) for p in pids) - before
        out["idle_cpu"] = used / cfg.idle_seconds * 100
    finally:
        out["rss_mib"] = worker.stop() / 1024
        system.reset()
    return out


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(medians: dict[str, dict[str, float]], cfg: Config) -> str:
    has_celery = "celery" in medians
    has_pg = "chard-pg" in medians
    head = "| metric | unit | chard | celery | chard/celery | target |"
    rule = "|---|---|---:|---:|---:|---|"
    if has_pg:  # chard on PostgreSQL beside chard on Redis, and against Celery on Redis
        head += " chard-pg | chard-pg/celery | chard-pg/chard |"
        rule += "---:|---:|---:|"
    has_proc = "procrastinate" in medians
    if has_proc:  # against Procrastinate on the same PostgreSQL
        head += " procrastinate | chard-pg/procrastinate |"
        rule += "---:|---:|"
    lines = [head, rule]
    for key, label, unit, higher, target in ROWS:
        c = medians.get("chard", {}).get(key)
        k = medians.get("celery", {}).get(key) if has_celery else None
        ratio = c / k if c is not None and k else None
        goal = ""
        if target is not None:
            goal = f"{'≥' if higher else '≤'} {target:g}x"
            if ratio is not None:
                met = ratio >= target if higher else ratio <= target
                goal += " ✓" if met else " ✗"
        line = f"| {label} | {unit} | {fmt(c)} | {fmt(k)} | {_ratio(c, k)} | {goal} |"
        if has_pg:
            g = medians["chard-pg"].get(key)
            line += f" {fmt(g)} | {_ratio(g, k)} | {_ratio(g, c)} |"
        if has_proc:
            x = medians["procrastinate"].get(key)
            line += f" {fmt(x)} | {_ratio(medians.get('chard-pg', {}).get(key), x)} |"
        lines.append(line)
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def details(runs: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| system | metric | rounds |", "|---|---|---|"]
    for name, rounds in runs.items():
        for key, *_ in ROWS:
            values = ", ".join(fmt(r[key]) for r in rounds if key in r)
            lines.append(f"| {name} | {key} | {values} |")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny N, one round (smoke test)")
    p.add_argument("-n", type=int, help="messages for enqueue and drain (default 20000)")
    p.add_argument("--group-n", type=int, help="members of the batched send (default: -n)")
    p.add_argument("--e2e-n", type=int, help="tasks of the end-to-end run (default 5000)")
    p.add_argument("--latency-n", type=int, help="round-trip samples (default 1000)")
    p.add_argument("--idle-seconds", type=float, help="idle CPU window (default 10)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    p.add_argument(
        "--systems",
        default="chard,celery",
        help="comma-separated: chard, celery, chard-pg (chard on PostgreSQL, broker and "
        "results), procrastinate (on the same PostgreSQL); celery and procrastinate are "
        "skipped if not installed",
    )
    p.add_argument(
        "--postgres",
        default="postgresql://127.0.0.1:5432/test",
        help="PostgreSQL server and database for chard-pg (a bench_<id> schema, dropped after)",
    )
    p.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server, no db")
    p.add_argument("--chard-db", type=int, default=10)
    p.add_argument("--celery-db", type=int, default=11)
    p.add_argument(
        "--rabbitmq",
        help="RabbitMQ server without vhost (amqp://guest:guest@127.0.0.1:5672): both systems "
        "on it, each in a vhost of its own (made with rabbitmqctl), results over rpc://",
    )
    p.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    p.add_argument("--timeout", type=float, default=600, help="seconds per phase at most")
    p.add_argument(
        "-E", "--events", action="store_true", help="workers send task events (worker -E)"
    )
    a = p.parse_args(argv)
    quick = a.quick
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    known = ("chard", "celery", "chard-pg", "procrastinate")
    unknown = set(systems) - set(known)
    if unknown:
        p.error(f"unknown system(s) {sorted(unknown)}; choose from {', '.join(known)}")
    if "procrastinate" in systems and importlib.util.find_spec("procrastinate") is None:
        print("procrastinate is not installed (pip install -e '.[bench]'); skipping it")
        systems.remove("procrastinate")
    if "celery" in systems and importlib.util.find_spec("celery") is None:
        print("celery is not installed (pip install -e '.[bench]'); running chard only")
        systems.remove("celery")
    n = a.n or (300 if quick else 20_000)
    return Config(
        n=n,
        group_n=a.group_n or n,
        e2e_n=a.e2e_n or (100 if quick else 5_000),
        latency_n=a.latency_n or (50 if quick else 1_000),
        idle_seconds=a.idle_seconds or (1.0 if quick else 10.0),
        rounds=a.rounds or (1 if quick else 3),
        systems=systems,
        redis_base=a.redis.rstrip("/"),
        postgres=a.postgres,
        chard_db=a.chard_db,
        celery_db=a.celery_db,
        output=a.output,
        timeout=a.timeout,
        events=a.events,
        rabbitmq=a.rabbitmq,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    if cfg.celery_db == 9 or cfg.chard_db == 9:
        raise SystemExit("db 9 belongs to the test suite; pick another --chard-db/--celery-db")
    if cfg.celery_db == cfg.chard_db and "celery" in cfg.systems:
        raise SystemExit("--celery-db is flushed: it must differ from --chard-db")
    systems = _systems(cfg)
    logdir = cfg.output.parent / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in systems}
    try:
        for index in range(cfg.rounds):
            for system in systems:  # interleaved: chard, celery, chard, celery ...
                print(f"round {index + 1}/{cfg.rounds}: {system.name} ...", file=sys.stderr)
                result = one_round(system, cfg, logdir, index)
                runs[system.name].append(result)
                print(
                    "  " + json.dumps({k: round(v, 2) for k, v in result.items()}), file=sys.stderr
                )
    finally:
        for system in systems:
            if system.vhost is not None:
                rabbitmqctl("delete_vhost", system.vhost)
    medians = {
        name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        for name, rounds in runs.items()
    }
    celery_version = ""
    if "celery" in runs:
        from importlib.metadata import version

        celery_version = f", Celery {version('celery')}"
    where = f"RabbitMQ ({cfg.rabbitmq}), results over rpc://" if cfg.rabbitmq else "Redis"
    header = (
        f"# chard vs Celery on {where}\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}; {platform.python_implementation()} "
        f"{platform.python_version()}{celery_version}; {os.cpu_count()} CPUs; "
        f"{cfg.rounds} round(s), median; N={cfg.n:,} (group {cfg.group_n:,}), "
        f"end-to-end {cfg.e2e_n:,}, round-trip samples {cfg.latency_n:,}, "
        f"idle window {cfg.idle_seconds:g} s; workers `-P prefork -c 2 -l WARNING"
        f"{' -E' if cfg.events else ''}`.\n"
    )
    text = f"{header}\n{table(medians, cfg)}\n\n## Rounds\n\n{details(runs)}\n"
    print(text)
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
