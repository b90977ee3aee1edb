"""Type checks for Celery's import paths (issue 14): what mypy sees through each of them.

mypy checks this module (``scripts/check``); nothing runs it.
"""

from __future__ import annotations

import logging
from typing import Any, assert_type

from chard import Celery, current_app, current_task
from chard.app.task import Task as CeleryPathTask
from chard.task import Task
from chard.utils.log import get_task_logger
from chard.utils.nodenames import default_nodename


def check_the_proxies_look_like_what_they_stand_for() -> None:
    assert_type(current_app, Celery)
    assert_type(current_task, Task[Any, Any])


def check_the_celery_paths_are_chards_classes() -> None:
    class Multiply(CeleryPathTask[[int, int], int]):
        def run(self, x: int, y: int) -> int:
            return x * y

    assert_type(Multiply().delay(2, 3).get(), int)
    assert_type(get_task_logger(__name__), logging.Logger)
    assert_type(default_nodename(None), str)
