"""Calling an errback as Celery does: by the parameters of its task's function.

Celery (``backends/base.py``, ``_call_task_errbacks``) calls an errback whose function
takes more than one positional parameter, or ``*args``, inline, in the process that
recorded the failure, as ``errback(request, exc, traceback)`` (the signature's own
arguments after those). Any other errback (one parameter, a bound task, a task class,
a task not registered in this process) is sent as a task with the failed task's id,
the older form.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

from chard.canvas.signature import Signature, maybe_signature

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.request import Context

logger = logging.getLogger("chard.task")


def takes_request(app: Celery, sig: Signature[Any]) -> bool:
    """Return whether ``sig``'s task is called as ``errback(request, exc, traceback)``."""
    task = app.tasks.get(sig.task)
    fn = getattr(task, "_fn", None)
    if task is None or fn is None or task.bind:
        return False
    try:
        spec = inspect.getfullargspec(fn)
    except TypeError:
        return False
    return spec.varargs is not None or len(spec.args) > 1


def run_errback(
    app: Celery, errback: Any, request: Context, exc: BaseException, traceback: str | None
) -> None:
    """Call or send one errback for the failure of ``request`` (see the module doc).

    An errback called inline that raises is logged, as in Celery; one sent as a task
    is sent as a child of the failed task (``apply()`` when the failure was eager).
    """
    sig = maybe_signature(errback, app)
    if takes_request(app, sig):
        try:
            sig(request, exc, traceback)
        except Exception:
            logger.exception("Errback %r of task %s raised an exception", sig.task, request.id)
        return
    lineage = {"parent_id": request.id, "root_id": request.root_id or request.id}
    if request.is_eager:
        sig.apply((request.id,), **lineage)
    else:
        sig.apply_async((request.id,), **lineage)
