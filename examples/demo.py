"""A real demo on the embedded default: start a worker, send tasks, print the results.

Runs from a fresh checkout with nothing but chard installed (no Redis, no RabbitMQ):
the broker and results live in a SQLite file in a temporary directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="chard-demo-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE),
        "CHARD_BROKER_URL": "",
        "CHARD_RESULT_BACKEND": "",
    }
    chard = str(Path(sys.executable).with_name("chard"))
    print(f"$ chard -A proj worker -l INFO -c 2      (in {workdir})")
    worker = subprocess.Popen(
        [chard, "-A", "proj", "worker", "-l", "INFO", "-c", "2"],
        cwd=workdir,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = threading.Event()

    def relay() -> None:  # keep reading the log, or the worker blocks on a full pipe
        for line in worker.stderr:  # type: ignore[union-attr]
            if not ready.is_set() or "WARNING" in line or "ERROR" in line:
                print("  worker |", line.rstrip())
            if "ready." in line:
                ready.set()

    threading.Thread(target=relay, daemon=True).start()
    try:
        if not ready.wait(timeout=30):
            raise SystemExit("the worker did not start; see its log above")
        os.chdir(workdir)  # the client finds the same ./chard.sqlite3 as the worker
        sys.path.insert(0, str(HERE))
        from proj.tasks import add, mul, xsum

        print(">>> add.delay(4, 4).get(timeout=10)")
        print(add.delay(4, 4).get(timeout=10))
        print(">>> mul.apply_async((6, 7), countdown=1).get(timeout=10)")
        print(mul.apply_async((6, 7), countdown=1).get(timeout=10))
        started = time.perf_counter()
        results = [add.delay(i, i) for i in range(500)]
        total = xsum.delay([r.get(timeout=30) for r in results]).get(timeout=10)
        elapsed = time.perf_counter() - started
        print(f">>> xsum of 500 add() results: {total}  ({500 / elapsed:.0f} tasks/s round trip)")
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        worker.wait(timeout=30)
    print(
        "worker stopped cleanly" if worker.returncode == 0 else f"worker exit {worker.returncode}"
    )
    return worker.returncode


if __name__ == "__main__":
    raise SystemExit(main())
