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


OPS = {
    "enqueue-delay": enqueue_delay,
    "enqueue-group": enqueue_group,
    "e2e": end_to_end,
    "latency": latency,
}


def main(argv: list[str]) -> None:
    system, op, n = argv[0], argv[1], int(argv[2])
    mod, group = _load(system)
    result = OPS[op](mod, group, n)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
