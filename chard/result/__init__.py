"""Results: ``AsyncResult`` for one task, ``ResultSet``/``GroupResult`` for many, eager ones.

* :mod:`.asyncresult`: one task's result, by id; its parent and children, and
  Celery's tuple form (``as_tuple``/:func:`result_from_tuple`).
* :mod:`.resultset`: :class:`ResultSet` (any results) and :class:`GroupResult` (a
  group's, with its id), in Celery's argument order.
* :mod:`.eager`: what ``apply()`` and ``task_always_eager`` return, ready at once.
"""

from __future__ import annotations

from chard.result.asyncresult import (
    AsyncResult,
    IncompleteStream,
    ResultsDisabled,
    result_from_tuple,
)
from chard.result.eager import EagerGroupResult, EagerResult
from chard.result.resultset import GroupResult, ResultSet

__all__ = [
    "AsyncResult",
    "EagerGroupResult",
    "EagerResult",
    "GroupResult",
    "IncompleteStream",
    "ResultSet",
    "ResultsDisabled",
    "result_from_tuple",
]
