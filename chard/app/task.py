"""Celery's ``celery.app.task`` path: ``from chard.app.task import Task`` for class-based tasks.

The class lives in :mod:`chard.task`; this module only gives it the import path Celery code
uses (``class MyTask(celery.app.task.Task)``).
"""

from __future__ import annotations

from chard.task import Context, Task

__all__ = ["Context", "Task"]
