"""Issue 14: the imports and options Celery code uses, each resolving to working chard code."""

from __future__ import annotations

import contextvars
import logging
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

import chard
from chard import Celery
from chard.exceptions import NoCurrentApp
from chard.task import Task


# -- chard.utils.log ---------------------------------------------------------------------------
def test_get_task_logger_records_carry_the_task_name_and_id(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    from chard.utils.log import get_task_logger

    logger = get_task_logger("proj.tasks")

    @app.task(name="proj.tasks.report")
    def report() -> None:
        logger.info("reporting")

    with caplog.at_level(logging.INFO, logger="proj.tasks"):
        result = report.apply(task_id="task-1")
        logger.info("outside")

    inside, outside = caplog.records
    assert result.successful()
    assert (inside.task_name, inside.task_id) == ("proj.tasks.report", "task-1")  # type: ignore[attr-defined]
    assert (outside.task_name, outside.task_id) == ("???", "???")  # type: ignore[attr-defined]
    assert get_task_logger("proj.tasks") is logger
    assert logger.filters.count(logger.filters[0]) == 1  # asked twice, filtered once


def test_get_task_logger_refuses_chards_own_logger_names() -> None:
    from chard.utils.log import get_task_logger

    with pytest.raises(ValueError, match=r"logger name 'celery\.task' is reserved"):
        get_task_logger("celery.task")


# -- chard.utils.nodenames ---------------------------------------------------------------------
def test_default_nodename_fills_in_the_name_and_host() -> None:
    from chard.utils.nodenames import default_nodename, nodename, nodesplit

    host = socket.gethostname()
    assert default_nodename(None) == f"chard@{host}"
    assert default_nodename("box") == "chard@box"
    assert default_nodename("w1@box") == "w1@box"
    assert nodesplit("w1@box") == ("w1", "box")
    assert nodename("w2", "box") == "w2@box"


# -- current_task and current_app --------------------------------------------------------------
def test_current_task_is_the_running_task_and_false_outside(app: Celery) -> None:
    from chard import current_task

    seen: dict[str, Any] = {}

    @app.task(name="proj.tasks.who")
    def who() -> None:
        seen["name"] = current_task.name
        seen["id"] = current_task.request.id

    who.apply(task_id="id-7")

    assert seen == {"name": "proj.tasks.who", "id": "id-7"}
    assert not current_task


def test_current_app_imported_before_any_app_resolves_to_it_later(
    no_current_app: contextvars.Context,
) -> None:
    def body() -> None:
        from chard import current_app  # as a Celery module does at import time

        app = Celery("later", broker="memory://")

        assert current_app.main == "later"
        assert isinstance(current_app, Celery)
        assert current_app == app

    no_current_app.run(body)


def test_an_unresolved_current_app_is_safe_to_inspect(no_current_app: contextvars.Context) -> None:
    # gevent's monkey-patching asks every object in the process for its class
    def body() -> None:
        from chard import current_app

        assert not isinstance(current_app, threading.Thread)
        assert repr(current_app) == "<Proxy of the current app: none yet>"
        assert not hasattr(current_app, "__wrapped__")  # inspect.unwrap, doctest, copy ask
        with pytest.raises(NoCurrentApp):
            _ = current_app.main

    no_current_app.run(body)


def test_current_app_imported_first_in_a_fresh_process() -> None:
    code = (
        "from chard import current_app\n"
        "from chard import Celery\n"
        "app = Celery('fresh', broker='memory://')\n"
        "print(current_app.main, current_app.conf.broker_url)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert done.stdout.split() == ["fresh", "memory://"]


# -- class-based tasks -------------------------------------------------------------------------
def test_chard_app_task_is_the_task_class_for_class_based_tasks(app: Celery) -> None:
    from chard.app.task import Task as CeleryPathTask

    class Multiply(CeleryPathTask[Any, Any]):
        name = "proj.tasks.multiply"

        def run(self, x: int, y: int) -> int:
            return x * y

    task = app.register_task(Multiply)

    assert CeleryPathTask is Task
    assert app.tasks["proj.tasks.multiply"] is task
    assert task.apply((6, 7)).get() == 42


def test_app_task_is_a_base_for_custom_task_classes(app: Celery) -> None:
    finished: list[Any] = []

    class Audited(app.Task):  # type: ignore[name-defined,misc]
        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            finished.append((self.name, retval))

    @app.task(base=Audited, name="proj.tasks.double")
    def double(x: int) -> int:
        return 2 * x

    double.apply((4,))

    assert isinstance(double, Audited)
    assert finished == [("proj.tasks.double", 8)]


class Tracked(Task[Any, Any]):
    """A task class named by task_cls."""

    tracked = True


@pytest.mark.parametrize("task_cls", [Tracked, "tests.unit.test_celery_imports:Tracked"])
def test_task_cls_sets_every_tasks_class(task_cls: Any) -> None:
    app = Celery("cls", broker="memory://", backend="memory://", task_cls=task_cls)

    @app.task
    def plain() -> str:
        return "ok"

    assert app.Task is Tracked
    assert isinstance(plain, Tracked)
    assert plain.apply().get() == "ok"


def test_shared_tasks_use_the_current_apps_task_class() -> None:
    Celery("cls", broker="memory://", backend="memory://", task_cls=Tracked)

    @chard.shared_task
    def shared() -> None:
        """Declared after the app, as in a Django app's tasks.py."""

    assert isinstance(shared, Tracked)


# -- chard.exceptions --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "Retry",
        "Reject",
        "Ignore",
        "MaxRetriesExceededError",
        "SoftTimeLimitExceeded",
        "TimeLimitExceeded",
        "WorkerLostError",
        "TaskRevokedError",
        "NotRegistered",
    ],
)
def test_the_exceptions_celery_code_catches_are_importable(name: str) -> None:
    from chard import exceptions

    exc_type = getattr(exceptions, name)

    assert issubclass(exc_type, exceptions.ChardError)
    assert name in exceptions.__all__


def test_reject_and_retry_take_celerys_arguments() -> None:
    from chard.exceptions import Reject, Retry

    reject = Reject("bad input", requeue=True)
    retry = Retry(exc=ValueError("x"), when=5)

    assert (reject.reason, reject.requeue) == ("bad input", True)
    assert "Retry in 5s" in str(retry)
