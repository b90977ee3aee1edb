"""Fixtures: a transport (embedded SQLite or Redis) per test, the test project, workers."""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import drop_postgres_schema, postgres_url, redis_url
from tests.integration.dashboard import DashboardFactory
from tests.integration.workers import APPS_DIR, STARTED_LOGS, WorkerFactory, log_tail

if str(APPS_DIR) not in sys.path:
    sys.path.insert(0, str(APPS_DIR))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Forget the previous test's process logs: a failure shows this test's only."""
    STARTED_LOGS.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Show the log tail of every worker and dashboard a failed test started.

    A process test that fails on a timeout says only what it waited for; why the
    process never did it is in the process's own log.
    """
    report = yield
    if report.failed:
        for log in STARTED_LOGS:
            report.sections.append((f"{log.name} ({report.when}), last lines", log_tail(log)))
    return report


def _transport_env(kind: str, tmp_path: Path) -> dict[str, str]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/chard.sqlite3"  # absolute path: four slashes in all
        return {"CHARD_BROKER_URL": url, "CHARD_RESULT_BACKEND": url}
    if kind == "postgres":
        url = postgres_url()  # a schema of its own: see postgres_transport
        return {"CHARD_BROKER_URL": url, "CHARD_RESULT_BACKEND": url}
    url = redis_url()
    return {"CHARD_BROKER_URL": url, "CHARD_RESULT_BACKEND": url}


@pytest.fixture(params=["sqlite", "redis"])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment that points the test project at one transport."""
    return _transport_env(request.param, tmp_path)


@pytest.fixture
def postgres_transport(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment for PostgreSQL as broker and result backend; its schema is dropped after."""
    env = _transport_env("postgres", tmp_path)
    yield env
    drop_postgres_schema(env["CHARD_BROKER_URL"])


@pytest.fixture
def sqlite_transport(tmp_path: Path) -> dict[str, str]:
    """The environment for the embedded SQLite transport only."""
    return _transport_env("sqlite", tmp_path)


@pytest.fixture
def itproj(transport: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The test project's app, configured for this test's transport in this process too."""
    for key, value in transport.items():
        monkeypatch.setenv(key, value)
    from itproj.celery import app

    app.close()
    yield app
    app.close()


@pytest.fixture
def workers(tmp_path: Path, transport: dict[str, str]) -> Iterator[WorkerFactory]:
    """Start CLI workers for this test; all are killed at teardown."""
    factory = WorkerFactory(tmp_path, transport)
    yield factory
    factory.cleanup()


@pytest.fixture
def dashboards(tmp_path: Path, transport: dict[str, str]) -> Iterator[DashboardFactory]:
    """Start ``chard dashboard`` processes for this test; all are stopped at teardown."""
    factory = DashboardFactory(tmp_path, transport)
    yield factory
    factory.cleanup()
