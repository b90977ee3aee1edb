"""Celery's ``celery.utils.log``: ``get_task_logger`` for loggers that know their task.

``logger = get_task_logger(__name__)`` at the top of a tasks module gives a plain
:class:`logging.Logger` whose records carry ``task_name`` and ``task_id`` (``"???"``
outside a task, as in Celery), so a format such as ``"%(task_name)s[%(task_id)s]:
%(message)s"`` works and the worker's log lines name the task.
"""

from __future__ import annotations

import logging

from chard import _context

__all__ = ["TaskContextFilter", "get_logger", "get_task_logger"]

#: What a record outside any task carries in ``task_name`` and ``task_id`` (Celery's).
UNKNOWN = "???"


class TaskContextFilter(logging.Filter):
    """Stamp each record with the running task's name and id (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = _context.get_current_task()
        request = _context.get_current_request()
        record.task_name = getattr(task, "name", None) or UNKNOWN
        record.task_id = getattr(request, "id", None) or UNKNOWN
        return True


_FILTER = TaskContextFilter()


def get_task_logger(name: str) -> logging.Logger:
    """Return logger ``name`` with records that carry the running task's name and id.

    Raises:
        ValueError: ``name`` is one of chard's own loggers (Celery refuses its own too).
    """
    if name in ("chard", "chard.task", "celery", "celery.task"):
        raise ValueError(f"logger name {name!r} is reserved; use get_task_logger(__name__)")
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def get_logger(name: str) -> logging.Logger:
    """Return logger ``name`` (Celery's ``get_logger``; a plain ``logging.getLogger``)."""
    return logging.getLogger(name)
