"""Throughput, failures and runtime percentiles over time, from the kept tasks (pure).

The tasks' end times are bucketed into equal steps up to ``now``; each bucket counts
successes and failures and gives the 50th, 90th and 99th percentile of the runtimes
that ended in it. Only kept tasks count (``--max-tasks``): on a busy cluster the
oldest buckets thin out first, which the page says.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from chard import states
from chard.events.state import TaskState

#: Most buckets one chart has.
MAX_BUCKETS = 360
#: Longest span a chart covers (seconds): 30 days.
MAX_SPAN = 30 * 86400.0


def percentile(ordered: list[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of ``ordered`` (nearest rank), None when empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def throughput(
    tasks: Iterable[TaskState], now: float, span: float, step: float
) -> list[dict[str, Any]]:
    """Buckets of ``step`` seconds over the ``span`` seconds before ``now``, oldest first."""
    count = min(MAX_BUCKETS, max(1, math.ceil(span / step)))
    start = now - count * step
    succeeded = [0] * count
    failed = [0] * count
    runtimes: list[list[float]] = [[] for _ in range(count)]
    for task in tasks:
        ended = task.timestamp
        if task.state not in (states.SUCCESS, states.FAILURE) or ended is None:
            continue
        if not start <= ended < now:
            continue
        index = min(count - 1, int((ended - start) // step))
        if task.state == states.SUCCESS:
            succeeded[index] += 1
        else:
            failed[index] += 1
        if isinstance(task.runtime, int | float):
            runtimes[index].append(float(task.runtime))
    buckets = []
    for index in range(count):
        ordered = sorted(runtimes[index])
        buckets.append(
            {
                "start": start + index * step,
                "succeeded": succeeded[index],
                "failed": failed[index],
                "p50": percentile(ordered, 0.5),
                "p90": percentile(ordered, 0.9),
                "p99": percentile(ordered, 0.99),
            }
        )
    return buckets
