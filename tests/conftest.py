"""Suite-wide hooks: remove what this test run left on the shared Redis."""

from __future__ import annotations

import pytest

from tests.helpers import REDIS_DB, REDIS_HOST, REDIS_PORT, RUN_ID


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
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
