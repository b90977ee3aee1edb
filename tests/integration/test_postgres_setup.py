"""PostgreSQL set-up and failure modes (issue 16): schema versions, bad input, lost sessions.

Each bad input gives one line naming the fix; a session the server ends (what a restart
does to every client) costs the calls made meanwhile, never a message or a wake-up.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from chard.backends import open_backend
from chard.brokers import open_broker
from chard.brokers._postgres_sql import DURABLE
from chard.brokers.base import OutgoingMessage
from chard.brokers.postgres import COPY_THRESHOLD, PostgresBroker
from chard.exceptions import BrokerConnectionError, ImproperlyConfigured
from tests.helpers import (
    POSTGRES_DB,
    POSTGRES_HOST,
    POSTGRES_PORT,
    drop_postgres_schema,
    free_port,
    postgres_url,
    wait_for,
)
from tests.integration.workers import run_cli

pytestmark = pytest.mark.postgres

ADMIN = f"postgresql://{POSTGRES_HOST}:{POSTGRES_PORT}/{POSTGRES_DB}"


@pytest.fixture
def url() -> Iterator[str]:
    url = postgres_url()
    yield url
    drop_postgres_schema(url)


def _admin(sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        cursor = conn.execute(sql, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def _sessions(name: str) -> set[int]:
    """Return the server pids of this process's sessions called ``name`` (chard-<role>-<use>)."""
    rows = _admin(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (f"{name}-{os.getpid()}",)
    )
    return {int(pid) for (pid,) in rows}  # type: ignore[call-overload]


def _terminate(name: str) -> int:
    """End this process's sessions called ``name``, as a server restart would; return how many."""
    rows = _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (f"{name}-{os.getpid()}",),
    )
    return len(rows)


def test_the_schema_is_created_on_first_use_with_its_version(url: str) -> None:
    schema = url.rpartition("=")[2]
    with open_broker(url):
        pass
    backend = open_backend(url)
    backend.forget("nothing")  # the backend creates its table on first use
    backend.close()

    tables = {
        r[0] for r in _admin("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
    }
    versions = dict(_admin(f'SELECT component, version FROM "{schema}".chard_schema'))
    assert {"chard_messages", "chard_dead_letters", "chard_broadcasts", "chard_results"} <= tables
    assert versions == {"broker": 1, "results": 1}


def test_a_schema_of_a_newer_chard_is_refused_with_the_fix(url: str) -> None:
    schema = url.rpartition("=")[2]
    PostgresBroker(url).close()
    _admin(f"UPDATE \"{schema}\".chard_schema SET version = 7 WHERE component = 'broker'")

    with pytest.raises(
        ImproperlyConfigured,
        match=r"at version 7, newer than this chard knows \(1\); upgrade chard",
    ):
        PostgresBroker(url)


def test_an_unreachable_server_names_the_url_and_the_fix() -> None:
    url = f"postgresql://127.0.0.1:{free_port()}/test"

    with pytest.raises(BrokerConnectionError, match=r"cannot be reached: .*is the server running"):
        open_broker(url)


def test_a_bad_schema_name_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"schema name 'no-dashes' .* is not usable"):
        open_broker(f"{ADMIN}?schema=no-dashes")


def test_a_user_without_create_permission_is_told_what_to_grant() -> None:
    # Given a login role that may connect but not create schemas (PostgreSQL 15's default)
    role = f"chardtest_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE ROLE "{role}" LOGIN')
    try:
        url = f"postgresql://{role}@{POSTGRES_HOST}:{POSTGRES_PORT}/{POSTGRES_DB}?schema={role}"

        # Then opening a broker there says which grant is missing
        with pytest.raises(ImproperlyConfigured, match=r"lacks a permission: .*; grant it CREATE"):
            open_broker(url)
    finally:
        _admin(f'DROP ROLE "{role}"')


def test_a_broker_whose_sessions_are_ended_reconnects_and_loses_nothing(url: str) -> None:
    # Given a consumer blocked in a fetch, and a producer, both connected and listening
    consumer, producer = PostgresBroker(url), PostgresBroker(url)
    try:
        producer.publish(OutgoingMessage("q", b"before"))
        (first,) = consumer.fetch(["q"], 1, timeout=1.0)

        # When the server ends every session of theirs (what a restart does)
        (listening,) = wait_for(lambda: _sessions("chard-broker-listen"), timeout=5)
        assert _terminate("chard-broker-listen") == 1
        assert _terminate("chard-broker-db") == 2

        # Then the next calls reconnect (once each) and go on: the leased one is acked
        first.ack()
        assert consumer.queue_size("q") == 0

        # And a fetch blocked after the listener came back is woken by a publish
        got: list[bytes] = []
        thread = threading.Thread(
            target=lambda: got.extend(d.body for d in consumer.fetch(["q"], 1, 10.0))
        )
        thread.start()
        wait_for(lambda: _sessions("chard-broker-listen") - {listening})  # listening again
        wait_for(lambda: consumer._idle is not None)  # it looked, found nothing, and sleeps
        producer.publish(OutgoingMessage("q", b"after"))
        thread.join(timeout=10)
        assert got == [b"after"]
        assert consumer.dead_letters() == []
    finally:
        consumer.close()
        producer.close()


