"""Transactional enqueue on PostgreSQL (issue 16): ``with app.transaction(conn):``.

A task sent inside the application's transaction is visible to workers only once that
transaction commits (and a waiting consumer is woken then, by the NOTIFY sent in it), and
vanishes with a rollback.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from chard import Celery
from chard.brokers.postgres import PostgresBroker
from chard.exceptions import ImproperlyConfigured
from chard.protocol.message import TaskMessage
from tests.helpers import drop_postgres_schema, postgres_url

pytestmark = pytest.mark.postgres


@pytest.fixture
def url() -> Iterator[str]:
    url = postgres_url()
    yield url
    drop_postgres_schema(url)


@pytest.fixture
def app(url: str) -> Iterator[Celery]:
    app = Celery("txn", broker=url, set_as_current=False)

    @app.task(name="txn.add")
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


@pytest.fixture
def conn(url: str) -> Iterator[psycopg.Connection[Any]]:
    """The application's own connection (not in autocommit: it opens a transaction)."""
    with psycopg.connect(url.rpartition("?")[0]) as conn:
        yield conn


@pytest.fixture
def consumer(url: str, app: Celery) -> Iterator[PostgresBroker]:
    app.broker  # noqa: B018 - the schema exists before the application's transaction starts
    broker = PostgresBroker(url)
    yield broker
    broker.close()


def test_a_task_sent_in_a_transaction_appears_when_it_commits(
    app: Celery, conn: psycopg.Connection[Any], consumer: PostgresBroker
) -> None:
    # Given a consumer blocked in a fetch, and a task sent inside an open transaction
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.extend(consumer.fetch(["celery"], 1, 15.0)))
    thread.start()
    with app.transaction(conn):
        result = app.send_task("txn.add", (2, 3))

    # Then nobody sees it while the transaction is open
    assert consumer.queue_size("celery") == 0
    assert app.broker.queue_size("celery") == 0

    # When the application commits
    conn.commit()

    # Then the waiting consumer is woken with it
    thread.join(timeout=15)
    (delivery,) = got
    assert TaskMessage.from_wire(delivery.body, app.accept_content).id == result.id


def test_a_task_sent_in_a_rolled_back_transaction_vanishes(
    app: Celery, conn: psycopg.Connection[Any], consumer: PostgresBroker
) -> None:
    # Given tasks sent inside psycopg's transaction block, which then fails
    def place_order() -> None:
        with conn.transaction(), app.transaction(conn):
            app.send_task("txn.add", (1, 1))
            app.send_task("txn.add", (2, 2))
            raise RuntimeError("the order failed")

    with pytest.raises(RuntimeError, match="the order failed"):
        place_order()

    # Then none of them was ever sent, and tasks sent outside go out as usual
    assert consumer.fetch(["celery"], 10, timeout=0.3) == []
    app.send_task("txn.add", (3, 3))
    assert len(consumer.fetch(["celery"], 10, timeout=5.0)) == 1


def test_only_the_enlisting_context_uses_the_applications_connection(
    app: Celery, conn: psycopg.Connection[Any], consumer: PostgresBroker
) -> None:
    # Given an open transaction that enlists this thread
    with app.transaction(conn):
        app.send_task("txn.add", (1, 1))
        # When another thread sends meanwhile
        other = threading.Thread(target=lambda: app.send_task("txn.add", (9, 9)))
        other.start()
        other.join()

        # Then that one is visible at once, on the broker's own connection
        assert consumer.queue_size("celery") == 1
    conn.rollback()
    assert consumer.queue_size("celery") == 1


def test_a_broker_without_enlisting_names_the_fix(tmp_path: Any) -> None:
    app = Celery("txn", broker=f"sqlite:///{tmp_path / 'b.sqlite3'}", set_as_current=False)
    try:
        with pytest.raises(ImproperlyConfigured, match=r"needs a postgresql:// broker"):
            app.transaction(object())
    finally:
        app.close()
