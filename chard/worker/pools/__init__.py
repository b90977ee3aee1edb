"""Execution pools: run a target on job payloads, with bounded concurrency.

Pools know nothing about tasks or brokers. The consumer wraps each message in a :class:`Job`,
submits it when :meth:`Pool.free_slots` allows, and gets an :class:`Outcome` back through a
callback. Pick one with :func:`create_pool`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chard.exceptions import ImproperlyConfigured
from chard.worker.pools.base import Job, OnDone, Outcome, OutcomeKind, Pool, PoolStats
from chard.worker.pools.prefork import PreforkPool
from chard.worker.pools.solo import SoloPool
from chard.worker.pools.threads import ThreadPool

#: Every pool, by the name ``--pool`` accepts.
POOLS: dict[str, type[Pool]] = {
    PreforkPool.kind: PreforkPool,
    ThreadPool.kind: ThreadPool,
    SoloPool.kind: SoloPool,
}


def create_pool(
    kind: str,
    target: Callable[[Any], Any],
    concurrency: int,
    *,
    max_tasks_per_child: int | None = None,
    initializer: Callable[[], None] | None = None,
    queue_ahead: int = 0,
) -> Pool:
    """Create a pool (not yet started) by name.

    Args:
        kind: ``"prefork"``, ``"threads"`` or ``"solo"``.
        target: Called with each job's payload; see :class:`Pool`.
        concurrency: How many jobs may run at once (must be 1 for ``"solo"``).
        max_tasks_per_child: Replace a prefork child after this many jobs.
        initializer: Run once per child process or thread before its first job.
        queue_ahead: Jobs a busy prefork child may hold behind its current one (see
            :mod:`chard.worker.pools.prefork`); other pools ignore it.

    Raises:
        ImproperlyConfigured: ``kind`` names no pool.
        ValueError: ``concurrency`` does not suit the pool.
    """
    try:
        pool_class = POOLS[kind]
    except KeyError:
        choices = ", ".join(sorted(POOLS))
        raise ImproperlyConfigured(f"unknown pool {kind!r}; choose one of: {choices}") from None
    if pool_class is PreforkPool:
        return PreforkPool(
            target,
            concurrency,
            max_tasks_per_child=max_tasks_per_child,
            initializer=initializer,
            queue_ahead=queue_ahead,
        )
    return pool_class(
        target, concurrency, max_tasks_per_child=max_tasks_per_child, initializer=initializer
    )


__all__ = [
    "POOLS",
    "Job",
    "OnDone",
    "Outcome",
    "OutcomeKind",
    "Pool",
    "PoolStats",
    "PreforkPool",
    "SoloPool",
    "ThreadPool",
    "create_pool",
]