def test_chard_db_upgrade_creates_then_reports_every_component(url: str, tmp_path: Path) -> None:
    env = {
        "CHARD_BROKER_URL": url,
        "CHARD_RESULT_BACKEND": url.replace("postgresql", "db+postgresql"),
    }

    first = run_cli(["-A", "itproj", "db", "upgrade"], env, tmp_path)
    again = run_cli(["-A", "itproj", "db", "upgrade"], env, tmp_path)

    assert first.returncode == 0, first.stderr
    for component in ("broker", "beat", "results"):
        assert f"{component}: schema " in first.stdout
    assert first.stdout.count("upgraded from version 0 to 1") == 3, first.stdout
    assert again.stdout.count("is at version 1, the newest") == 3, again.stdout
    schema = url.rpartition("=")[2]
    versions = dict(_admin(f'SELECT component, version FROM "{schema}".chard_schema'))
    assert versions == {"broker": 1, "beat": 1, "results": 1}


def test_chard_db_upgrade_without_postgres_names_the_settings(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'chard.sqlite3'}"
    env = {"CHARD_BROKER_URL": db, "CHARD_RESULT_BACKEND": db}

    done = run_cli(["-A", "itproj", "db", "upgrade"], env, tmp_path)

    assert done.returncode != 0
    assert "neither the broker" in done.stderr
    assert "set broker_url or result_backend" in done.stderr


def test_a_large_batch_is_loaded_whole_in_order_with_its_etas(url: str) -> None:
    # Given a batch past the COPY threshold: priorities, and two messages due later
    later = time.time() + 60
    batch = [OutgoingMessage("big", b"m%03d" % i, priority=i % 2) for i in range(200)]
    batch += [OutgoingMessage("big", b"later-a", eta=later), OutgoingMessage("other", b"o")]
    batch.append(OutgoingMessage("big", b"later-b", eta=later))
    assert len(batch) >= COPY_THRESHOLD
    with PostgresBroker(url) as broker:
        # When it is published in one call
        broker.publish(batch)

        # Then everything is stored, the due ones come in priority then publish order
        assert (broker.queue_size("big"), broker.queue_size("other")) == (202, 1)
        got = [d.body for d in broker.fetch(["big"], 500, timeout=1.0)]
        assert got == [b"m%03d" % i for i in range(0, 200, 2)] + [
            b"m%03d" % i for i in range(1, 200, 2)
        ]
        assert broker.queue_size("big") == 2  # the two ETAs wait, unleased


def test_settles_commit_without_waiting_for_the_flush_unless_told_to(url: str) -> None:
    # Leases, acks and results may be undone by a server crash (redelivery), never a message
    with (
        PostgresBroker(url) as relaxed,
        PostgresBroker(url, {"synchronous_commit": "on"}) as strict,
    ):
        assert relaxed.db.rows("SHOW synchronous_commit") == [("off",)]
        assert strict.db.rows("SHOW synchronous_commit") == [("on",)]
        durable = relaxed.db.transaction(
            lambda tx: (tx.run(DURABLE), tx.rows("SHOW synchronous_commit"))[1]
        )
        assert durable == [("on",)]  # what a publish runs under
    backend = open_backend(url)
    try:
        assert backend.db.rows("SHOW synchronous_commit") == [("off",)]  # type: ignore[attr-defined]
    finally:
        backend.close()


def test_a_schema_with_a_long_name_still_notifies() -> None:
    # PostgreSQL refuses channel names of 64 bytes or more: the longest schema must still work
    url = postgres_url(schema=("chardtest_long_" + uuid.uuid4().hex * 2)[:63])
    try:
        with PostgresBroker(url) as consumer, PostgresBroker(url) as producer:
            got: list[bytes] = []
            thread = threading.Thread(
                target=lambda: got.extend(d.body for d in consumer.fetch(["q"], 1, 10.0))
            )
            thread.start()
            wait_for(lambda: consumer._idle is not None)  # it looked, found nothing, and sleeps
            producer.publish(OutgoingMessage("q", b"hello"))
            producer.broadcast("c", b"too")
            thread.join(timeout=10)
            assert got == [b"hello"]
            assert len(consumer.messages_channel) < 64
    finally:
        drop_postgres_schema(url)
