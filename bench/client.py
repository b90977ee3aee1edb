"""One client-side measurement, run in its own process: ``python -m bench.client APP OP N``.

Each measurement gets a fresh interpreter, so no two systems share a process (no
cross-imports, no warmed caches from another). ``APP`` is a module of ``bench/apps``, whose
adapter functions (``send``, ``send_many``, ``call``, ``wait``, ``wait_all``, optional
``session``) are all this file knows. Prints one JSON object on stdout. The connection is
opened (one warm-up message) before the clock starts. With ``BENCH_STATS_URL`` set, the
end-to-end run also reports Redis's commands and CPU per task over its timed window.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
from typing import Any


def enqueue_delay(mod: Any, n: int) -> dict[str, Any]:
    mod.send()  # warm-up: connects
    started = time.perf_counter()
    for _ in range(n):
        mod.send()
    elapsed = time.perf_counter() - started
    return {"rate": n / elapsed, "sent": n + 1}


def enqueue_group(mod: Any, n: int) -> dict[str, Any]:
    if not hasattr(mod, "send_many"):
        return {}
    mod.send()  # warm-up: connects
    started = time.perf_counter()
    mod.send_many(n)
    elapsed = time.perf_counter() - started
    return {"rate": n / elapsed, "sent": n + 1}


def end_to_end(mod: Any, n: int) -> dict[str, Any]:
    mod.wait(mod.call())  # warm-up: connects both broker and backend
    stats, before = _stats_before()
    started = time.perf_counter()
    mod.wait_all([mod.call() for _ in range(n)])
    elapsed = time.perf_counter() - started
    out: dict[str, Any] = {"rate": n / elapsed}
    if stats is not None:
        from bench import redisstats

        out["redis"] = redisstats.per_task(before, redisstats.snapshot(stats), n)
    return out


def _stats_before() -> tuple[Any, Any]:
    url = os.environ.get("BENCH_STATS_URL")
    if not url:
        return None, None
    import redis

    from bench import redisstats

    client = redis.Redis.from_url(url)
    return client, redisstats.snapshot(client)


def latency(mod: Any, n: int) -> dict[str, Any]:
    for _ in range(max(5, n // 20)):  # warm-up
        mod.wait(mod.call())
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        mod.wait(mod.call())
        samples.append(time.perf_counter() - started)
    return {"samples": samples}


OPS = {
    "enqueue-delay": enqueue_delay,
    "enqueue-group": enqueue_group,
    "e2e": end_to_end,
    "latency": latency,
}


def main(argv: list[str]) -> None:
    app, op, n = argv[0], argv[1], int(argv[2])
    mod = importlib.import_module(app)
    with getattr(mod, "session", contextlib.nullcontext)():
        result = OPS[op](mod, n)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
