"""``Task.replace(sig)``: the signature that takes over a running task's place.

Celery's rule (``celery/app/task.py``, ``Task.replace``): the replacement inherits
everything that made the task part of a workflow, so whoever waits on the task, or
on the workflow around it, sees no difference:

* its **id**: the replacement's last task is frozen with the replaced task's id, so
  ``AsyncResult(id).get()`` returns the replacement's result;
* its **links** (``link``/``link_error``), moved onto the replacement;
* its **chord membership** (``chord``, ``group_id``, ``group_index``): the
  replacement reports to the chord in the task's place;
* the **rest of its chain**, appended after the replacement, each step keeping the
  id its result handle already points at.

A group cannot carry a link or an id of its own, so, as in Celery, it becomes a
chord whose body (``celery.accumulate``) returns the group's list of results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chard.canvas.primitives import chain, group
from chard.canvas.signature import Signature, maybe_signature
from chard.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.task import Context

#: The built-in body that turns a replacing group's results into one value.
ACCUMULATE = "celery.accumulate"


def replacement(app: Celery, request: Context, sig: Signature[Any]) -> Signature[Any]:
    """Return ``sig`` made to stand in for the task running ``request`` (see the module doc).

    Raises:
        ImproperlyConfigured: ``sig`` is already a chord member, or an empty chain.
    """
    sig = maybe_signature(sig, app)
    if "chord" in sig.options:
        raise ImproperlyConfigured(
            f"a signature replacing a task must not be part of a chord, got {sig!r}; "
            "replace with the chord itself, or with a plain signature"
        )
    if isinstance(sig, chain) and not sig.tasks:
        raise ImproperlyConfigured("cannot replace a task with an empty chain; give it a task")
    if isinstance(sig, group):
        sig = sig | app.tasks[ACCUMULATE].s(index=0)
    for callback in request.callbacks or ():
        sig.link(maybe_signature(callback, app))
    for errback in request.errbacks or ():
        sig.link_error(maybe_signature(errback, app))
    sig.freeze(request.id)
    membership: dict[str, Any] = {
        "chord": request.chord,
        "group_id": request.group,
        "group_index": request.group_index,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
    }
    sig.set(**{key: value for key, value in membership.items() if value is not None})
    for step in reversed(request.chain or ()):
        sig = sig | maybe_signature(step, app)
    return sig
