"""chard against Huey, Dramatiq, Celery and a raw redis-py floor on one Redis (and SQLite,
PostgreSQL, RabbitMQ): enqueue, drain, end-to-end, latency, RSS, and Redis's own cost.

    .venv/bin/python -m bench            # full run: 3 interleaved rounds, medians
    .venv/bin/python -m bench --quick    # smoke run with tiny N (absent peers are skipped)
    .venv/bin/python -m bench --sqlite   # the embedded default against SqliteHuey, Celery sqla
    .venv/bin/python -m bench --nodes 1,2,4 --systems chard   # scale on one Redis

Every system runs the same two tasks (``bench/apps``: each does one Redis INCR on a counter,
one stores its result), 2 worker processes per node, on the same server, each in a place
of its own (``bench/systems``). Rounds interleave the systems so drift on a shared machine
hits all alike; the table shows medians. See bench/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis

from bench import procstat, redisstats, report
from bench.systems import KNOWN, ROOT, Settings, System, make

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latest.md"
REDIS_SYSTEMS = "chard,huey,dramatiq,celery,floor"
SQLITE_SYSTEMS = "chard-sqlite,huey-sqlite,celery-sqlite"
AMQP_SYSTEMS = "chard,celery,floor"
#: Seconds between two reads of the counter while draining.
POLL = 0.005


@dataclass
class Config:
    n: int
    group_n: int
    e2e_n: int
    latency_n: int
    idle_seconds: float
    rounds: int
    systems: list[str]
    settings: Settings
    output: Path
    timeout: float
    #: Workers send task events (``-E``): the cost of monitoring.
    events: bool = False
    #: Worker node counts of a scale run (empty: the comparison instead).
    nodes: tuple[int, ...] = ()


def client(system: System, op: str, n: int, timeout: float) -> dict[str, Any]:
    """Run one client measurement in a fresh process; return its JSON answer."""
    argv = [sys.executable, "-m", "bench.client", system.app_module, op, str(n)]
    proc = subprocess.run(
        argv, env=system.env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{system.name} {op} client failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


class WorkerRun:
    """Worker nodes started through their CLI, with a peak-RSS sampler on their trees."""

    def __init__(self, system: System, log: Path, events: bool = False, nodes: int = 1) -> None:
        self.system = system
        self.log = log
        self._log = log.open("wb")
        self.argvs = [system.worker_argv(node, events) for node in range(1, nodes + 1)]
        self.procs = [
            subprocess.Popen(
                argv,
                env=system.env(),
                cwd=ROOT,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for argv in self.argvs
        ]
        self.rss = [procstat.PeakRss(p.pid).start() for p in self.procs]

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                text = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.system.name} worker exited ({proc.returncode}):\n{text}")

    def cpu_seconds(self) -> float:
        return sum(procstat.tree_cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> tuple[int, int]:
        """Warm-stop the workers (SIGKILL each group after 20 s); return peak RSS, PSS in KiB."""
        peak = sum(r.stop() for r in self.rss), sum(r.peak_pss_kib for r in self.rss)
        for proc, argv in zip(self.procs, self.argvs, strict=True):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    if argv[0] == "sh":  # a shell's workers are its children
                        os.killpg(proc.pid, signal.SIGTERM)
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._log.close()
        return peak


def wait_drained(system: System, worker: WorkerRun, total: int, timeout: float) -> dict[str, Any]:
    """Read the counter; return tasks/s from the first task done to the last, and Redis's cost.

    Worker start-up (imports, fork, Celery's mingle) is before the first task, so it is
    excluded for every system alike; so is the first poll interval's worth of tasks.
    """
    stats = redis.Redis.from_url(system.stats_url) if system.stats_url else None
    deadline = time.monotonic() + timeout
    first: tuple[float, int, Any] | None = None
    cpu_first = 0.0  # the workers' CPU seconds when the first task was seen done
    polls = 0
    while True:
        done = system.done()
        polls += 1
        now = time.perf_counter()
        if first is None and done > 0:
            first, polls = (now, done, stats and redisstats.snapshot(stats)), 0
            cpu_first = worker.cpu_seconds()  # (after Redis's snapshot, as at the end)
        if done >= total and first is not None:
            elapsed = now - first[0]
            out: dict[str, Any] = {"drain": (done - first[1]) / elapsed if elapsed > 0 else 0.0}
            if stats is not None:
                own = {"get": polls}  # the counter is on the same server: our own reads
                after = redisstats.snapshot(stats)
                cost = redisstats.per_task(first[2], after, done - first[1], own)
                out.update(_cost("drain", cost))
            if done > first[1]:  # (read after Redis's figures: /proc is slower to walk)
                cpu = worker.cpu_seconds() - cpu_first
                out["worker_drain_us"] = cpu / (done - first[1]) * 1e6
            return out
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{system.name}: {done}/{total} done after {timeout}s")
        time.sleep(POLL)


def _cost(phase: str, cost: dict[str, Any]) -> dict[str, Any]:
    return {
        f"redis_{phase}_cmds": cost["commands"],
        f"redis_{phase}_us": cost["cpu_us"],
        f"redis_{phase}_by": cost["by_command"],
    }


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def drain_and_e2e(
    system: System, cfg: Config, log: Path, nodes: int = 1
) -> tuple[dict[str, Any], WorkerRun]:
    """Queue N, start the workers, time the drain, then the end-to-end run on them."""
    out: dict[str, Any] = {}
    system.reset()
    sent = client(system, "enqueue-delay", cfg.n, cfg.timeout)
    out["enqueue_delay"] = sent["rate"]
    worker = WorkerRun(system, log, cfg.events, nodes)
    try:
        out.update(wait_drained(system, worker, int(sent["sent"]), cfg.timeout))
        cpu_before = worker.cpu_seconds()
        e2e = client(system, "e2e", cfg.e2e_n, cfg.timeout)
        out["e2e"] = e2e["rate"]
        # (the client's one warm-up task is counted in the CPU, not in the divisor)
        out["worker_e2e_us"] = (worker.cpu_seconds() - cpu_before) / cfg.e2e_n * 1e6
        if "redis" in e2e:
            out.update(_cost("e2e", e2e["redis"]))
    except BaseException:
        worker.stop()
        raise
    return out, worker


def one_round(system: System, cfg: Config, logdir: Path, index: int) -> dict[str, Any]:
    """Measure every row once for ``system``."""
    system.reset()
    group = client(system, "enqueue-group", cfg.group_n, cfg.timeout)
    out, worker = drain_and_e2e(system, cfg, logdir / f"{system.name}-{index}.log")
    if "rate" in group:
        out["enqueue_group"] = group["rate"]
    try:
        samples = client(system, "latency", cfg.latency_n, cfg.timeout)["samples"]
        for q in (50, 90, 99):
            out[f"rtt_p{q}"] = percentile(samples, q) * 1000
        time.sleep(min(1.0, cfg.idle_seconds))  # let the last results and acks settle
        worker.check_alive()
        before = worker.cpu_seconds()
        time.sleep(cfg.idle_seconds)
        out["idle_cpu"] = (worker.cpu_seconds() - before) / cfg.idle_seconds * 100
    finally:
        rss, pss = worker.stop()
        out["rss_mib"], out["pss_mib"] = rss / 1024, pss / 1024
        system.reset()
    return out


def scale(systems: list[System], cfg: Config, logdir: Path) -> list[dict[str, Any]]:
    """Drain and end-to-end with 1, 2, 4... worker nodes on one Redis, systems interleaved."""
    rows = []
    for nodes in cfg.nodes:
        for system in systems:
            print(f"scale: {system.name} with {nodes} node(s) ...", file=sys.stderr)
            log = logdir / f"{system.name}-nodes{nodes}.log"
            out, worker = drain_and_e2e(system, cfg, log, nodes)
            worker.stop()
            system.reset()
            rows.append({"system": system.name, "nodes": nodes, **out})
            print("  " + _brief(out), file=sys.stderr)
    return rows


def _brief(result: dict[str, Any]) -> str:
    return json.dumps({k: round(v, 2) for k, v in result.items() if isinstance(v, float)})


def own_redis() -> tuple[subprocess.Popen[bytes], str]:
    """Start a private redis-server on a free loopback port: Redis figures without neighbours."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--databases", "16"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(redis.ConnectionError):
            client.ping()
            return proc, f"redis://127.0.0.1:{port}"
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("redis-server did not start (is it installed?)")
        time.sleep(0.05)


def parse(argv: list[str] | None) -> tuple[Config, bool]:
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
        help=f"comma-separated, from: {', '.join(KNOWN)} (default {REDIS_SYSTEMS}; with "
        f"--sqlite {SQLITE_SYSTEMS}); a peer whose package is missing is skipped",
    )
    p.add_argument("--sqlite", action="store_true", help=f"the SQLite row: {SQLITE_SYSTEMS}")
    p.add_argument("--nodes", help="scale run: worker node counts, e.g. 1,2,4")
    p.add_argument(
        "--postgres",
        default="postgresql://127.0.0.1:5432/test",
        help="PostgreSQL for chard-pg and procrastinate (a schema of their own, dropped after)",
    )
    p.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server, no db")
    p.add_argument("--own-redis", action="store_true", help="start a private redis-server")
    for name, db in (("chard", 10), ("celery", 11), ("huey", 12), ("dramatiq", 13), ("floor", 14)):
        p.add_argument(f"--{name}-db", type=int, default=db, help=f"{name}'s Redis db")
    p.add_argument("--counter-db", type=int, default=15, help="the tasks' counter's Redis db")
    p.add_argument(
        "--rabbitmq",
        help="RabbitMQ server without vhost (amqp://guest:guest@127.0.0.1:5672): chard, "
        "celery and the pika floor on it, each in a vhost of its own (made with rabbitmqctl), "
        "results over rpc://",
    )
    p.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    p.add_argument("--timeout", type=float, default=600, help="seconds per phase at most")
    p.add_argument(
        "-E", "--events", action="store_true", help="workers send task events (worker -E)"
    )
    a = p.parse_args(argv)
    default = SQLITE_SYSTEMS if a.sqlite else AMQP_SYSTEMS if a.rabbitmq else REDIS_SYSTEMS
    systems = [s.strip() for s in (a.systems or default).split(",") if s.strip()]
    unknown = set(systems) - set(KNOWN)
    if unknown:
        p.error(f"unknown system(s) {sorted(unknown)}; choose from {', '.join(KNOWN)}")
    for name in list(systems):
        package = KNOWN[name]
        if package and importlib.util.find_spec(package) is None:
            print(f"{package} is not installed (pip install -e '.[bench]'); skipping {name}")
            systems.remove(name)
    dbs = {n: getattr(a, f"{n}_db") for n in ("chard", "celery", "huey", "dramatiq", "floor")}
    if 9 in (*dbs.values(), a.counter_db):
        p.error("db 9 belongs to the test suite; pick other --*-db values")
    if len({*dbs.values(), a.counter_db}) < len(dbs) + 1:
        p.error("every system needs a Redis db of its own (most are flushed), and the counter")
    n = a.n or (300 if a.quick else 20_000)
    settings = Settings(a.redis.rstrip("/"), a.postgres, a.rabbitmq, dbs, a.counter_db)
    cfg = Config(
        n=n,
        group_n=a.group_n or n,
        e2e_n=a.e2e_n or (100 if a.quick else 5_000),
        latency_n=a.latency_n or (50 if a.quick else 1_000),
        idle_seconds=a.idle_seconds or (1.0 if a.quick else 10.0),
        rounds=a.rounds or (1 if a.quick else 3),
        systems=systems,
        settings=settings,
        output=a.output,
        timeout=a.timeout,
        events=a.events,
        nodes=tuple(int(x) for x in a.nodes.split(",")) if a.nodes else (),
    )
    return cfg, a.own_redis


