"""Celery 5 on Redis (a db of its own, flushed), RabbitMQ, or kombu's SQLAlchemy transport."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bench.systems import Settings, System, in_tmpdir, on_redis, on_vhost
from bench.systems.chard import Chard


@dataclass
class Celery(Chard):
    """``celery -A benchapp_celery worker -P prefork -c 2``: chard's command line."""

    cli: ClassVar[str] = "celery"


def _celery(settings: Settings) -> System:
    if settings.rabbitmq:
        return on_vhost(Celery, "celery", "benchapp_celery", settings)
    return on_redis(Celery, "celery", "benchapp_celery", settings)


def _celery_sqlite(settings: Settings) -> System:
    """kombu's ``sqla+sqlite://`` transport and the ``db+sqlite://`` result backend.

    Both poll: the worker's transport every 10 ms (``polling_interval``, default 1 s) and
    ``get()`` every 5 ms (``BENCH_POLL``), so the round trip is not a default's sleep.
    """
    variables = {
        "BENCH_BROKER_URL": "sqla+sqlite:///{tmp}/broker.sqlite3",
        "BENCH_BACKEND_URL": "db+sqlite:///{tmp}/results.sqlite3",
        "BENCH_POLL": "0.005",
    }
    return in_tmpdir(Celery, "celery-sqlite", "benchapp_celery", settings, variables)


FACTORIES = {"celery": _celery, "celery-sqlite": _celery_sqlite}
