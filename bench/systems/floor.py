"""The raw redis-py floor: one round trip per message each way, nothing else.

See ``bench/apps/benchapp_floor.py`` for the design (LPUSH / BRPOP, and a result list per
task that the caller BLPOPs).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from bench.systems import Settings, System, on_redis


@dataclass
class Floor(System):
    """``python -m benchapp_floor``: a parent and 2 forked worker processes."""

    def worker_argv(self, node: int, events: bool) -> list[str]:
        return [sys.executable, "-m", self.app_module]


def _floor(settings: Settings) -> System:
    return on_redis(Floor, "floor", "benchapp_floor", settings)


FACTORIES = {"floor": _floor}