def _versions(names: list[str]) -> str:
    out = []
    for package in ("celery", "huey", "dramatiq", "procrastinate"):
        if any(n.startswith(package) for n in names):
            out.append(f"{package} {version(package)}")
    return ", ".join(out)


def _header(cfg: Config, names: list[str]) -> str:
    s = cfg.settings
    where = f"RabbitMQ ({s.rabbitmq}), results over rpc://" if s.rabbitmq else s.redis_base
    if cfg.nodes:
        what = f"scale run, {', '.join(map(str, cfg.nodes))} worker node(s), one round each"
        sizes = f"N={cfg.n:,}, end-to-end {cfg.e2e_n:,}"
    else:
        what = f"{cfg.rounds} round(s), median"
        sizes = (
            f"N={cfg.n:,} (group {cfg.group_n:,}), end-to-end {cfg.e2e_n:,}, round-trip "
            f"samples {cfg.latency_n:,}, idle window {cfg.idle_seconds:g} s"
        )
    return (
        f"# chard and its peers ({', '.join(names)})\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}; {platform.python_implementation()} "
        f"{platform.python_version()}; {_versions(names) or 'no peer package'}; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; on {where}; {what}; {sizes}; "
        f"2 worker processes per node{' (-E)' if cfg.events else ''}. Redis figures are "
        "server-wide (see bench/README.md).\n"
    )


