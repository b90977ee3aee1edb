"""Broker fixtures for the contract suite: one store per test, any number of consumers on it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chard.brokers import Broker, open_broker
from tests.helpers import (
    amqp_url,
    delete_amqp_queues,
    drop_postgres_schema,
    postgres_url,
    redis_url,
)

BROKERS = ["memory", "sqlite", "redis", "amqp", "postgres"]

BrokerFactory = Callable[..., Broker]


@pytest.fixture(params=BROKERS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_broker(broker_kind: str, tmp_path: Path) -> Iterator[BrokerFactory]:
    """Return a factory of broker instances that share one store; all closed after the test.

    Each instance is a separate consumer (its own leases), as two worker processes
    would be: ``make_broker(lease_timeout=0.5)`` passes options through.
    """
    if broker_kind == "memory":
        url = f"memory://contract-{uuid.uuid4().hex}"  # a named store is shared by instances
    elif broker_kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    elif broker_kind == "amqp":
        url = amqp_url()  # this run's vhost; the test's queues are deleted after it
    elif broker_kind == "postgres":
        url = postgres_url()  # a schema of its own, dropped after the test
    else:
        url = redis_url()  # its key prefix isolates this test on the shared server
    opened: list[Broker] = []
    defaults: dict[str, Any] = {}
    if broker_kind == "amqp":
        defaults["queue_max_priority"] = 9  # RabbitMQ orders priorities only when asked to

    def factory(**options: Any) -> Broker:
        broker = open_broker(url, {**defaults, **options})
        opened.append(broker)
        return broker

    yield factory
    for broker in opened:
        broker.close()
    if broker_kind == "amqp":
        delete_amqp_queues(url, {name for b in opened for name in getattr(b, "declared", ())})
    if broker_kind == "postgres":
        drop_postgres_schema(url)


@pytest.fixture
def broker(make_broker: BrokerFactory) -> Broker:
    """One broker instance: the client and the consumer at once."""
    return make_broker()
