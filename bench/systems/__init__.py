"""The systems the bench compares, behind one small interface (``System``).

A system is: an app module in ``bench/apps`` (the tasks, plus the client adapter that
``bench/client.py`` drives), a worker command line per node, a place of its own on the
server (a Redis db, a key prefix, a schema, a vhost, a temp dir) that ``reset`` empties and
``close`` removes. Every task increments one Redis counter (``BENCH_COUNTER_URL`` /
``BENCH_COUNTER_KEY``), which is how the bench sees a drain finish, the same way for all.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.systems._servers import Sql, amqp_purge, delete_prefix, make_vhost, rabbitmqctl

HERE = Path(__file__).resolve().parent.parent
ROOT = HERE.parent
APPS = HERE / "apps"
BIN = Path(sys.executable).parent


@dataclass
class Settings:
    """What the systems need from the command line."""

    redis_base: str  # redis://host:port, no db
    postgres: str
    rabbitmq: str | None
    dbs: dict[str, int]  # system name -> its Redis db
    counter_db: int

    def counter_url(self) -> str:
        return f"{self.redis_base}/{self.counter_db}"

    def db_url(self, name: str) -> str:
        """The Redis db of system ``name`` (refused: db 9, the test suite's)."""
        return f"{self.redis_base}/{self.dbs[name]}"


@dataclass
class System:
    """One column of the table: how to start its worker and where its data lives."""

    name: str
    app_module: str
    #: "redis", "sqlite", "postgres" or "amqp": ratios compare systems of one family
    family: str
    #: Redis db of the counter every task increments (``--counter-db``)
    counter_url: str
    #: Redis server whose INFO the Redis-cost rows read (None: this system is not on Redis)
    stats_url: str | None = None
    #: BENCH_* variables of its worker and client processes
    variables: dict[str, str] = field(default_factory=dict)
    counter_key: str = field(default_factory=lambda: f"bench.done.{uuid.uuid4().hex}")
    #: Where its messages and results live, one of: a Redis db of its own (flushed), or
    #: a key prefix in one (``prefix``), a temp dir (SQLite files, removed by close()),
    #: a PostgreSQL schema (dropped), a RabbitMQ vhost (purged; deleted by close()).
    db: redis.Redis | None = None
    prefix: str | None = None
    tmpdir: Path | None = None
    schema: Sql | None = None
    schema_name: str = ""
    vhost: str = ""
    broker_url: str = ""

    def __post_init__(self) -> None:
        self.counter = redis.Redis.from_url(self.counter_url)

    def worker_argv(self, node: int, events: bool) -> list[str]:
        """Return the command of worker node ``node`` (2 processes' worth)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every message, result and the counter."""
        self.counter.delete(self.counter_key)
        self._reset()

    def _reset(self) -> None:
        """Forget this system's messages and results (the counter is done)."""
        if self.db is not None and self.prefix is not None:
            delete_prefix(self.db, self.prefix)
        elif self.db is not None:
            self.db.flushdb()
        elif self.schema is not None:
            self.schema.run(f'DROP SCHEMA IF EXISTS "{self.schema_name}" CASCADE')
        elif self.vhost:
            amqp_purge(self.broker_url, "celery")
        elif self.tmpdir is not None:
            for path in self.tmpdir.iterdir():
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove what the run made for this system (after a last reset)."""
        self.counter.delete(self.counter_key)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if self.schema is not None:
            self.schema.run(f'DROP SCHEMA IF EXISTS "{self.schema_name}" CASCADE')
        if self.vhost:
            rabbitmqctl("delete_vhost", self.vhost)

    def done(self) -> int:
        """Tasks run so far (the counter every task increments)."""
        return int(self.counter.get(self.counter_key) or 0)

    def env(self) -> dict[str, str]:
        path = os.pathsep.join([str(APPS), str(ROOT), os.environ.get("PYTHONPATH", "")])
        return {
            **os.environ,
            "PYTHONPATH": path.rstrip(os.pathsep),
            "BENCH_COUNTER_URL": self.counter_url,
            "BENCH_COUNTER_KEY": self.counter_key,
            **({"BENCH_STATS_URL": self.stats_url} if self.stats_url else {}),
            **self.variables,
        }


def on_redis(cls: type[System], name: str, app_module: str, settings: Settings) -> System:
    """A system whose broker and results are the Redis db ``settings`` gives ``name``."""
    url = settings.db_url(name)
    return cls(
        name, app_module, "redis", settings.counter_url(), stats_url=url,
        variables={"BENCH_BROKER_URL": url}, db=redis.Redis.from_url(url),
    )  # fmt: skip


def on_vhost(cls: type[System], name: str, app_module: str, settings: Settings) -> System:
    """A system on RabbitMQ (a vhost of its own), results over ``rpc://``."""
    assert settings.rabbitmq is not None
    vhost = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    url = make_vhost(settings.rabbitmq, vhost)
    return cls(
        name, app_module, "amqp", settings.counter_url(),
        variables={"BENCH_BROKER_URL": url, "BENCH_BACKEND_URL": "rpc://"},
        vhost=vhost, broker_url=url,
    )  # fmt: skip


def in_tmpdir(cls: type[System], name: str, app_module: str, settings: Settings,
              variables: dict[str, str]) -> System:  # fmt: skip
    """A system on SQLite files in a temp dir of its own; ``{tmp}`` in ``variables`` names it."""
    tmpdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    variables = {k: v.replace("{tmp}", str(tmpdir)) for k, v in variables.items()}
    return cls(name, app_module, "sqlite", settings.counter_url(), variables=variables,
               tmpdir=tmpdir)  # fmt: skip


def make(name: str, settings: Settings) -> System:
    """Build the system called ``name`` (see ``KNOWN``)."""
    from bench.systems import celery, chard, dramatiq, floor, huey, procrastinate

    factories = {
        **chard.FACTORIES,
        **celery.FACTORIES,
        **huey.FACTORIES,
        **dramatiq.FACTORIES,
        **floor.FACTORIES,
        **procrastinate.FACTORIES,
    }
    return factories[name](settings)


#: System name -> the package it needs (None: chard itself or redis-py)
KNOWN: dict[str, str | None] = {
    "chard": None,
    "huey": "huey",
    "dramatiq": "dramatiq",
    "celery": "celery",
    "floor": None,
    "chard-sqlite": None,
    "huey-sqlite": "huey",
    "celery-sqlite": "sqlalchemy",
    "chard-pg": None,
    "procrastinate": "procrastinate",
}
