"""``/metrics``: Prometheus's text format, from events and from the broker.

Counters and the runtime histogram are fed from events as they come
(:meth:`Metrics.observe`, under the monitor's lock); gauges (queue lengths, dead
letters, workers online, kept tasks by state) are read when scraped. The text
format is Prometheus's exposition format 0.0.4: ``# HELP``, ``# TYPE``, then one
``name{labels} value`` line per series.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from chard import states
from chard.events.state import TASK_EVENT_STATES, State
from chard.protocol.events import Event

#: Upper bounds (seconds) of the runtime histogram's buckets (Prometheus's defaults).
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Task names tracked at most, so that a stream of odd names cannot grow the page forever.
MAX_NAMES = 1_000
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Counts of observations at or under each bucket bound, their sum and count."""

    def __init__(self) -> None:
        self.counts = [0] * len(RUNTIME_BUCKETS)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(RUNTIME_BUCKETS):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1


class Metrics:
    """Counters of task events by name and state, and runtimes by name."""

    def __init__(self) -> None:
        #: (task name, state) -> events seen.
        self.events: dict[tuple[str, str], int] = {}
        #: task name -> runtimes of its successes and failures.
        self.runtimes: dict[str, Histogram] = {}

    def observe(self, event: Event, state: State) -> None:
        """Count ``event`` (already folded into ``state``, which knows the task's name)."""
        type_ = str(event.get("type", ""))
        task_state = TASK_EVENT_STATES.get(type_)
        uuid = event.get("uuid")
        if task_state is None or not isinstance(uuid, str):
            return
        task = state.tasks.get(uuid)
        name = (task.name if task is not None else None) or "unknown"
        key = (name, task_state)
        if key not in self.events and len(self.events) >= MAX_NAMES * len(TASK_EVENT_STATES):
            return
        self.events[key] = self.events.get(key, 0) + 1
        runtime = event.get("runtime")
        is_timed = task_state in states.READY_STATES and isinstance(runtime, int | float)
        if is_timed and (name in self.runtimes or len(self.runtimes) < MAX_NAMES):
            assert isinstance(runtime, int | float)
            self.runtimes.setdefault(name, Histogram()).observe(float(runtime))


def render(
    metrics: Metrics,
    *,
    kept_by_state: Mapping[tuple[str, str], int],
    queue_lengths: Mapping[str, int],
    dead_letters: int,
    workers_online: int,
) -> str:
    """Return the whole ``/metrics`` page."""
    lines: list[str] = []
    _family(
        lines, "chard_task_events_total", "counter",
        "Task events received, by task name and the state they mean.",
        ((_labels(task=n, state=s), v) for (n, s), v in sorted(metrics.events.items())),
    )  # fmt: skip
    _family(
        lines, "chard_tasks", "gauge",
        "Tasks the dashboard keeps, by task name and current state.",
        ((_labels(task=n, state=s), v) for (n, s), v in sorted(kept_by_state.items())),
    )  # fmt: skip
    lines.append("# HELP chard_task_runtime_seconds Runtime of finished tasks, by task name.")
    lines.append("# TYPE chard_task_runtime_seconds histogram")
    for name, hist in sorted(metrics.runtimes.items()):
        for bound, count in zip(RUNTIME_BUCKETS, hist.counts, strict=True):
            le = _labels(task=name, le=_number(bound))
            lines.append(f"chard_task_runtime_seconds_bucket{le} {count}")
        inf = _labels(task=name, le="+Inf")
        lines.append(f"chard_task_runtime_seconds_bucket{inf} {hist.count}")
        lines.append(f"chard_task_runtime_seconds_sum{_labels(task=name)} {_number(hist.sum)}")
        lines.append(f"chard_task_runtime_seconds_count{_labels(task=name)} {hist.count}")
    _family(
        lines, "chard_queue_length", "gauge", "Messages waiting in each queue.",
        ((_labels(queue=q), v) for q, v in sorted(queue_lengths.items())),
    )  # fmt: skip
    _family(
        lines, "chard_dead_letters", "gauge", "Messages in the dead-letter store.",
        [("", dead_letters)],
    )  # fmt: skip
    _family(lines, "chard_workers_online", "gauge", "Worker nodes online.", [("", workers_online)])
    return "\n".join(lines) + "\n"


def _family(
    lines: list[str], name: str, kind: str, doc: str, samples: Iterable[tuple[str, Any]]
) -> None:
    lines.append(f"# HELP {name} {doc}")
    lines.append(f"# TYPE {name} {kind}")
    lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)


def _labels(**labels: str) -> str:
    """``{a="x",b="y"}``, values escaped as the text format says (backslash, quote, newline)."""
    escaped = (
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'.replace(
            "\n", "\\n"
        )
        for k, v in labels.items()
    )
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value) if isinstance(value, float) else str(value)
