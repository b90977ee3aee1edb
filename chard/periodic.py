"""``add_periodic_task``'s entries: how one is built, keyed and added to ``beat_schedule``.

Apart from the app so that Celery's rules (the key is the signature's repr; the same
signature added again without ``name=`` replaces the earlier entry, with a warning as
Celery 5.3+) live in one place that beat's tests and the app share.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from chard.canvas import Signature, signature
from chard.config import Settings

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger(__name__)


def entry(
    app: Celery,
    schedule: Any,
    sig: Any,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    name: str | None,
    options: Mapping[str, Any],
) -> tuple[str, dict[str, Any]]:
    """Return the key and the ``beat_schedule`` entry for one ``add_periodic_task`` call.

    ``sig`` is a signature, a task or a task name; ``args`` are prepended to its own and
    ``kwargs`` merged, as Celery's ``sig.clone(args, kwargs)``. Without ``name`` the key
    is the signature's repr.
    """
    if isinstance(sig, Signature):
        call = sig.clone(args, kwargs)
    else:
        call = signature(getattr(sig, "name", sig), args, kwargs, app=app)
    return name or repr(call), {
        "task": call.task,
        "schedule": schedule,
        "args": tuple(call.args),
        "kwargs": dict(call.kwargs),
        "options": {**dict(call.options), **options},
    }


def add(conf: Settings, key: str, new: dict[str, Any], is_named: bool) -> None:
    """Put ``new`` in ``conf.beat_schedule`` under ``key``, warning when it replaces one."""
    schedule_map = dict(conf.beat_schedule or {})
    earlier = schedule_map.get(key)
    if earlier is not None and not is_named:
        logger.warning(
            "add_periodic_task: %r on schedule %r replaces the entry of the same "
            "signature on schedule %r; pass name= to add_periodic_task to keep both",
            key,
            new["schedule"],
            earlier.get("schedule") if isinstance(earlier, Mapping) else earlier,
        )
    schedule_map[key] = new
    conf.beat_schedule = schedule_map
