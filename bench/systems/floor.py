"""The floors: the least a queue can do for the same tasks, on Redis or on RabbitMQ.

On Redis, raw redis-py: one round trip per message each way, nothing else (see
``bench/apps/benchapp_floor.py``: LPUSH / BRPOP, and a result list per task that the
caller BLPOPs). On RabbitMQ (``--rabbitmq``), raw pika with the price issue 15's promises
set on the server: confirmed persistent publishes and acks (see
``bench/apps/benchapp_amqp_floor.py``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from bench.systems import Settings, System, on_redis, on_vhost


@dataclass
class Floor(System):
    """``python -m benchapp_floor`` (or ``benchapp_amqp_floor``): a parent, 2 forked workers."""

    def worker_argv(self, node: int, events: bool) -> list[str]:
        return [sys.executable, "-m", self.app_module]


def _floor(settings: Settings) -> System:
    if settings.rabbitmq:
        return on_vhost(Floor, "floor", "benchapp_amqp_floor", settings)
    return on_redis(Floor, "floor", "benchapp_floor", settings)


FACTORIES = {"floor": _floor}
