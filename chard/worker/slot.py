"""What a prefork child is doing, in memory its supervising parent can read at any time.

Each prefork child is a whole consumer (see :mod:`chard.worker.supervisor`): it leases
messages under its own broker consumer id, runs them, settles them. When it dies, or
must be killed (hard time limit, ``revoke(terminate=True)``), the parent needs the
facts that died with it, so the child keeps them here, in a :class:`Slot` of shared
memory made before the fork:

* the broker consumer id its leases are held under, to take them over at once;
* the task running now (id, name, whether its result is stored, and the message
  itself when it belongs to a workflow), to count a death against that one message
  only, or to settle it as timed out or terminated, and end its workflow;
* the running job's hard deadline, which the parent enforces by killing the child
  (``time.monotonic()`` is one clock for every process of the machine);
* the messages whose work it finished but has not acked yet (:meth:`Slot.finish`),
  with the results it holds for one backend round trip at the end of a batch
  (:meth:`Slot.hold`), so that the parent stores those results and acks those
  messages instead of running them again: only the task running when the child
  died runs again (:mod:`chard.worker.finished`).

Writes are a few stores into shared memory (no system call), cheap enough for every
task. A sequence number makes them a seqlock: odd while the child writes, so the
parent never acts on a half-written record.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any, Literal

_FORK = multiprocessing.get_context("fork")

#: Room for ``flag, task id, task name`` (joined by :data:`_SEP`); long names are cut.
_INFO_BYTES = 512
_CONSUMER_BYTES = 128
#: Room for the running message's body when it belongs to a workflow (see :meth:`Slot.begin`).
#: Shared memory is touched only as far as it is written, so the room costs nothing idle.
_BODY_BYTES = 256 * 1024
#: Joins the fields of the running record: a ``c_char`` array reads up to its first NUL.
_SEP = "\x1f"
#: Reads of a record being written before taking it as it is (its writer died mid-write).
_READ_TRIES = 10_000
#: Counters a child leaves behind when it stops: see :data:`chard.worker.consumer.ConsumerStats`.
STAT_FIELDS = ("received", "processed", "succeeded", "failed", "dead_lettered", "revoked")
#: Finished messages remembered (the newest): more than a child holds unacked at once
#: (its prefetch window, a batch, and the acks of one broker round trip).
DONE_SLOTS = 1024
#: Room for the results held during a batch (JSON metas) and for their messages: a batch
#: is at most 64 messages; a result that does not fit is stored at once instead.
HELD_BYTES = 64 * 1024
PENDING_SLOTS = 128
#: Why a child stops by itself to be replaced: it ran ``max_tasks_per_child`` tasks, or it
#: grew past ``max_memory_per_child`` (index 0 is "not retired").
RetireReason = Literal["max_tasks", "memory"]
RETIRE_REASONS: tuple[RetireReason | None, ...] = (None, "max_tasks", "memory")


def digest(body: bytes) -> int:
    """Return the identity of a message in a slot's record: the hash of its envelope.

    An envelope is unique per publish (kombu and chard give each a fresh
    ``delivery_tag``), the same bytes when redelivered or taken over. The parent and
    its forked children share the hash seed, so both compute the same value; a miss
    (a differing seed) only means a finished message runs again.
    """
    return hash(body)


@dataclass(frozen=True, slots=True)
class Finished:
    """What a dead child had finished but not acked, as its slot says (see :meth:`Slot.finish`)."""

    #: Digests of messages whose work is done and recorded (results stored or ignored).
    done: frozenset[int]
    #: Digests of messages that ran, whose results are among ``metas``, not yet stored.
    pending: frozenset[int]
    #: The held result metas (JSON), to store before those messages are acked.
    metas: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Running:
    """The task a child was running, as its slot last said."""

    task_id: str
    name: str
    #: Whether the task's state goes to the result backend (a backend is set and the
    #: message does not ignore results): where a death is recorded when no lease is left.
    stores_result: bool
    #: The message's :func:`digest`, which identifies it among the dead child's leases
    #: whatever its task id holds (an id can be longer than the record, or hold a NUL).
    key: int = 0


class Slot:
    """One prefork child's shared record; see the module docstring."""

    def __init__(self) -> None:
        self._seq: Any = _FORK.RawValue(ctypes.c_uint64, 0)
        self._deadline: Any = _FORK.RawValue(ctypes.c_double, 0.0)
        self._limit: Any = _FORK.RawValue(ctypes.c_double, 0.0)
        self._retired: Any = _FORK.RawValue(ctypes.c_int, 0)  # an index into RETIRE_REASONS
        self._info: Any = _FORK.RawArray(ctypes.c_char, _INFO_BYTES)
        self._consumer: Any = _FORK.RawArray(ctypes.c_char, _CONSUMER_BYTES)
        self._stats: Any = _FORK.RawArray(ctypes.c_int64, len(STAT_FIELDS))
        self._body: Any = _FORK.RawArray(ctypes.c_char, _BODY_BYTES)
        self._body_len: Any = _FORK.RawValue(ctypes.c_int64, 0)
        self._key: Any = _FORK.RawValue(ctypes.c_int64, 0)
        self._body_view = memoryview(self._body).cast("B")
        self._done: Any = _FORK.RawArray(ctypes.c_int64, DONE_SLOTS)  # a ring of digests
        self._done_count: Any = _FORK.RawValue(ctypes.c_uint64, 0)  # ever written
        self._pending: Any = _FORK.RawArray(ctypes.c_int64, PENDING_SLOTS)
        self._pending_count: Any = _FORK.RawValue(ctypes.c_uint64, 0)
        self._held: Any = _FORK.RawArray(ctypes.c_char, HELD_BYTES)
        self._held_len: Any = _FORK.RawValue(ctypes.c_uint64, 0)
        # Copied through a memoryview, never ctypes.memmove: a ctypes call releases the GIL,
        # and the child's fetcher and acker threads then take it for a switch interval.
        self._held_view = memoryview(self._held).cast("B")
        # The writer's own copies of the three counters above (only the child writes them,
        # every task: a Python int is read for a fraction of a shared value's cost).
        self._done_n = self._pending_n = self._held_n = 0

    # -- written by the child -------------------------------------------------------------
    def announce(self, consumer_id: str) -> None:
        """Record the broker consumer id the child leases under (before its first fetch)."""
        self._consumer.value = consumer_id.encode()[: _CONSUMER_BYTES - 1]

    def begin(
        self,
        task_id: str,
        name: str,
        stores_result: bool,
        body: bytes | None = None,
        key: int = 0,
    ) -> None:
        """Record that the child now runs ``task_id`` (called just before the task body).

        ``key`` is the message's :func:`digest`: how the supervisor finds the message
        among the dead child's leases.

        ``body`` is the message, kept for a task that belongs to a workflow: if the child
        dies and the message was acked on start, the parent still has the chain, chord
        and errbacks to end (a body over the room is not kept; the lease then is the
        only copy).
        """
        info = _SEP.join((str(int(stores_result)), task_id, name)).encode()[: _INFO_BYTES - 1]
        seq = self._seq
        seq.value += 1
        self._info.value = info
        self._key.value = key
        if body is not None and len(body) <= _BODY_BYTES:
            self._body_view[: len(body)] = body
            self._body_len.value = len(body)
        else:
            self._body_len.value = 0
        seq.value += 1

    def finish(self, done: int | None = None) -> None:
        """Record that the running task is over; ``done``: its message's :func:`digest`.

        Pass ``done`` when the message's work is complete (its results stored or not
        wanted, its follow-ups sent) and only its ack is left: should the child die
        before the ack, its supervisor acks it instead of running it again. Written
        after the running record is cleared, so a death between the two runs the task
        again uncounted, never counts a finished task as lost.
        """
        self._clear_running()
        if done is not None:
            self._add_done(done)

    def hold(self, metas: bytes, done: int | None = None) -> bool:
        """Like :meth:`finish`, for a task whose results are held for the batch's flush.

        ``metas`` are the JSON lines of the results it queued; should the child die
        before :meth:`release`, its supervisor stores them, then acks the message
        ``done`` names. Returns False, recording nothing, if they do not fit: the caller
        then stores what is held at once (and calls :meth:`release`, then :meth:`finish`).
        """
        used, count, size = self._held_n, self._pending_n, len(metas)
        if used + size > HELD_BYTES or count >= PENDING_SLOTS:
            return False
        if size:
            self._held_view[used : used + size] = metas
            self._held_n = self._held_len.value = used + size
        self._clear_running()
        if done is not None:
            self._pending[count] = done
            self._pending_n = self._pending_count.value = count + 1
        return True

    def release(self, stored: bool) -> None:
        """Forget the held results: ``stored`` (their messages are then done) or given up."""
        if stored:
            for index in range(self._pending_n):
                self._add_done(self._pending[index])
        if self._pending_n:
            self._pending_n = self._pending_count.value = 0
        if self._held_n:
            self._held_n = self._held_len.value = 0

    def _clear_running(self) -> None:
        seq = self._seq
        seq.value += 1
        self._info.value = b""
        seq.value += 1

    def _add_done(self, done: int) -> None:
        count = self._done_n
        self._done[count % DONE_SLOTS] = done
        self._done_n = self._done_count.value = count + 1

    def set_limit(self, seconds: float) -> None:
        """Record that the job starting now must be killed after ``seconds`` (hard limit)."""
        self._limit.value = seconds
        self._deadline.value = time.monotonic() + seconds

    def mark_retired(self, reason: RetireReason = "max_tasks") -> None:
        """Record that the child stops to be replaced, and why (see :data:`RETIRE_REASONS`)."""
        self._retired.value = RETIRE_REASONS.index(reason)

    def end(self) -> None:
        """Record that the child runs nothing (the job is over, its outcome in hand)."""
        self._deadline.value = 0.0
        self._clear_running()

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
    def retired(self) -> RetireReason | None:
        """Why the child stopped to be replaced (None: it did not retire itself)."""
        index = int(self._retired.value)
        return RETIRE_REASONS[index] if 0 < index < len(RETIRE_REASONS) else None

    def running(self) -> Running | None:
        """Return what the child runs now (or ran when it died), None if idle."""
        for _ in range(_READ_TRIES):  # a child that died mid-write leaves seq odd: stop trying
            before = self._seq.value
            info, key = bytes(self._info.value), int(self._key.value)
            if before % 2 == 0 and self._seq.value == before:
                break  # a consistent record; else the child is mid-write (a few stores)
        if not info:
            return None
        flag, task_id, name = [*info.decode(errors="replace").split(_SEP), "", ""][:3]
        return Running(task_id, name, flag == "1", key)

    def running_body(self) -> bytes | None:
        """Return the running message's body if :meth:`begin` kept it (read after a death)."""
        size = int(self._body_len.value)
        return bytes(self._body_view[:size]) if size > 0 else None

    def finished(self) -> Finished:
        """Return what the child had finished but not acked (read once it is dead)."""
        count = self._done_count.value
        done = frozenset(
            self._done[i % DONE_SLOTS] for i in range(max(0, count - DONE_SLOTS), count)
        )
        pending = frozenset(self._pending[: min(self._pending_count.value, PENDING_SLOTS)])
        held = bytes(self._held_view[: min(self._held_len.value, HELD_BYTES)])
        return Finished(done, pending, tuple(held.splitlines()))

    def stats(self) -> dict[str, int]:
        """The counters the child saved when it stopped (zeros if it died first)."""
        return {name: int(self._stats[i]) for i, name in enumerate(STAT_FIELDS)}

    def reset(self) -> None:
        """Clear everything, for a fresh child in this slot (parent, before the fork)."""
        self._seq.value = 0
        self._deadline.value = 0.0
        self._limit.value = 0.0
        self._retired.value = 0
        self._info.value = b""
        self._consumer.value = b""
        self._body_len.value = 0
        for index in range(len(STAT_FIELDS)):
            self._stats[index] = 0
        self._done_count.value = self._pending_count.value = self._held_len.value = 0
        self._done_n = self._pending_n = self._held_n = 0
