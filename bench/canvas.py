"""Canvas throughput: a group and a chord of N no-op tasks, end to end, chard vs Celery.

Both run on the same Redis server (separate databases), each with its own prefork
worker of the same concurrency started through its CLI. Timed from the client's
call until ``.get()`` returns, so publishing, execution, result storage and (for
the chord) the join are all included.

    .venv/bin/python bench/canvas.py --url redis://127.0.0.1:6379 -n 1000 -c 4
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent


def start_worker(kind: str, url: str, concurrency: int) -> subprocess.Popen[bytes]:
    module = f"_canvas_{kind}_app"
    cli = str(BIN / ("celery" if kind == "celery" else "chard"))
    argv = [cli, "-A", module, "worker", "-P", "prefork", "-c", str(concurrency), "-l", "WARNING"]
    env = {**os.environ, "BENCH_URL": url, "PYTHONPATH": str(HERE)}
    return subprocess.Popen(
        argv, cwd=HERE, env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return runs


def bench(kind: str, url: str, n: int, concurrency: int, repeat: int) -> dict[str, list[float]]:
    os.environ["BENCH_URL"] = url
    sys.path.insert(0, str(HERE))
    app_module = importlib.import_module(f"_canvas_{kind}_app")
    canvas = importlib.import_module("celery" if kind == "celery" else "chard")
    group, chord = canvas.group, canvas.chord
    noop, count = app_module.noop, app_module.count
    app_module.app.backend  # noqa: B018 - connect before timing
    worker = start_worker(kind, url, concurrency)
    try:
        noop.delay().get(timeout=60)  # the worker is up and warm
        return {
            "group": timed(lambda: group(noop.s(i) for i in range(n))().get(timeout=300), repeat),
            "chord": timed(
                lambda: chord((noop.s(i) for i in range(n)), count.s())().get(timeout=300), repeat
            ),
        }
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379", help="Redis, without a db")
    parser.add_argument("-n", type=int, default=1000, help="tasks per group/chord")
    parser.add_argument("-c", "--concurrency", type=int, default=4)
    parser.add_argument("-r", "--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["chard", "celery"])
    args = parser.parse_args()
    dbs = {"chard": 11, "celery": 12}
    for kind in [args.only] if args.only else ["chard", "celery"]:
        url = f"{args.url.rstrip('/')}/{dbs[kind]}"
        subprocess.run(["redis-cli", "-u", url, "flushdb"], check=False, capture_output=True)
        results = bench(kind, url, args.n, args.concurrency, args.repeat)
        for name, runs in results.items():
            print(
                f"{kind:6} {name:5} n={args.n}: median {statistics.median(runs):.3f}s "
                f"best {min(runs):.3f}s ({args.n / min(runs):.0f} tasks/s)"
            )


if __name__ == "__main__":
    main()