def run(cfg: Config, systems: list[System], logdir: Path) -> str:
    if cfg.nodes:
        rows = scale(systems, cfg, logdir)
        return f"{_header(cfg, [s.name for s in systems])}\n{report.scale_table(rows)}\n"
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in systems}
    for index in range(cfg.rounds):
        for system in systems:  # interleaved: chard, huey, ..., chard, huey, ...
            print(f"round {index + 1}/{cfg.rounds}: {system.name} ...", file=sys.stderr)
            result = one_round(system, cfg, logdir, index)
            runs[system.name].append(result)
            print("  " + _brief(result), file=sys.stderr)
    families = {s.name: s.family for s in systems}
    med = report.medians(runs)
    return (
        f"{_header(cfg, list(runs))}\n{report.table(med, families)}\n\n"
        f"## Redis commands per task, by command\n\n{report.by_command(runs) or 'n/a'}\n\n"
        f"## Rounds\n\n{report.details(runs)}\n"
    )


def main(argv: list[str] | None = None) -> int:
    cfg, private = parse(argv)
    server = None
    if private:
        server, cfg.settings.redis_base = own_redis()
    logdir = cfg.output.parent / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    systems: list[System] = []
    try:
        for name in cfg.systems:
            systems.append(make(name, cfg.settings))
        text = run(cfg, systems, logdir)
    finally:
        for system in systems:
            with contextlib.suppress(Exception):
                system.reset()
            system.close()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    print(text)
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
