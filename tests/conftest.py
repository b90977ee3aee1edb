"""Suite-wide hooks: remove what this test run left on the shared Redis."""

from __future__ import annotations

import pytest

from tests.helpers import (
    POSTGRES_DB,
    POSTGRES_HOST,
    POSTGRES_PORT,
    POSTGRES_SCHEMA_PREFIX,
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    RUN_ID,
)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove what this run left on the shared servers, and only that."""
    _drop_postgres_schemas()
    _delete_redis_keys()


def _drop_postgres_schemas() -> None:
    """Drop every schema named ``chardtest_<RUN_ID>_*`` (a test that failed may leave one)."""
    try:
        import psycopg
    except ImportError:  # the postgres extra is not installed: nothing was written there
        return
    conninfo = f"postgresql://{POSTGRES_HOST}:{POSTGRES_PORT}/{POSTGRES_DB}"
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            pattern = POSTGRES_SCHEMA_PREFIX.replace("_", "\\_") + "%"
            rows = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (pattern,)
            ).fetchall()
            for (name,) in rows:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    except psycopg.Error:
        pass  # the server is gone; the tests that needed it have already reported it


def _delete_redis_keys() -> None:
    """Delete every key under this run's prefixes (``chardtest-<RUN_ID>-*``), and only those."""
    try:
        import redis
    except ImportError:  # the redis extra is not installed: nothing was written there
        return
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_timeout=5)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"chardtest-{RUN_ID}-*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    except redis.RedisError:
        pass  # the server is gone; the tests that needed it have already reported it
    finally:
        client.close()
