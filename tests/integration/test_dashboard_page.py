"""The dashboard's web page in headless Chromium (issue 17): it renders, and escapes.

Chromium loads the page with ``?live=0`` (no live stream, so its virtual time can
run out and it prints the page); the DOM it prints is what a user's browser built
from the API. Screenshots are left in the test's ``tmp_path`` as artefacts. CI
installs Debian's ``chromium`` (``.ci/run``); elsewhere the test skips without it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chard import states
from tests.helpers import IN_CI, wait_for
from tests.integration.dashboard import Dashboard, DashboardFactory
from tests.integration.test_dashboard import NODE, events_flowing, task_in
from tests.integration.workers import WorkerFactory

pytestmark = pytest.mark.slow

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if IN_CI:
            pytest.fail("chromium is not installed (CI=true: .ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


@pytest.fixture
def transport(sqlite_transport: dict[str, str]) -> dict[str, str]:
    """The page is the same on every broker: SQLite only (the API tests cover Redis)."""
    return sqlite_transport


def browse(chromium: str, dashboard: Dashboard, page: str, artefact: Path) -> str:
    """Load ``page`` (a ``#/...`` route) still; save a screenshot; return the DOM built."""
    url = f"{dashboard.url}/?live=0{page}"
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={artefact.parent / 'chromium-profile'}", "--window-size=1300,800",
        "--virtual-time-budget=5000",
    ]  # fmt: skip
    subprocess.run(
        [chromium, *flags, f"--screenshot={artefact}", url], capture_output=True, timeout=90
    )
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=90
    )
    assert dom.returncode == 0, dom.stderr
    return dom.stdout


def test_the_page_shows_workers_and_tasks_and_escapes_their_values(
    itproj: Any,
    workers: WorkerFactory,
    dashboards: DashboardFactory,
    chromium: str,
    tmp_path: Path,
) -> None:
    # Given a worker, a dashboard, and a task whose arguments and result look like HTML
    workers.start("-n", NODE, "-c", "1")
    dashboard = dashboards.start("--inspect-interval", "1")
    wait_for(lambda: events_flowing(dashboard), timeout=30)
    from itproj.tasks import add

    result = add.delay(HOSTILE, "!")
    assert result.get(timeout=30) == HOSTILE + "!"
    wait_for(lambda: task_in(dashboard, result.id, states.SUCCESS), timeout=30)

    # Then the workers view lists the node online
    workers_dom = browse(chromium, dashboard, "#/workers", tmp_path / "workers.png")
    assert NODE in workers_dom
    assert "ONLINE" in workers_dom

    # And the tasks view lists the task, its arguments as text, not as markup
    tasks_dom = browse(chromium, dashboard, "#/tasks", tmp_path / "tasks.png")
    assert result.id in tasks_dom
    assert "&lt;img src=x onerror=alert(1)&gt;" in tasks_dom
    assert "<img" not in tasks_dom

    # And the task's page shows its result and timeline
    task_dom = browse(chromium, dashboard, f"#/task/{result.id}", tmp_path / "task.png")
    assert "task-succeeded" in task_dom
    assert "&lt;img src=x onerror=alert(1)&gt;!" in task_dom
    assert "<img" not in task_dom
    assert (tmp_path / "task.png").stat().st_size > 0


def test_the_page_asks_for_a_login_when_one_is_configured(
    dashboards: DashboardFactory, chromium: str, tmp_path: Path
) -> None:
    dashboard = dashboards.start(extra_env={"CHARD_DASHBOARD_TOKEN": "s3cret"})
    dom = browse(chromium, dashboard, "#/workers", tmp_path / "login.png")
    assert "Log in" in dom
    assert 'name="token"' in dom
