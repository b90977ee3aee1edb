"""Page weight and load time of the dashboard with 100,000 tasks in its history (issue 17).

Fills a fresh history store (the SQLite result backend's file by default, Redis with
``--redis``, PostgreSQL with ``--postgres``) with ``--tasks`` task records, starts
``chard dashboard`` through the CLI on it, and measures over HTTP on loopback, median of ``--runs``:

* the page: ``/`` plus its script and style sheet (bytes; the page holds no data),
* the JSON list API: first page, a filtered page (state + worker), a name filter,
  a search by an argument substring, a deep page (offset 50,000), a task's page,
* with ``--browser`` (Debian's chromium and chromium-driver, through Selenium): the
  time from navigation to the task list's rows drawn, as a person would wait.

Run: ``.venv/bin/python -m bench.dashboard_load [--tasks 100000] [--browser]
[--redis URL | --postgres URL]``.
Prints a markdown table. Everything it starts (the dashboard) it stops; the files
live in a temporary folder, the Redis keys under a fresh prefix that is deleted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from chard import Celery
from chard.dashboard.history import encode
from chard.dashboard.server import open_history
from chard.events.state import TaskState

STATES = ("SUCCESS",) * 8 + ("FAILURE", "RETRY")
NAMES = ("proj.add", "proj.mul", "proj.report", "proj.email.send", "proj.resize")
CHARD = str(Path(sys.executable).with_name("chard"))
APP = """from chard import Celery
import os
app = Celery("benchdash", broker=os.environ["BENCH_BROKER"], backend=os.environ["BENCH_BACKEND"])
"""


def fake(i: int, start: float) -> TaskState:
    """The ``i``-th task: varied names, states, workers, and args a search can find."""
    stamp = start + i * 0.01
    task = TaskState(
        f"{uuid.UUID(int=i * 7919 + 1)}", name=NAMES[i % len(NAMES)], state=STATES[i % 10]
    )
    task.worker = f"w{i % 4}@bench"
    task.args = f"({i}, 'order-{i:06d}', {{'sku': 'item-{i % 997}'}})"
    task.kwargs = "{'priority': 'normal'}"
    task.timestamp = stamp
    task.runtime = 0.001 * (i % 50)
    task.result = "None" if task.state == "SUCCESS" else None
    task.timeline.extend([("task-received", stamp - 0.02), ("task-succeeded", stamp)])
    return task


def fill(backend: str, count: int) -> float:
    """Write ``count`` records in batches; return the seconds it took."""
    store = open_history(Celery("benchdash", broker="memory://", backend=backend))
    assert store is not None
    began, start = time.perf_counter(), time.time() - count * 0.01
    batch = 5_000
    for first in range(0, count, batch):
        store.save([encode(fake(i, start)) for i in range(first, min(count, first + batch))])
    store.close()
    return time.perf_counter() - began


def fetch(url: str) -> tuple[float, int]:
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as reply:
        size = len(reply.read())
    return (time.perf_counter() - began) * 1000, size


def measure(url: str, runs: int) -> tuple[float, int]:
    fetch(url)  # warm: the first answer pays for imports and caches
    timings = [fetch(url) for _ in range(runs)]
    return statistics.median(t for t, _ in timings), timings[-1][1]


def start_dashboard(folder: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    (folder / "benchdash.py").write_text(APP)
    argv = [CHARD, "-A", "benchdash", "dashboard", "--port", str(port),
            "--no-enable-events", "--inspect-interval", "60"]  # fmt: skip
    full = {**os.environ, **env, "PYTHONPATH": str(folder)}
    log = open(folder / "dashboard.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(argv, cwd=folder, env=full, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen[bytes], base: str, timeout: float = 300.0) -> float:
    began = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the dashboard exited ({proc.returncode})")
        try:
            overview = urllib.request.urlopen(base + "/api/overview", timeout=5).read()
            if b'"tasks_kept": 0' not in overview.replace(b'":0', b'": 0'):
                return time.perf_counter() - began
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the dashboard did not answer in time")


def browser_ms(base: str, runs: int) -> float | None:
    """Milliseconds from navigation to the list's rows drawn, in headless Chromium."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        return None
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    timings = []
    try:
        for run in range(runs + 1):
            driver.get("about:blank")
            began = time.perf_counter()
            driver.get(f"{base}/?live=0&r={run}#/tasks?state=FAILURE&worker=w0%40bench")
            WebDriverWait(driver, 60, poll_frequency=0.01).until(
                lambda d: len(d.find_elements(By.CSS_SELECTOR, "main tbody a")) >= 50
            )
            timings.append((time.perf_counter() - began) * 1000)
    finally:
        driver.quit()
    return statistics.median(timings[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--port", type=int, default=5599)
    parser.add_argument("--redis", help="a Redis URL: the history in Redis, not SQLite")
    parser.add_argument("--postgres", help="a PostgreSQL URL: the history in a fresh schema")
    parser.add_argument("--browser", action="store_true", help="also time the page in chromium")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        folder = Path(tmp)
        broker = f"sqlite:///{folder}/broker.sqlite3"
        if args.redis:
            prefix = f"benchdash-{uuid.uuid4().hex[:8]}."
            backend = f"{args.redis}?global_keyprefix={prefix}"
        elif args.postgres:
            backend = f"{args.postgres}?schema=benchdash_{uuid.uuid4().hex[:8]}"
        else:
            backend = f"sqlite:///{folder}/results.sqlite3"
        filled = fill(backend, args.tasks)
        env = {"BENCH_BROKER": broker, "BENCH_BACKEND": backend}
        proc = start_dashboard(folder, env, args.port)
        base = f"http://127.0.0.1:{args.port}"
        try:
            ready = wait_ready(proc, base)
            rows = report(base, args, filled, ready)
            if args.browser:
                shown = browser_ms(base, args.runs)
                rows.append(("page in chromium: filtered list drawn", "-",
                             "n/a" if shown is None else f"{shown:.0f}"))  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if args.redis:
                _drop_redis(backend)
            if args.postgres:
                _drop_schema(backend)
    kind = "Redis" if args.redis else "PostgreSQL" if args.postgres else "SQLite"
    print(f"| dashboard, {args.tasks:,} tasks ({kind}) | bytes | ms |")
    print("|---|---:|---:|")
    for what, size, ms in rows:
        print(f"| {what} | {size} | {ms} |")
    return 0


def report(base: str, args: Any, filled: float, ready: float) -> list[tuple[str, Any, Any]]:
    rows: list[tuple[str, Any, Any]] = [
        (f"fill the history ({args.tasks:,} records)", "-", f"{filled * 1000:.0f}"),
        ("dashboard start to first answer (restores memory)", "-", f"{ready * 1000:.0f}"),
    ]
    weight = 0
    for path in ("/", "/static/app.js", "/static/app.css"):
        ms, size = measure(base + path, args.runs)
        weight += size
        rows.append((f"GET {path}", size, f"{ms:.1f}"))
    rows.append(("page weight (HTML + JS + CSS)", weight, "-"))
    some_id = str(uuid.UUID(int=(args.tasks // 2) * 7919 + 1))
    queries = [
        ("API first page (50)", "/api/tasks?limit=50"),
        ("API filtered: state + worker", "/api/tasks?state=FAILURE&worker=w0%40bench&limit=50"),
        ("API filtered: name substring", "/api/tasks?name=email&limit=50"),
        ("API search: args substring", "/api/tasks?search=order-04242&limit=50"),
        ("API search: args substring, many hits", "/api/tasks?search=item-42%27&limit=50"),
        ("API deep page (offset 50,000)", "/api/tasks?offset=50000&limit=50"),
        ("API a task's page", f"/api/tasks/{some_id}"),
    ]
    for what, path in queries:
        ms, size = measure(base + path, args.runs)
        rows.append((what, size, f"{ms:.1f}"))
    return rows


def _drop_schema(backend: str) -> None:
    import psycopg

    conninfo, _, schema = backend.partition("?schema=")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _drop_redis(backend: str) -> None:
    from chard._redis.client import open_client
    from chard._redis.url import parse_redis_url

    target = parse_redis_url(backend)
    client = open_client(target)
    for key in client.scan_iter(f"{target.keyprefix}*"):
        client.delete(key)
    client.close()


if __name__ == "__main__":
    raise SystemExit(main())
