"""chard on Redis (a key prefix in its db), SQLite (a temp dir), PostgreSQL and RabbitMQ."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import ClassVar

import redis

from bench.systems import BIN, Settings, System, in_tmpdir, on_vhost
from bench.systems._servers import Sql


@dataclass
class Chard(System):
    """``chard -A benchapp worker -P prefork -c 2``; where its data lives varies."""

    #: The command (Celery's is the same command line)
    cli: ClassVar[str] = "chard"

    def worker_argv(self, node: int, events: bool) -> list[str]:
        argv = [str(BIN / self.cli), "-A", self.app_module, "worker", "-P", "prefork", "-c", "2"]
        argv += ["-l", "WARNING", "-n", f"bench{node}@%h"]
        return [*argv, *(["-E"] if events else [])]


def _chard(settings: Settings) -> System:
    if settings.rabbitmq:
        return on_vhost(Chard, "chard", "benchapp", settings)
    prefix = f"bench-{uuid.uuid4().hex}"
    url = settings.db_url("chard")
    return Chard(
        "chard", "benchapp", "redis", settings.counter_url(), stats_url=url,
        variables={"BENCH_BROKER_URL": f"{url}?global_keyprefix={prefix}"},
        prefix=prefix, db=redis.Redis.from_url(url),
    )  # fmt: skip


def _chard_sqlite(settings: Settings) -> System:
    """The embedded default (broker and results in one SQLite file), in a temp dir."""
    variables = {"BENCH_BROKER_URL": "sqlite:///{tmp}/chard.sqlite3"}
    return in_tmpdir(Chard, "chard-sqlite", "benchapp", settings, variables)


def _chard_pg(settings: Settings) -> System:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    return Chard(
        "chard-pg", "benchapp", "postgres", settings.counter_url(),
        variables={"BENCH_BROKER_URL": f"{settings.postgres}?schema={schema}"},
        schema=Sql(settings.postgres), schema_name=schema,
    )  # fmt: skip


FACTORIES = {"chard": _chard, "chard-sqlite": _chard_sqlite, "chard-pg": _chard_pg}
