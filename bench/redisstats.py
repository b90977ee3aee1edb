"""Redis's own cost of a phase: commands and server CPU, from ``INFO`` before and after.

Both figures are server-wide (``INFO commandstats`` counts every client's commands, ``INFO
cpu`` is the server process's user+system time), so they include whatever else talks to the
same Redis during the window: run on a quiet server (``python -m bench --own-redis`` starts a
private one) for figures to quote. ``INFO`` itself is left out of the counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis


@dataclass
class Snapshot:
    """Calls per command and server CPU seconds at one moment."""

    calls: dict[str, int] = field(default_factory=dict)
    cpu: float = 0.0


def snapshot(client: redis.Redis) -> Snapshot:
    """Read ``INFO commandstats`` and ``INFO cpu`` in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.info("commandstats")
    pipe.info("cpu")
    stats, cpu = pipe.execute()
    calls = {
        key.removeprefix("cmdstat_"): int(value["calls"])
        for key, value in stats.items()
        if key != "cmdstat_info"
    }
    return Snapshot(calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]))


def per_task(
    before: Snapshot, after: Snapshot, tasks: int, own: dict[str, int] | None = None
) -> dict[str, Any]:
    """Return ``{"commands": n, "cpu_us": µs, "by_command": {...}}`` per task over the window.

    ``own`` names commands the bench itself sent in the window (its polls), taken out.
    """
    own = own or {}
    delta = {
        name: after.calls.get(name, 0) - before.calls.get(name, 0) - own.get(name, 0)
        for name in after.calls
    }
    delta = {name: count for name, count in delta.items() if count > 0}
    tasks = max(tasks, 1)
    return {
        "commands": sum(delta.values()) / tasks,
        "cpu_us": (after.cpu - before.cpu) * 1e6 / tasks,
        "by_command": {name: count / tasks for name, count in delta.items()},
    }
