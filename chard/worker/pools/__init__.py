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
from chard.worker.pools.solo import SoloPool
from chard.worker.pools.threads import ThreadPool

#: The pools that run inside one consumer process, by the name ``--pool`` accepts.
POOLS: dict[str, type[Pool]] = {
    ThreadPool.kind: ThreadPool,
    SoloPool.kind: SoloPool,
}
#: ``--pool prefork`` (the default) is not a pool of this process but a node of consumer
#: processes (:mod:`chard.worker.supervisor`), each running its jobs inline.
PREFORK = "prefork"
#: ``--pool gevent``: greenlets in one process; imported only when asked for (an extra).
GEVENT = "gevent"
#: Every name ``--pool`` accepts.
KINDS = (PREFORK, *sorted([*POOLS, GEVENT]))
#: Other names for a pool, as Celery accepts them.
ALIASES = {"processes": PREFORK}


def pool_kind(name: str) -> str:
    """Return the pool ``name`` stands for (an alias resolved).

    Raises:
        ImproperlyConfigured: no such pool (or eventlet, which chard does not support).
    """
    kind = ALIASES.get(name, name)
    if kind == "eventlet":
        from chard.worker.pools.green import EVENTLET_UNSUPPORTED

        raise ImproperlyConfigured(EVENTLET_UNSUPPORTED)
    if kind not in KINDS:
        raise ImproperlyConfigured(f"unknown pool {name!r}; choose one of: {', '.join(KINDS)}")
    return kind


def create_pool(
    kind: str,
    target: Callable[[Any], Any],
    concurrency: int,
    *,
    max_tasks_per_child: int | None = None,
    initializer: Callable[[], None] | None = None,
) -> Pool:
    """Create a pool (not yet started) by name.

    Args:
        kind: ``"threads"``, ``"solo"`` or ``"gevent"``.
        target: Called with each job's payload; see :class:`Pool`.
        concurrency: How many jobs may run at once (must be 1 for ``"solo"``).
        max_tasks_per_child: See :class:`Pool`.
        initializer: Run once per thread (solo: in ``start``) before its first job.

    Raises:
        ImproperlyConfigured: ``kind`` names no pool of this process.
        ValueError: ``concurrency`` does not suit the pool.
    """
    pool_class: type[Pool]
    if pool_kind(kind) == GEVENT:
        from chard.worker.pools.green import GeventPool

        pool_class = GeventPool
    else:
        try:
            pool_class = POOLS[kind]
        except KeyError:  # prefork is a node of processes, not a pool of this process
            choices = ", ".join(POOLS)
            raise ImproperlyConfigured(
                f"pool {kind!r} is not an in-process pool; use {choices}"
            ) from None
    return pool_class(
        target, concurrency, max_tasks_per_child=max_tasks_per_child, initializer=initializer
    )


__all__ = [
    "ALIASES",
    "GEVENT",
    "KINDS",
    "POOLS",
    "PREFORK",
    "Job",
    "OnDone",
    "Outcome",
    "OutcomeKind",
    "Pool",
    "PoolStats",
    "SoloPool",
    "ThreadPool",
    "create_pool",
    "pool_kind",
]
