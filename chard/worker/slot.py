"""What a prefork child is doing, in memory its supervising parent can read at any time.

Each prefork child is a whole consumer (see :mod:`chard.worker.supervisor`): it leases
messages under its own broker consumer id, runs them, settles them. When it dies, or
must be killed (hard time limit, ``revoke(terminate=True)``), the parent needs three
facts that died with it, so the child keeps them here, in a :class:`Slot` of shared
memory made before the fork:

* the broker consumer id its leases are held under, to take them over at once;
* the task running now (id, name, whether its result is stored), to count a death
  against that one message only, or to settle it as timed out or terminated;
* the running job's hard deadline, which the parent enforces by killing the child
  (``time.monotonic()`` is one clock for every process of the machine).

Writes are a few stores into shared memory (no system call), cheap enough for every
task. A sequence number makes them a seqlock: odd while the child writes, so the
parent never acts on a half-written record.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

_FORK = multiprocessing.get_context("fork")

#: Room for ``flag, task id, task name`` (joined by :data:`_SEP`); long names are cut.
_INFO_BYTES = 512
_CONSUMER_BYTES = 128
#: Joins the fields of the running record: a ``c_char`` array reads up to its first NUL.
_SEP = "\x1f"
#: Reads of a record being written before taking it as it is (its writer died mid-write).
_READ_TRIES = 10_000
#: Counters a child leaves behind when it stops: see :data:`chard.worker.consumer.ConsumerStats`.
STAT_FIELDS = ("received", "processed", "succeeded", "failed", "dead_lettered", "revoked")


@dataclass(frozen=True, slots=True)
class Running:
    """The task a child was running, as its slot last said."""

    task_id: str
    name: str
    #: Whether the task's state goes to the result backend (a backend is set and the
    #: message does not ignore results): where a death is recorded when no lease is left.
    stores_result: bool


class Slot:
    """One prefork child's shared record; see the module docstring."""

    def __init__(self) -> None:
        self._seq: Any = _FORK.RawValue(ctypes.c_uint64, 0)
        self._deadline: Any = _FORK.RawValue(ctypes.c_double, 0.0)
        self._limit: Any = _FORK.RawValue(ctypes.c_double, 0.0)
        self._retired: Any = _FORK.RawValue(ctypes.c_bool, False)
        self._info: Any = _FORK.RawArray(ctypes.c_char, _INFO_BYTES)
        self._consumer: Any = _FORK.RawArray(ctypes.c_char, _CONSUMER_BYTES)
        self._stats: Any = _FORK.RawArray(ctypes.c_int64, len(STAT_FIELDS))

    # -- written by the child -------------------------------------------------------------
    def announce(self, consumer_id: str) -> None:
        """Record the broker consumer id the child leases under (before its first fetch)."""
        self._consumer.value = consumer_id.encode()[: _CONSUMER_BYTES - 1]

    def begin(self, task_id: str, name: str, stores_result: bool) -> None:
        """Record that the child now runs ``task_id`` (called just before the task body)."""
        info = _SEP.join((str(int(stores_result)), task_id, name)).encode()[: _INFO_BYTES - 1]
        seq = self._seq
        seq.value += 1
        self._info.value = info
        seq.value += 1

    def set_limit(self, seconds: float) -> None:
        """Record that the job starting now must be killed after ``seconds`` (hard limit)."""
        self._limit.value = seconds
        self._deadline.value = time.monotonic() + seconds

    def mark_retired(self) -> None:
        """Record that the child stops because it ran ``max_tasks_per_child`` tasks."""
        self._retired.value = True

    def end(self) -> None:
        """Record that the child runs nothing (the job is over, its outcome in hand)."""
        seq = self._seq
        seq.value += 1
        self._deadline.value = 0.0
        self._info.value = b""
        seq.value += 1

    def save_stats(self, values: dict[str, int]) -> None:
        """Leave the child's counters for the parent's summary (when the child stops)."""
        for index, name in enumerate(STAT_FIELDS):
            self._stats[index] = int(values.get(name, 0))

    # -- read by the parent ---------------------------------------------------------------
    @property
    def consumer_id(self) -> str:
        """The broker consumer id the child announced ('' before its first fetch)."""
        return bytes(self._consumer.value).decode()

    @property
    def deadline(self) -> float | None:
        """The running job's hard deadline (``time.monotonic()``), if it has one."""
        value = float(self._deadline.value)
        return value or None

    @property
    def limit(self) -> float:
        """The hard time limit (seconds) behind the latest deadline."""
        return float(self._limit.value)

    @property
    def retired(self) -> bool:
        """Whether the child stopped for ``max_tasks_per_child`` (to be replaced)."""
        return bool(self._retired.value)

    def running(self) -> Running | None:
        """Return what the child runs now (or ran when it died), None if idle."""
        for _ in range(_READ_TRIES):  # a child that died mid-write leaves seq odd: stop trying
            before = self._seq.value
            info = bytes(self._info.value)
            if before % 2 == 0 and self._seq.value == before:
                break  # a consistent record; else the child is mid-write (a few stores)
        if not info:
            return None
        flag, task_id, name = [*info.decode(errors="replace").split(_SEP), "", ""][:3]
        return Running(task_id, name, flag == "1")

    def stats(self) -> dict[str, int]:
        """The counters the child saved when it stopped (zeros if it died first)."""
        return {name: int(self._stats[i]) for i, name in enumerate(STAT_FIELDS)}

    def reset(self) -> None:
        """Clear everything, for a fresh child in this slot (parent, before the fork)."""
        self._seq.value = 0
        self._deadline.value = 0.0
        self._limit.value = 0.0
        self._retired.value = False
        self._info.value = b""
        self._consumer.value = b""
        for index in range(len(STAT_FIELDS)):
            self._stats[index] = 0
