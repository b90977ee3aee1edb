"""The dashboard driven in headless Chromium as a person would use it (issue 17).

Selenium drives Debian's ``chromium`` through Debian's ``chromium-driver`` (both
installed by ``.ci/run``; the two packages come in matching versions, and nothing is
downloaded: the driver's path is given, so Selenium Manager is never asked). A real
worker and a real dashboard run through the CLI. Each step waits for what the page
shows, with a deadline. Screenshots go to ``tmp/artefacts/dashboard-browser/`` in the
checkout (or ``$CHARD_ARTEFACTS``); the test prints the folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chard import states
from tests.helpers import IN_CI, wait_for
from tests.integration.dashboard import Dashboard, DashboardFactory
from tests.integration.test_dashboard import events_flowing, task_in
from tests.integration.workers import WorkerFactory

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NODE = "e2e@test"
#: Seconds the page gets to show something (the machine is busy: generous).
PATIENCE = 60.0
ARTEFACTS = Path(
    os.environ.get("CHARD_ARTEFACTS")
    or Path(__file__).resolve().parents[2] / "tmp" / "artefacts" / "dashboard-browser"
)


def _need(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    hint = "apt-get install -y chromium chromium-driver"
    if IN_CI:
        pytest.fail(f"{names[0]} is not installed (CI=true: .ci/run installs it: {hint})")
    pytest.skip(f"{names[0]} is not installed ({hint})")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium under chromedriver, with the flags this closed network needs."""
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = _need("chromium", "chromium-browser")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1300,900",
    ):  # fmt: skip
        options.add_argument(flag)
    service = Service(executable_path=_need("chromedriver"), log_output=str(tmp_path / "cd.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(PATIENCE)
    yield driver
    driver.quit()


@pytest.fixture
def transport(sqlite_transport: dict[str, str]) -> dict[str, str]:
    """SQLite as broker and backend: the history lives in the backend's file."""
    return sqlite_transport


@pytest.fixture
def shots() -> Callable[[WebDriver, str], Path]:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {ARTEFACTS}")

    def take(driver: WebDriver, name: str) -> Path:
        path = ARTEFACTS / f"{name}.png"
        driver.save_screenshot(str(path))
        return path

    return take


def until(driver: WebDriver, what: str, check: Callable[[WebDriver], Any]) -> Any:
    """Wait for ``check`` to be truthy on the page; fail naming ``what`` and the page's text.

    The live page redraws a view when events arrive, so an element found may be gone
    when used (stale): ``check`` is then run again, whole, until the deadline.
    """

    def probe(d: WebDriver) -> Any:
        try:
            return check(d)
        except WebDriverException:
            return None  # the view was redrawn under us: ask again

    try:
        return WebDriverWait(driver, PATIENCE, poll_frequency=0.1).until(probe)
    except WebDriverException:
        text = driver.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"the page never showed {what} within {PATIENCE}s; it shows:\n{text}")


def body_text(driver: WebDriver) -> str:
    return str(driver.find_element(By.TAG_NAME, "body").text)


def task_rows(driver: WebDriver) -> list[str]:
    """The task ids the list shows."""
    links = driver.find_elements(By.CSS_SELECTOR, "main table a[href^='#/task/']")
    return [str(a.text) for a in links]


def filter_by_args(driver: WebDriver) -> bool:
    """Fill the list's filter (state SUCCESS, args containing 4242) and send it."""
    form = driver.find_element(By.CSS_SELECTOR, "form.filters")
    Select(form.find_element(By.NAME, "state")).select_by_value("SUCCESS")
    search = form.find_element(By.NAME, "search")
    search.clear()
    search.send_keys("4242")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    return True


def graph_nodes(driver: WebDriver, current: str, count: int) -> set[str] | None:
    """The task ids the workflow graph of task ``current`` draws, once it draws ``count``.

    Read in one script, so a redraw between two reads cannot mix two views.
    """
    nodes = driver.execute_script(
        "return [...document.querySelectorAll('svg.workflow a.node')].map((n) =>"
        " [n.getAttribute('data-task'), n.querySelector('rect.current') !== null]);"
    )
    ids = {str(task) for task, _ in nodes}
    here = [str(task) for task, outlined in nodes if outlined] == [current]
    return ids if here and len(ids) == count else None


def click(driver: WebDriver, xpath: str) -> bool:
    driver.find_element(By.XPATH, xpath).click()
    return True


def open_route(driver: WebDriver, dashboard: Dashboard, route: str) -> None:
    driver.get(f"{dashboard.url}/{route}")


def test_a_person_watches_workers_and_tasks_revokes_one_and_finds_it_after_a_restart(
    itproj: Any,
    workers: WorkerFactory,
    dashboards: DashboardFactory,
    browser: WebDriver,
    shots: Callable[[WebDriver, str], Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    from itproj.tasks import add, block_until

    from chard import chain, chord

    # Given a dashboard with its page open, and no worker yet
    dashboard = dashboards.start("--inspect-interval", "1")
    open_route(browser, dashboard, "#/workers")
    until(browser, "the live badge", lambda d: d.find_element(By.ID, "live").text == "live")

    # When a worker starts, the page shows it come online (pushed, no reload)
    workers.start("-n", NODE, "-c", "1")
    until(browser, f"{NODE} online", lambda d: NODE in body_text(d) and "ONLINE" in body_text(d))
    shots(browser, "1-worker-online")
    # Online shows from heartbeats at once; task events are on once the node confirmed
    wait_for(lambda: events_flowing(dashboard, NODE), timeout=PATIENCE)

    # When tasks run: some sums, one with a recognisable argument, and a chain of three
    sums = [add.delay(i, i) for i in range(5)]
    needle = add.delay(4242, 1)
    flow = chain(add.s(1, 2), add.s(10), add.s(100)).apply_async()
    assert [r.get(timeout=60) for r in sums] == [0, 2, 4, 6, 8]
    assert needle.get(timeout=60) == 4243
    assert flow.get(timeout=60) == 113
    middle = flow.parent
    assert middle is not None
    first = middle.parent
    assert first is not None
    wait_for(lambda: task_in(dashboard, flow.id, states.SUCCESS), timeout=PATIENCE)

    # Then the task list shows them, and filtering by an argument narrows it to one
    open_route(browser, dashboard, "#/tasks")
    until(browser, "the tasks", lambda d: needle.id in task_rows(d) and flow.id in task_rows(d))
    until(browser, "the filter form filled and sent", filter_by_args)
    until(browser, "only the filtered task", lambda d: task_rows(d) == [needle.id])
    assert "Tasks (1)" in body_text(browser)
    shots(browser, "2-tasks-filtered")

    # And a chain step's page draws the chain: three boxes, two arrows, this one outlined
    open_route(browser, dashboard, f"#/task/{middle.id}")
    drawn = until(browser, "the workflow graph", lambda d: graph_nodes(d, middle.id, 3))
    assert drawn == {first.id, middle.id, flow.id}
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.workflow path.edge")) == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.workflow rect.current")) == 1
    shots(browser, "3-chain-graph")

    # And a chord's body draws its header members leading to it
    joined = chord([add.s(1, 1), add.s(2, 2)], add.s([100])).apply_async()
    assert joined.get(timeout=60) == [2, 4, 100]
    header = joined.parent
    assert header is not None
    members = {r.id for r in header.results}
    wait_for(lambda: task_in(dashboard, joined.id, states.SUCCESS), timeout=PATIENCE)
    open_route(browser, dashboard, f"#/task/{joined.id}")
    drawn = until(browser, "the chord's graph", lambda d: graph_nodes(d, joined.id, 3))
    assert drawn == {*members, joined.id}
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.workflow path.edge")) == 2
    shots(browser, "3b-chord-graph")

    # When a task waits behind a busy pool (known from its task-sent event) and is revoked
    # from its page
    gate = tmp_path / "gate"
    busy = block_until.delay(str(gate), 120)
    itproj.conf.task_send_sent_event = True
    request.addfinalizer(lambda: setattr(itproj.conf, "task_send_sent_event", False))
    waiting = add.delay(7, 7)
    wait_for(lambda: dashboard.get(f"/api/tasks/{waiting.id}").status == 200, timeout=PATIENCE)
    open_route(browser, dashboard, f"#/task/{waiting.id}")
    until(browser, "a click on revoke", lambda d: click(d, "//button[.='revoke']"))
    until(browser, "the revoke reply", lambda d: "revoke: done" in body_text(d))
    gate.touch()
    assert busy.get(timeout=60) is True

    # Then the page shows it REVOKED
    until(
        browser, "REVOKED",
        lambda d: d.find_element(By.CSS_SELECTOR, "main h2 .state").text == states.REVOKED,
    )  # fmt: skip
    shots(browser, "4-revoked")

    # When the dashboard restarts, the history is still there (read from the backend)
    dashboard.stop()  # SIGTERM: it saves what changed and exits
    again = dashboards.start("--inspect-interval", "1")
    open_route(browser, again, f"#/tasks?state={states.REVOKED}")
    until(browser, "the revoked task after a restart", lambda d: task_rows(d) == [waiting.id])
    open_route(browser, again, "#/tasks?search=4242")
    until(browser, "the filtered task after a restart", lambda d: task_rows(d) == [needle.id])
    assert "searched in the history" in body_text(browser)
    shots(browser, "5-after-restart")
