"""The consume loop: lease messages, check them, hand them to the pool, settle them.

A consumer runs in each prefork child (see :mod:`chard.worker.supervisor`), or in the
worker's main process for the threads and solo pools. Three of its threads share one
lock, each waiting on a condition of its own, so that a change wakes only the thread it
concerns (each wake-up costs system calls and a GIL hand-over, several per message if
every change woke all three):

* the *dispatcher* (the caller of :meth:`Consumer.run`) submits leased messages to
  free pool slots and settles finished ones (requeue, dead-letter, or an ack to send).
  When it has nothing to do and the pool runs nothing, it blocks on the broker itself,
  so a message that comes to an idle worker runs in the thread that fetched it (a
  prefork child runs its tasks in this thread): no hand-over between threads, which on
  a quiet worker cost about as much as a broker round trip;
* the *fetcher* keeps up to ``prefetch`` messages leased while the pool has work:
  at once after a fetch that filled its window (more is likely waiting: the next batch
  is fetched while this one runs), or once the pool has been busy for
  :data:`PREFETCH_DELAY` (so that a quick task's dispatcher, not the fetcher, is the
  one blocked on the broker when the next message comes), or at once while pool slots
  are free;
* the *acker* sends those acks, all that piled up, in one broker call, so the
  dispatcher never waits on a broker round trip while pool slots sit idle; when a
  fetch is about to start, it carries them instead (one round trip for both on Redis).

A fourth, the *heartbeat*, extends this worker's leases so a slow task is never
handed to another worker, while a dead worker's leases lapse within
``lease_timeout`` seconds.

Each message is checked before it costs a pool slot (undecodable, revoked, unknown,
delivered too often, a future ETA, expired: see :mod:`chard.worker.gate`, which also
settles a finished run), and a rate-limited one may wait for its turn
(:class:`~chard.worker.ratelimit.Throttle`).

A lost broker connection (a Redis restart, a failover) never ends the worker: the
fetcher backs off and reconnects, and settling a finished message is retried until the
broker answers (or a cold stop), so finished work is acked rather than run again. Only
if the broker comes back after a lease lapsed is the message delivered again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from chard.brokers.base import Delivery
from chard.exceptions import BrokerConnectionError
from chard.worker.gate import Gate
from chard.worker.held import MAX_BATCH, Admitted, ConsumerStats, Inflight
from chard.worker.lost import reliably, settle_lost
from chard.worker.pools.base import Job, Outcome, Pool
from chard.worker.ratelimit import RateLimiter, Throttle
from chard.worker.revocations import Revocations

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger("chard.worker")

#: Longest wait (seconds) of the acker for a fetch that is to carry the acks.
ACK_WAIT = 0.05
#: How long (seconds) the pool must have been busy, after a fetch that left the queue
#: empty, before the fetcher blocks on the broker for more (see the module docstring).
PREFETCH_DELAY = 0.01
#: After how long (seconds) without work the fetcher stops looking every
#: :data:`PREFETCH_DELAY` whether the pool has been busy that long (the dispatcher then
#: wakes it when work starts).
QUIET = 1.0


class Consumer:
    """Moves messages from the broker through the pool; see the module docstring."""

    def __init__(
        self,
        app: Celery,
        pool: Pool,
        queues: Sequence[str],
        *,
        prefetch: int,
        burst: bool = False,
        hostname: str,
        revocations: Revocations | None = None,
        rate_share: float | Callable[[], float] = 1.0,
    ) -> None:
        self.app = app
        self.pool = pool
        #: The queues fetched from; remote control replaces the list (never edits it).
        self.queues = list(queues)
        self.prefetch = max(1, prefetch)
        self.burst = burst
        self.stats = ConsumerStats()
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # the dispatcher's: work to do
        self._room = threading.Condition(lock)  # the fetcher's: room in the prefetch window
        self._acks_waiting = threading.Condition(lock)  # the acker's: acks to send
        self._reserved: deque[Delivery] = deque()
        self._admitted: deque[Admitted] = deque()  # dispatcher thread only
        # Rate-limited messages waiting for their turn (changed by the dispatcher only).
        self._throttle = Throttle(RateLimiter(rate_share), lambda name: app.tasks[name].rate_limit)
        self._batches: dict[str, list[str]] = {}  # pool job id -> message ids
        self._done: deque[Outcome] = deque()
        self._acks: list[Delivery] = []  # settled, waiting for the acker
        self._inflight: dict[str, Inflight] = {}
        self._stopping = threading.Event()
        self._cold = False
        self._fetch_idle = False
        self._fetcher_waits = False  # the fetcher waits for room (``_cond`` held)
        self._fetching = False  # a thread is in a broker fetch (one at a time)
        self._last_full = False  # the latest fetch filled its window: more may be waiting
        self._granted = 0  # room the fetcher may fill while a batch runs (_grant_room)
        self._busy_since: float | None = None  # monotonic start of the dispatcher's work
        self._idle_since = 0.0  # monotonic end of the dispatcher's latest work
        self._fetcher_dozes = False  # the fetcher waits for up to QUIET (``_cond`` held)
        self._backoff = 1.0  # seconds before the next fetch, after a failed one
        self._lost_at: float | None = None  # when the broker connection was lost
        # A prefork child is given the record its parent follows (see Revocations).
        self._owns_revocations = revocations is None
        if revocations is None:  # (not `or`: an empty record is falsy)
            revocations = Revocations(app, self._terminate, self._stopping, hostname=hostname)
        self.revocations = revocations
        self.gate = Gate(app, revocations, self.stats, self._reliably)

    # -- lifecycle ------------------------------------------------------------
    def run(self) -> ConsumerStats:
        """Consume until :meth:`stop` (or, in burst mode, until the queues are drained)."""
        broker = self.app.broker
        fetcher = threading.Thread(target=self._fetch_loop, name="chard-fetcher", daemon=True)
        beat = threading.Thread(
            target=self._heartbeat_loop,
            args=(broker.lease_timeout / 4,),
            name="chard-heartbeat",
            daemon=True,
        )
        acker = threading.Thread(target=self._ack_loop, name="chard-acker", daemon=True)
        if self._owns_revocations:  # before the first fetch: no known revocation is missed
            self.revocations.start()
        fetcher.start()
        beat.start()
        acker.start()
        try:
            self._dispatch_loop()
        finally:
            self._stopping.set()
            self._wake_all()
            fetcher.join(timeout=5)
            acker.join()
            self._shutdown()
            if self._owns_revocations:
                self.revocations.join(timeout=5)  # it sees the stop within its read timeout
        return self.stats

    def active_count(self) -> int:
        """Return how many messages the pool runs now (for heartbeats; any thread)."""
        return min(len(self._inflight), self.pool.concurrency)

    def stop(self, cold: bool = False) -> None:
        """Ask the loop to end: warm (finish running tasks) or cold (abandon them)."""
        self._cold = self._cold or cold
        self._stopping.set()
        self._wake_all()

    def _wake_all(self) -> None:
        with self._cond:
            for condition in (self._cond, self._room, self._acks_waiting):
                condition.notify_all()

    def _shutdown(self) -> None:
        with self._cond:
            unstarted = [a.delivery for a in self._admitted] + list(self._reserved)
            unstarted += [item.delivery for item in self._throttle.take_all()]
            self._reserved.clear()
            self._admitted.clear()
        for delivery in unstarted:  # never started: back to the queue at once, uncounted
            self._reliably(delivery.reject, True)
        if unstarted:
            logger.info("Returned %d unstarted message(s) to the queue", len(unstarted))
        self.pool.stop(graceful=not self._cold)
        with self._cond:
            done = list(self._done)
            self._done.clear()
        for outcome in done:
            self._settle(outcome)
        self._flush_acks()

    # -- threads --------------------------------------------------------------
    def _fetch_loop(self) -> None:
        """The fetcher thread: keep the window leased while the pool has work."""
        while not self._stopping.is_set():
            with self._cond:
                self._fetcher_waits = True
                while not self._stopping.is_set():
                    wait = self._prefetch_wait()
                    if wait <= 0:
                        break
                    self._fetcher_dozes = wait >= QUIET
                    self._room.wait(wait)
                    self._fetcher_dozes = False
                self._fetcher_waits = False
                if self._stopping.is_set():
                    return
                timeout = 0.0 if self._last_full else 1.0  # a full window: take what is there
                room, acks = self._begin_fetch()
            self._fetch(acks, room, timeout)

    def _prefetch_wait(self) -> float:
        """Seconds the fetcher is to wait before it fetches; 0 to fetch now (``_cond`` held).

        It fetches only while the pool has work (an idle dispatcher fetches for itself),
        with room in the window; after a fetch that left the queue empty, and with no
        free pool slot, only once the dispatcher has been busy for :data:`PREFETCH_DELAY`.
        While work comes and goes it looks again every :data:`PREFETCH_DELAY` rather than
        be told of each task's start (a wake-up per message); after a :data:`QUIET`
        second, it dozes until the dispatcher wakes it (see :meth:`_dispatch_loop`).
        """
        now = time.monotonic()
        if self._busy_since is None and not (self._inflight or self._throttle):  # idle
            return PREFETCH_DELAY if now - self._idle_since < QUIET else QUIET
        if self._fetching or not self.queues:
            return PREFETCH_DELAY
        if self._granted:  # room granted as the dispatcher took a batch (_grant_room)
            return 0.0
        if not self._has_room():
            return PREFETCH_DELAY
        if self._last_full or self._slots_open():
            return 0.0
        since = self._busy_since if self._busy_since is not None else now
        return since + PREFETCH_DELAY - now

    def _slots_open(self) -> bool:
        """Whether the pool has a slot the dispatcher is not about to fill (``_cond`` held)."""
        return self._busy_since is None and self.pool.free_slots() > 0

    def _may_fetch_here(self) -> bool:
        """Whether the dispatcher is idle and is to fetch itself (``_cond`` held)."""
        idle = not (self._inflight or self._reserved or self._admitted or self._throttle)
        if not idle or self._fetching or not self.queues or self._stopping.is_set():
            return False  # (no queues: remote control cancelled them all; nothing to fetch)
        return self._has_room()

    def _begin_fetch(self) -> tuple[int, list[Delivery]]:
        """Claim the fetch (``_cond`` held): return the room to fill and the acks to carry."""
        self._fetching = True
        room = max(self.prefetch - self._held(), self._granted)
        self._granted = 0
        acks, self._acks = self._acks, []  # they ride along with the fetch
        return room, acks

    def _fetch(self, acks: list[Delivery], room: int, timeout: float) -> None:
        """Lease up to ``room`` messages into the reserved queue; back off if the broker fails.

        Run by one thread at a time (see :meth:`_begin_fetch`).
        """
        deliveries: list[Delivery] = []
        failed = True
        try:
            deliveries = self.app.broker.ack_and_fetch(acks, self.queues, room, timeout=timeout)
            failed = False
            self._backoff = 1.0
            if self._lost_at is not None:
                logger.warning(
                    "Broker connection restored after %.1fs", time.monotonic() - self._lost_at
                )
                self._lost_at = None
        except BrokerConnectionError as exc:
            self._lost_at = self._lost_at if self._lost_at is not None else time.monotonic()
            logger.warning("Broker connection lost: %s; retrying in %.0fs", exc, self._backoff)
        except Exception:
            logger.exception("Unexpected error while fetching; retrying in %.0fs", self._backoff)
        finally:
            with self._cond:
                self._fetching = False
                self._reserved.extend(deliveries)
                self._fetch_idle = not deliveries
                self._last_full = len(deliveries) >= room
                self._cond.notify()
        if failed:
            self._return_acks(acks)
            self._stopping.wait(self._backoff)
            self._backoff = min(self._backoff * 2, 30.0)

    def _return_acks(self, acks: list[Delivery]) -> None:
        """Hand acks the fetcher could not send (or may not have) back to the acker."""
        if acks:
            with self._cond:
                self._acks[:0] = acks
                self._acks_waiting.notify()

    def _has_room(self) -> bool:
        """Whether to fetch now (``_cond`` held): room for half the window, or an idle pool.

        Waiting for half the window while the pool has work makes fetches (and the batches
        they become) bigger: fewer broker round trips per task, at no cost to a pool that
        still has something to run.
        """
        room = self.prefetch - self._held()
        return room >= max(1, self.prefetch // 2) or (room > 0 and not self._inflight)

    def _held(self) -> int:
        """Count the leased messages that use up the prefetch window (``_cond`` held).

        Waiting ones (fetched, admitted, queued in the pool behind a running job) count;
        one running message per pool slot does not, as in Celery. So at most
        ``prefetch + concurrency`` messages are leased at once, batches or not: the bound
        on what a crash can make run twice.
        """
        running = min(len(self._inflight), self.pool.concurrency)
        waiting = len(self._reserved) + len(self._admitted) + len(self._throttle)
        return waiting + len(self._inflight) - running

    def _heartbeat_loop(self, interval: float) -> None:
        broker = self.app.broker
        failed = False
        while not self._stopping.wait(interval):
            try:
                broker.heartbeat()
            except Exception as exc:  # a missed beat is survivable; leases are generous
                logger.warning("Lease heartbeat failed: %s", exc)
                failed = True
                continue
            if failed:
                logger.warning("Broker connection restored: leases extended again")
                failed = False

    def _ack_loop(self) -> None:
        """Send pending acks until the consumer stops (the rest go out in :meth:`_shutdown`)."""
        while True:
            with self._cond:
                while not self._acks and not self._stopping.is_set():
                    self._acks_waiting.wait()
                give_up = time.monotonic() + ACK_WAIT  # then send them, fetch or not
                while self._acks and self._fetch_carries() and not self._stopping.is_set():
                    left = give_up - time.monotonic()
                    if left <= 0:
                        break
                    self._acks_waiting.wait(left)
                if not self._acks:
                    if self._stopping.is_set():
                        return
                    continue  # the fetcher took them
            self._flush_acks()

    def _fetch_carries(self) -> bool:
        """Whether a fetch is about to start, and so to carry the acks (``_cond`` held).

        The idle dispatcher fetches next; or the fetcher waits and may fetch now (it
        wakes with this same notification). Otherwise (a fetch is under way, or there is
        no room, or the fetcher waits for the pool to have been busy a while) the acker
        sends them itself.
        """
        if self._dispatcher_fetches_next():
            return True
        return self._fetcher_waits and self._prefetch_wait() <= 0

    def _dispatcher_fetches_next(self, idle_next: bool = False) -> bool:
        """Whether the dispatcher is idle (or, ``idle_next``, about to be) and fetches next."""
        return (idle_next or self._busy_since is None) and self._may_fetch_here()

    def _flush_acks(self) -> None:
        with self._cond:
            acks, self._acks = self._acks, []
        if acks:  # the children stored results and sent follow-ups before answering
            self._reliably(self.app.broker.ack_many, acks)

    def _dispatch_loop(self) -> None:
        while True:
            with self._cond:
                step = self._await_step()
                if step == "fetch":  # idle: fetch here, and run what comes in this thread
                    room, acks = self._begin_fetch()
                elif step == "work":
                    done, ready, slots = self._take_work()
            if step == "stop":
                return
            if step == "fetch":
                self._fetch(acks, room, 1.0)
                continue
            if done:  # first: an inline pool's next job may run long, and these are finished
                acks = []
                for outcome in done:
                    self._settle(outcome, acks)
                with self._cond:
                    self._acks.extend(acks)
                    self._wake_fetcher_or_acker(idle_next=not ready)
            for delivery in ready:
                self._admit_for_pool(delivery)
            if slots and self._admitted:  # even if a stop came meanwhile: they were received
                self._submit_pending(slots)

    def _await_step(self) -> str:
        """Wait for the dispatcher's next step (``_cond`` held): "work", "fetch" or "stop"."""
        while not self._has_work():
            if self._busy_since is not None:
                self._busy_since, self._idle_since = None, time.monotonic()
            if self._stopping.is_set() or self._drained():
                return "stop"
            if self._may_fetch_here():
                return "fetch"
            self._cond.wait(self._release_throttled() if self._throttle else 1.0)
        if self._busy_since is None:  # the fetcher's delay starts now
            self._busy_since = time.monotonic()
            if self._fetcher_dozes:
                self._room.notify()
        return "work"

    def _take_work(self) -> tuple[list[Outcome], list[Delivery], int]:
        """Take the finished jobs and the messages to admit now (``_cond`` held)."""
        done = list(self._done)
        self._done.clear()
        ready: list[Delivery] = []
        slots = self.pool.free_slots()
        if not self._stopping.is_set():
            # A pool that takes batches gets up to a prefetch window at once, split
            # over its free slots (see _submit_pending).
            limit = self.prefetch if self.pool.takes_batches else slots
            while self._reserved and len(ready) + len(self._admitted) < limit:
                ready.append(self._reserved.popleft())
        if ready and not done:  # (with finished jobs: once they are settled, see below)
            self._grant_room()
        return done, ready, slots

    def _grant_room(self) -> bool:
        """Let the fetcher fill the window's room while the batch just taken runs (``_cond`` held).

        Taken but not yet admitted, the batch counts in neither collection, so the room
        there is now is the window's, and the fetcher's next fetch overlaps the batch's
        run instead of waiting for it to be settled (up to twice the window is leased
        then). It is granted here, not looked at again when the fetcher gets to it: by
        then (it needs this lock, then the GIL, or is still on its way back from its
        last fetch) the batch is admitted and submitted, the window looks full, and the
        fetch would wait for the batch after all (it did: every fetch of a draining
        prefork child was its dispatcher's, which waited for each). Returns whether a
        fetch was granted (it carries the acks).
        """
        self._granted = 0  # (one not taken yet is worked out again)
        room = self.prefetch - self._held()
        if room <= 0 or self._prefetch_wait() > 0:
            return False
        self._granted = room
        self._room.notify()
        return True

    def _wake_fetcher_or_acker(self, idle_next: bool = False) -> None:
        """Wake the fetcher if it waits and now has room (it carries the acks); else the acker.

        (``_cond`` held.) Called once a batch of messages is settled; ``idle_next``: the
        dispatcher took nothing else to run, so if it is idle now, it fetches next and
        carries the acks itself. Acks go to the acker only when no fetch is about to
        carry them.
        """
        if self._dispatcher_fetches_next(idle_next):
            return  # carrying them
        if not idle_next and self._grant_room():  # a batch was taken: the fetch overlaps it
            return
        if self._fetch_carries():
            self._room.notify()
        elif self._acks:
            self._acks_waiting.notify()

    def _has_work(self) -> bool:
        if self._done:
            return True
        if self._throttle:
            self._release_throttled()
        waiting = self._reserved or self._admitted
        return bool(waiting) and self.pool.free_slots() > 0 and not self._stopping.is_set()

    def _drained(self) -> bool:
        idle = self._fetch_idle and not self._reserved and not self._throttle
        return self.burst and idle and not self._inflight

    def _release_throttled(self) -> float:
        """Admit the rate-limited messages whose turn came; return seconds to the next turn."""
        ready, wait = self._throttle.release(time.monotonic())
        self._admitted.extend(ready)
        return wait

    def limits_changed(self) -> None:
        """Say that a task's rate limit changed (from any thread): held messages are re-timed."""
        with self._cond:
            self._throttle.limits_changed()
            self._cond.notify_all()

    def holding(self) -> tuple[list[Inflight], list[Delivery]]:
        """Return copies of what this consumer holds: in the pool, and waiting (for inspect).

        Callable from any thread: each collection is copied in one step under the lock.
        """
        with self._cond:
            inflight = list(self._inflight.copy().values())
            admitted = [a.delivery for a in self._admitted.copy()]
            admitted += self._throttle.deliveries()
            return inflight, admitted + list(self._reserved.copy())

    def _on_done(self, outcome: Outcome) -> None:
        with self._cond:
            self._done.append(outcome)
            self._cond.notify()

    # -- per message ----------------------------------------------------------
    def _admit_for_pool(self, delivery: Delivery) -> None:
        """Check ``delivery`` (see :class:`Gate`); queue it for a pool slot if it is to run."""
        admitted = self.gate.admit(delivery)
        if admitted is None:
            return
        if admitted.rate_limit and not self._throttle.offer(admitted, time.monotonic()):
            return  # held for its turn
        self._admitted.append(admitted)

    def _submit_pending(self, slots: int) -> None:
        """Submit admitted messages as at most ``slots`` pool jobs.

        With a pool that takes batches (a prefork child's), runs of messages without time
        limits share a job, ``ceil(waiting / slots)`` at a time, so that quick tasks store
        their results in one backend round trip (see :meth:`Executor.run`). With little
        waiting, every job is still a single message.
        """
        while slots > 0 and self._admitted:
            head = self._admitted[0]
            size = 1
            if self.pool.takes_batches and head.batchable:
                run = 0
                for item in self._admitted:
                    if not item.batchable:
                        break
                    run += 1
                size = min(MAX_BATCH, -(-run // slots))
            items = [self._admitted.popleft() for _ in range(size)]
            for item in items:
                if not item.acks_late:
                    self._reliably(item.delivery.ack)  # Celery's ack-on-start, when asked for
                self._inflight[item.message.id] = Inflight(
                    item.delivery, item.message, acked_early=not item.acks_late
                )
            if size == 1:
                job = head.job()
            else:
                job = Job(id=f"batch:{head.message.id}", payload=[i.payload for i in items])
                self._batches[job.id] = [i.message.id for i in items]
            self.pool.submit(job, self._on_done)
            slots -= 1

    def _settle(self, outcome: Outcome, acks: list[Delivery] | None = None) -> None:
        """Settle one finished job; plain acks go to ``acks`` (one round-trip) when given."""
        ids = self._batches.pop(outcome.job.id, None)
        if ids is not None:
            self._settle_batch(outcome, ids, acks)
            return
        self._settle_one(outcome.job.id, outcome, outcome.value, acks)

    def _settle_batch(self, outcome: Outcome, ids: list[str], acks: list[Delivery] | None) -> None:
        """Settle each message of a finished batch job as if it had been a job of its own."""
        values = outcome.value if outcome.kind == "done" else None
        for index, task_id in enumerate(ids):
            # values is None if the target raised (a bug, logged by the pool)
            value = values[index] if isinstance(values, list) else None
            self._settle_one(task_id, outcome, value, acks)

    def _settle_one(
        self, task_id: str, outcome: Outcome, value: Any, acks: list[Delivery] | None = None
    ) -> None:
        """Settle message ``task_id`` of the job ``outcome`` tells of (``value``: its own)."""
        inflight = self._inflight.pop(task_id, None)
        if inflight is None:
            return
        delivery, message = inflight.delivery, inflight.message
        self.stats.processed += 1
        self.stats.by_task[message.task] = self.stats.by_task.get(message.task, 0) + 1
        held = None if inflight.acked_early else delivery
        if outcome.kind == "done":
            self.gate.settle_done(delivery, message, value, inflight.acked_early, acks)
        elif self._cold:  # we abandoned it ourselves: return it, uncounted
            if held is not None:
                self._reliably(held.reject, True)
        else:
            settle_lost(
                self.app,
                held,
                message,
                exitcode=outcome.exitcode,
                pid=outcome.pid,
                give_up=self._is_cold,
            )

    def _reliably(self, operation: Callable[..., None], *args: Any) -> None:
        """Run a settling broker call until it succeeds; see :func:`~chard.worker.lost.reliably`."""
        reliably(operation, *args, give_up=self._is_cold)

    def _is_cold(self) -> bool:
        return self._cold

    def _terminate(self, task_id: str, signum: int) -> bool:
        """Ask the pool to end the running task ``task_id`` (see :class:`Revocations`)."""
        if task_id not in self._inflight:
            return False  # not here, or not handed to the pool: discarded before it runs
        return self.pool.terminate(task_id, signum)
