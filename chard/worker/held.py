"""What a consumer holds: its counters, and the records of the messages it leased.

Plain records shared by :mod:`chard.worker.consumer` and the remote control that
reports on them (``inspect active``/``reserved``/``stats``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chard.brokers.base import Delivery
from chard.protocol.message import TaskMessage
from chard.worker.pools.base import Job


@dataclass
class ConsumerStats:
    """Counters for ``inspect stats``, the banner and burst mode."""

    received: int = 0
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    dead_lettered: int = 0
    #: Revoked, expired or terminated on request: REVOKED, never run (or run no further).
    revoked: int = 0
    by_task: dict[str, int] = field(default_factory=dict)


#: Most messages one pool job carries (see :meth:`Consumer._submit_pending`).
MAX_BATCH = 64


@dataclass
class Inflight:
    """A message handed to the pool, until its job is settled."""

    delivery: Delivery
    message: TaskMessage
    acked_early: bool


@dataclass(frozen=True, slots=True)
class Admitted:
    """A message that passed :meth:`Gate.admit <chard.worker.gate.Gate.admit>` and waits
    for a pool slot."""

    delivery: Delivery
    message: TaskMessage
    acks_late: bool
    #: What the pool's target runs for it (a :class:`~chard.worker.execute.JobPayload`).
    payload: Any
    soft_time_limit: float | None = None
    time_limit: float | None = None
    #: Its task's rate limit when it was admitted (a :class:`~chard.worker.ratelimit.Throttle`
    #: reads the task's again for each turn).
    rate_limit: str | float | None = None

    @property
    def batchable(self) -> bool:
        """Whether it may share a pool job: only without time limits, which are per job.

        Nor when it is acked on start (``acks_late=False``): it is acked as its job is
        submitted, so in a batch it would be acked before the tasks ahead of it ran,
        and lost if one of them killed the process.
        """
        if not self.acks_late:
            return False
        return self.time_limit is None and self.soft_time_limit is None

    def job(self) -> Job:
        """Return the pool job that runs it alone (a batch makes one job of several)."""
        return Job(self.message.id, self.payload, self.soft_time_limit, self.time_limit)
