"""Configuration becomes final on the first read of ``app.conf``, as in Celery (issue 13).

``on_after_configure`` handlers then have run for whoever reads a setting, so entries added
with ``add_periodic_task`` are in ``app.conf.beat_schedule`` before beat starts.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import pytest

from chard import Celery
from chard.config import Settings
from tests.helpers import wait_for
from tests.unit.conftest import WriteModules

pytestmark = pytest.mark.usefixtures("no_broker_env")


# -- Settings: the first-read hook ------------------------------------------------------------


def test_the_first_read_calls_the_hook_once_and_writes_do_not() -> None:
    conf = Settings()
    calls: list[str] = []
    conf.call_on_first_read(lambda: calls.append("configured"))

    # When settings are written, tested with `in`, peeked and given defaults
    conf.task_default_queue = "work"
    conf.update(result_expires=5)
    conf.setdefault("my_flag", 1)
    assert "task_default_queue" in conf
    assert conf.peek("task_default_queue") == "work"
    assert not conf.is_configured
    assert calls == []

    # Then the first read calls the hook, and later reads do not
    assert conf["task_default_queue"] == "work"
    assert conf.result_expires == 5
    assert conf.task_serializer == "json"
    assert calls == ["configured"]
    assert conf.is_configured
    assert conf.setdefault("my_flag", 2) == 1
    assert conf.setdefault("task_serializer", "msgpack") == "json"  # final: defaults count


def test_reads_inside_the_hook_see_the_settings_and_do_not_recurse() -> None:
    conf = Settings(task_default_queue="work")
    seen: list[Any] = []

    def hook() -> None:
        seen.append(conf.task_default_queue)  # a read while configuring
        conf.beat_schedule = {"a": {"task": "t", "schedule": 1.0}}

    conf.call_on_first_read(hook)

    assert conf.beat_schedule == {"a": {"task": "t", "schedule": 1.0}}
    assert seen == ["work"]


def test_a_read_from_another_thread_waits_for_the_hook() -> None:
    conf = Settings()
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(conf.task_default_queue))

    def in_configure() -> bool:  # the reader is inside configure(), waiting for the lock
        frame = sys._current_frames().get(reader.ident or -1)
        return frame is not None and frame.f_code.co_name == "configure"

    def hook() -> None:
        reader.start()  # reads while this hook runs
        wait_for(in_configure, timeout=10)
        conf.task_default_queue = "set-by-hook"

    conf.call_on_first_read(hook)
    assert conf.task_serializer == "json"
    reader.join(10)

    assert got == ["set-by-hook"]


# -- the app -------------------------------------------------------------------------------


def test_reading_beat_schedule_runs_on_after_configure_with_its_periodic_tasks() -> None:
    # Given Celery's documented layout: the handler is connected before the task it names
    app = Celery("cfg", broker="memory://", set_as_current=False)
    calls: list[Any] = []

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender: Celery, **kwargs: Any) -> None:
        calls.append(kwargs.get("source"))
        sender.add_periodic_task(10.0, ping.s("hi"), name="ping every 10s")

    @app.task(name="cfg.ping")  # decorating reads task_annotations, which must not configure
    def ping(word: str) -> str:
        return word

    assert calls == []

    # When the schedule is read (no beat, no worker, no finalize)
    schedule = app.conf.beat_schedule

    # Then the handler ran once and its entry is there
    assert schedule["ping every 10s"]["task"] == "cfg.ping"
    assert schedule["ping every 10s"]["args"] == ("hi",)
    assert calls == [app.conf]
    app.finalize()
    assert len(calls) == 1


def test_add_periodic_task_before_configuration_survives_a_later_assignment() -> None:
    # Given add_periodic_task at import time, then beat_schedule assigned (Celery keeps both)
    app = Celery("cfg", broker="memory://", set_as_current=False)
    app.add_periodic_task(5.0, "cfg.early", name="early")
    app.conf.beat_schedule = {"configured": {"task": "cfg.late", "schedule": 30.0}}

    # Then both are in the schedule once configuration is final
    assert set(app.conf.beat_schedule) == {"early", "configured"}


def test_configuration_imports_no_task_module_until_finalize(write_modules: WriteModules) -> None:
    write_modules({"cfg_tasks.py": "IMPORTED = True\n"})
    app = Celery("cfg", broker="memory://", include=["cfg_tasks"], set_as_current=False)

    assert app.conf.include == ["cfg_tasks"]
    assert "cfg_tasks" not in sys.modules

    app.finalize()
    assert "cfg_tasks" in sys.modules


def test_the_same_signature_without_a_name_replaces_the_entry_and_warns(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="t.report")
    def report(kind: str) -> str:
        return kind

    first = app.add_periodic_task(10.0, report.s("daily"))
    with caplog.at_level(logging.WARNING, logger="chard.app"):
        second = app.add_periodic_task(30.0, report.s("daily"))

    assert first == second == "t.report('daily')"
    assert app.conf.beat_schedule[first]["schedule"] == 30.0
    (record,) = [r for r in caplog.records if "add_periodic_task" in r.getMessage()]
    assert "30.0" in record.getMessage()
    assert "10.0" in record.getMessage()
    assert "name=" in record.getMessage()


def test_a_name_keeps_both_and_args_are_part_of_the_key(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    with caplog.at_level(logging.WARNING, logger="chard.app"):
        a = app.add_periodic_task(10.0, add.s(), args=(1, 2))
        b = app.add_periodic_task(10.0, add.s(), args=(3, 4))
        c = app.add_periodic_task(20.0, add.s(), args=(1, 2), name="named")

    assert (a, b) == ("t.add(1, 2)", "t.add(3, 4)")
    assert {a, b, c} <= set(app.conf.beat_schedule)
    assert app.conf.beat_schedule[a]["args"] == (1, 2)
    assert not [r for r in caplog.records if "add_periodic_task" in r.getMessage()]
