"""Smoke test of the benchmark harness: ``python -m bench --quick`` against chard only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    POSTGRES_DB,
    POSTGRES_HOST,
    POSTGRES_PORT,
    REDIS_HOST,
    REDIS_PORT,
    require_service,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

#: Rows chard must report, with positive numbers.
ROWS = (
    "enqueue: delay()",
    "enqueue: group of N",
    "drain: N queued, 2 procs",
    "end-to-end with results",
    "round-trip p50",
    "round-trip p99",
    "worker peak RSS (tree)",
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("system", ["chard", pytest.param("chard-pg", marks=pytest.mark.postgres)])
def test_quick_bench_prints_a_table_with_chard_numbers(tmp_path: Path, system: str) -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    if system == "chard-pg":
        require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    output = tmp_path / "latest.md"
    argv = [sys.executable, "-m", "bench", "--quick", "--systems", system]
    argv += ["-n", "200", "--e2e-n", "50", "--latency-n", "30", "--idle-seconds", "0.5"]
    argv += ["--redis", f"redis://{REDIS_HOST}:{REDIS_PORT}", "--output", str(output)]
    argv += ["--postgres", f"postgresql://{POSTGRES_HOST}:{POSTGRES_PORT}/{POSTGRES_DB}"]
    proc = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=50, env={**os.environ}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert output.read_text() in proc.stdout  # the same table on stdout and in the file
    # chard's column is the third; chard-pg's the seventh (after celery and the ratios)
    skip = 0 if system == "chard" else 4
    for label in ROWS:
        pattern = rf"^\| {re.escape(label)} \| [^|]+ \|(?:[^|]*\|){{{skip}}} ([0-9.,]+) \|"
        match = re.search(pattern, proc.stdout, re.M)
        assert match is not None, f"no {system} number for {label!r} in:\n{proc.stdout}"
        assert float(match.group(1).replace(",", "")) > 0, label
