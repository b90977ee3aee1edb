"""Settling what a dead prefork child had finished but not yet acked.

A child runs a batch of messages and acks them after it (one broker round trip for
the batch, sent by its acker thread), and it stores the results of quick plain tasks
together at the end of the batch (one backend round trip). Both are what makes a
drain of short tasks fast; both also mean that, when the child is killed, messages
whose work is done are still leased to it. Returned to the queue, they would all run
again: 2 to 5 re-runs per SIGKILL were measured on a drain of short tasks.

So the child writes each message's end into its :class:`~chard.worker.slot.Slot`
before the next one starts (shared memory, no system call), with the results it
holds; its supervisor, taking over the dead child's leases, stores those results
and acks those messages here, and only the rest go on to be settled as before (the
one that was running counted as a death, the unstarted ones returned uncounted).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from chard.brokers.base import Delivery
from chard.exceptions import ChardError
from chard.worker.lost import reliably
from chard.worker.slot import Finished, digest

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger("chard.worker")


def settle_finished(
    app: Celery,
    finished: Finished,
    deliveries: Sequence[Delivery],
    *,
    give_up: Callable[[], bool],
) -> list[Delivery]:
    """Ack the ``deliveries`` whose work the dead child finished; return the others.

    Results it held are stored first; if they cannot be (no backend reachable, or a
    cold stop, which must not wait on one), their messages are returned with the others
    and run again, as they would have before.
    """
    if not finished.done and not finished.pending:
        return list(deliveries)
    digests = [digest(d.body) for d in deliveries]
    held = [i for i, key in enumerate(digests) if key in finished.pending]
    if held and not _store_held(app, finished.metas, give_up):
        held = []
    acked = set(held) | {i for i, key in enumerate(digests) if key in finished.done}
    if acked:
        reliably(app.broker.ack_many, [deliveries[i] for i in sorted(acked)], give_up=give_up)
        logger.info(
            "Acked %d message(s) a dead worker process had finished (%d of them with the "
            "results it held, stored for it)",
            len(acked),
            len(held),
        )
    return [d for i, d in enumerate(deliveries) if i not in acked]


def _store_held(app: Celery, metas: Sequence[bytes], give_up: Callable[[], bool]) -> bool:
    """Store the result metas a dead child held; return whether they are stored."""
    if not metas:  # (ignore_result tasks: nothing to store)
        return True
    if app.backend is None or give_up():
        return False
    try:
        app.backend.store_metas(metas)
    except (ChardError, ValueError) as exc:
        logger.warning(
            "Could not store %d result(s) a dead worker process held; its messages run again: %s",
            len(metas),
            exc,
        )
        return False
    return True
