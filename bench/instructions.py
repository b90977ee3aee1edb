"""Client cost of one ``delay()`` in CPU instructions, measured with callgrind.

Wall-clock rates swing with the machine's load; instruction counts do not, so this is
the figure to decide send-path changes by. Run it from the repository root::

    python -m bench.instructions                     # this tree, Redis broker and backend
    python -m bench.instructions --tree /tmp/base    # another checkout, same interpreter
    python -m bench.instructions --broker memory://  # no network: the Python alone
    python -m bench.instructions --profile           # cProfile's top lines, no valgrind
    python -m bench.instructions --rate --tree A --tree B   # delay()/s, rounds interleaved

Each count is one process under ``valgrind --tool=callgrind`` sending ``N`` messages;
two runs (``--small`` and ``--large``) and their difference divided by the extra
messages cancel start-up, imports and the first connection. Only the client is
counted: Redis runs in its own process. The messages go to a queue of their own under
a key prefix of their own, purged at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

REDIS = "redis://127.0.0.1:6379/0"
QUEUE = "bench.instructions"


def _child(args: argparse.Namespace) -> None:
    """Send ``args.count`` messages (after one warm-up); run inside callgrind or alone."""
    if args.tree:
        sys.path.insert(0, os.path.abspath(args.tree[0]))
    from chard import Celery

    prefix = f"bench-instructions-{os.getpid()}:"
    app = Celery("instructions", broker=args.broker, backend=args.backend or None)
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    app.conf.task_default_queue = QUEUE

    @app.task(name="bench.add", ignore_result=args.ignore_result)
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(1, 2)  # warm-up: connects the broker (and the backend)
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    for i in range(args.count):
        add.delay(i, 2)
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - started
    app.broker.purge(QUEUE)
    print(json.dumps({"count": args.count, "seconds": elapsed}))
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(args.profile)


def _child_command(args: argparse.Namespace, count: int) -> list[str]:
    command = [sys.executable, "-m", "bench.instructions", "--child", str(count)]
    command += ["--broker", args.broker, "--backend", args.backend]
    if args.tree:
        command += ["--tree", args.tree[0]]
    if args.ignore_result:
        command.append("--ignore-result")
    return command


def _instructions(args: argparse.Namespace, count: int) -> int:
    """Total instructions of one child process sending ``count`` messages."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        subprocess.run(
            [*valgrind, *_child_command(args, count)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        with open(out) as f:
            text = f.read()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no instruction total in callgrind's output {out}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tree", action="append", default=[], help="checkout to import chard from (--rate: repeat)"
    )
    parser.add_argument("--broker", default=REDIS)
    parser.add_argument("--backend", default=REDIS, help="result backend URL ('' for none)")
    parser.add_argument("--ignore-result", action="store_true", help="send an ignore_result task")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=3000)
    parser.add_argument("--profile", type=int, default=0, metavar="LINES")
    parser.add_argument("--rate", action="store_true", help="delay()/s, several rounds")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.count = args.child
    if args.child:
        _child(args)
        return
    if args.profile:
        args.count = args.large
        _child(args)
        return
    if args.rate:
        _rates(args)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    small, large = _instructions(args, args.small), _instructions(args, args.large)
    per = (large - small) / (args.large - args.small)
    where = args.tree[0] if args.tree else "this tree"
    print(f"{per:,.0f} instructions per delay() ({where}, {args.broker})")


def _rates(args: argparse.Namespace) -> None:
    """delay()/s of each tree, ``--large`` sends per round, five rounds interleaved."""
    trees = args.tree or [""]
    rates: dict[str, list[float]] = {tree: [] for tree in trees}
    for _ in range(5):
        for tree in trees:
            args.tree = [tree] if tree else []
            done = subprocess.run(
                _child_command(args, args.large), check=True, capture_output=True, text=True
            )
            report: dict[str, Any] = json.loads(done.stdout)
            rates[tree].append(report["count"] / report["seconds"])
    for tree, found in rates.items():
        listed = ", ".join(f"{r:,.0f}" for r in found)
        print(f"{tree or 'this tree'}: median {sorted(found)[2]:,.0f} delay()/s ({listed})")


if __name__ == "__main__":
    main()
