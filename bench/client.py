"""One client-side measurement, run in its own process: ``python -m bench.client SYSTEM OP N``.

Each measurement gets a fresh interpreter, so chard and Celery never share a process
(no cross-imports, no warmed caches from the other). Prints one JSON object on stdout.
The connection is opened (one warm-up message) before the clock starts.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from typing import Any


def _load(system: str) -> tuple[Any, Any]:
    """Return ``(tasks module, group)`` for ``system``."""
    if system in ("chard", "chard-pg"):
        from chard import group

        return importlib.import_module("benchapp"), group
    from celery import group as celery_group

    return importlib.import_module("benchapp_celery"), celery_group


def enqueue_delay(mod: Any, group: Any, n: int) -> dict[str, Any]:
    mod.drain.delay()  # warm-up: connects
    started = time.perf_counter()
    for _ in range(n):
        mod.drain.delay()
    elapsed = time.perf_counter() - started
    return {"rate": n / elapsed, "sent": n + 1}


def enqueue_group(mod: Any, group: Any, n: int) -> dict[str, Any]:
    mod.drain.delay()  # warm-up: connects
    started = time.perf_counter()
    group(mod.drain.s() for _ in range(n)).apply_async()
    elapsed = time.perf_counter() - started
    return {"rate": n / elapsed, "sent": n + 1}


def end_to_end(mod: Any, group: Any, n: int) -> dict[str, Any]:
    mod.noop.delay().get(timeout=30)  # warm-up: connects both broker and backend
    started = time.perf_counter()
    results = [mod.noop.delay() for _ in range(n)]
    if hasattr(mod.app, "GroupResult") and mod.__name__ == "benchapp":
        values = mod.app.GroupResult(None, results).get(timeout=300)
    else:
        from celery.result import ResultSet

        values = ResultSet(results, app=mod.app).get(timeout=300)
    elapsed = time.perf_counter() - started
    assert len(values) == n
    return {"rate": n / elapsed}


def latency(mod: Any, group: Any, n: int) -> dict[str, Any]:
    for _ in range(max(5, n // 20)):  # warm-up
        mod.noop.delay().get(timeout=30)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        mod.noop.delay().get(timeout=30)
        samples.append(time.perf_counter() - started)
    return {"samples": samples}


# -- Procrastinate: no results; a job is done when its row says so ------------------------


def _done(conn: Any, ids: list[int]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE id = ANY(%s) AND status = 'succeeded'",
        (ids,),
    ).fetchone()
    return int(row[0])


def procrastinate_op(op: str, n: int) -> dict[str, Any]:
    import os

    import psycopg

    mod = importlib.import_module("benchapp_procrastinate")
    with mod.app.open(), psycopg.connect(os.environ["BENCH_PROCRASTINATE_URL"]) as conn:
        conn.autocommit = True
        if op in ("enqueue-delay", "enqueue-group"):
            mod.drain.defer()  # warm-up: connects
            started = time.perf_counter()
            if op == "enqueue-delay":
                for _ in range(n):
                    mod.drain.defer()
            else:
                mod.drain.batch_defer(*({} for _ in range(n)))
            return {"rate": n / (time.perf_counter() - started), "sent": n + 1}
        warm = [mod.noop.defer()]
        while _done(conn, warm) < 1:
            time.sleep(0.001)
        if op == "e2e":
            started = time.perf_counter()
            ids = [mod.noop.defer() for _ in range(n)]
            while _done(conn, ids) < n:
                time.sleep(0.005)
            return {"rate": n / (time.perf_counter() - started)}
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            job = [mod.noop.defer()]
            while _done(conn, job) < 1:
                time.sleep(0.0005)
            samples.append(time.perf_counter() - started)
        return {"samples": samples}


OPS = {
    "enqueue-delay": enqueue_delay,
    "enqueue-group": enqueue_group,
    "e2e": end_to_end,
    "latency": latency,
}


def main(argv: list[str]) -> None:
    system, op, n = argv[0], argv[1], int(argv[2])
    if system == "procrastinate":
        result = procrastinate_op(op, n)
    else:
        mod, group = _load(system)
        result = OPS[op](mod, group, n)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
