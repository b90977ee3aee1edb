"""The beat service: the loop that leads, reloads the store, ticks and sends.

One loop iteration (:meth:`Beat.run_once`) is:

1. **Lead.** Take or renew the leader lease in the schedule store, which is always the broker's
   (whatever ``-s`` says): beats on any host contend for one lease. A standby beat does nothing
   else; it takes over within ``lease_timeout`` (plus one loop) of the leader dying, and at once
   when the leader stops cleanly and releases the lease. A leader whose lease may have run out
   (counted from before its last renewal) renews it before it sends anything.
2. **Reload** every ``reload_interval`` (and on becoming leader): definitions edited with
   ``chard beat schedule ...`` take effect without a restart, and the run state written by the
   previous leader is where the new one continues.
3. **Tick** the pure :class:`~chard.beat.scheduler.Scheduler`. For each due entry, claim the
   firing ``<name>:<scheduled time>`` in the store *before* sending. The scheduled time is the
   schedule's next time after the stored last run, so every beat computes the same key for the
   same slot: if two beats overlap (a paused leader whose lease lapsed), only one claim wins.
   Then send with ``app.send_task`` (the entry's options, plus a ``chard_beat_slot`` header
   naming the slot) and raise the stored run state.

Delivery is at most once per slot: a beat killed between the claim and the send loses that one
run, which is the price of never sending twice. A run missed while no beat was up is sent once
when beat comes back, then the schedule resumes (Celery's behaviour).

At start-up a broker that cannot be reached is retried with back-off
(``broker_connection_retry_on_startup``, ``broker_connection_max_retries``), logged with the
URL's password hidden; beat sends nothing until it holds the lease.

Entries naming a task this process has not registered are sent by name, as Celery does (a task
may be imported only by workers), with a warning naming the entry.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from chard._utils.clock import Clock, SystemClock
from chard.beat.compat import check_scheduler, check_state_file
from chard.beat.scheduler import DEFAULT_MAX_INTERVAL, ScheduleEntry, Scheduler, entries_from_config
from chard.beat.store import LeaseHolder, ScheduleStore, slot_key
from chard.beat.stores import open_schedule_store
from chard.exceptions import ChardError
from chard.startup import retry_until_reachable

if TYPE_CHECKING:
    from chard.app import Celery

__all__ = ["SLOT_HEADER", "Beat", "PlannedRun"]

logger = logging.getLogger(__name__)

#: Message header carrying the slot key of a beat-sent run (``<name>:<scheduled ISO time>``).
SLOT_HEADER = "chard_beat_slot"
#: Seconds between store reloads: how soon edits made while beat runs take effect.
DEFAULT_RELOAD_INTERVAL = 1.0
#: Seconds a leader's lease lasts unless renewed; a standby takes over this long after a crash.
DEFAULT_LEASE_TIMEOUT = 5.0


@dataclass(frozen=True)
class PlannedRun:
    """One line of the start-up summary: an entry and when it next runs."""

    name: str
    task: str
    schedule: str
    next_run: datetime | None  # None: disabled
    is_task_known: bool


class Beat:
    """Send periodic tasks from the schedule store; safe to run several for failover.

    Args:
        app: The app whose ``beat_schedule`` is synced and whose broker receives the runs.
        store: The schedule store (default: :func:`open_schedule_store` for ``app``).
        clock: Time source; tests pass a ``FakeClock`` and call :meth:`run_once`.
        max_interval: Longest sleep between ticks (default ``beat_max_loop_interval``).
        reload_interval: Seconds between store reloads.
        lease_timeout: Seconds the leader lease lasts without renewal.
        owner: This beat's lease owner id (default: host, pid and a random part).
        scheduler: Celery's scheduler class name (default ``beat_scheduler``); only Celery's
            built-in names are accepted (see :mod:`chard.beat.compat`).
        schedule_filename: Celery's local state file (default ``beat_schedule_filename``):
            checked at :meth:`setup`, never used; run state lives in the broker.

    Raises:
        ImproperlyConfigured: ``scheduler`` names a class chard does not have.
    """

    def __init__(
        self,
        app: Celery,
        *,
        store: ScheduleStore | None = None,
        clock: Clock | None = None,
        max_interval: float | None = None,
        reload_interval: float = DEFAULT_RELOAD_INTERVAL,
        lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
        owner: str | None = None,
        scheduler: object = None,
        schedule_filename: str | os.PathLike[str] | None = None,
    ) -> None:
        if lease_timeout <= reload_interval:
            raise ValueError(
                f"lease_timeout {lease_timeout!r} must exceed reload_interval {reload_interval!r}"
                "; the leader renews its lease once per reload at least"
            )
        check_scheduler(scheduler if scheduler is not None else app.conf.beat_scheduler)
        self.app = app
        self.store = store
        self.schedule_filename = schedule_filename or app.conf.beat_schedule_filename
        #: The checked state file (after setup); see :mod:`chard.beat.compat`.
        self.state_file: Path | None = None
        self.clock: Clock = clock or SystemClock()
        configured = app.conf.get("beat_max_loop_interval") or DEFAULT_MAX_INTERVAL
        self.max_interval = float(max_interval or configured)
        self.reload_interval = reload_interval
        self.lease_timeout = lease_timeout
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.scheduler = Scheduler(max_interval=self.max_interval)
        self.is_leader = False
        #: Problems found in the schedule (each names its entry); updated on every reload.
        self.errors: list[str] = []
        self._config: dict[str, ScheduleEntry] = {}
        self._config_errors: list[str] = []
        self._reported: set[str] = set()
        self._warned_tasks: set[tuple[str, str]] = set()
        self._next_reload = 0.0
        self._lease_until = 0.0  # monotonic; counted from before the renewal that set it
        self._seen_leader: str | None = None
        self._is_setup = False
        self._stopped = threading.Event()

    # -- lifecycle ------------------------------------------------------------
    def setup(self) -> list[str]:
        """Check the state file, finalize the app, then sync, load and try to lead; return problems.

        Finalizing runs ``on_after_configure`` handlers, so ``add_periodic_task`` calls made
        there (even before the task they name was defined) are in ``beat_schedule`` by now.
        An unreachable broker is retried with back-off until it answers or :meth:`stop`.

        Raises:
            ImproperlyConfigured: the state file's path is unusable, or the broker has no store.
            BrokerConnectionError: the broker stayed unreachable past the start-up retries.
        """
        self.state_file = check_state_file(self.schedule_filename)
        self.app.finalize()
        entries, errors = entries_from_config(self.app.conf.beat_schedule or {}, app=self.app)
        self._config = {e.name: e for e in entries}

        def connect() -> None:
            if self.store is None:
                self.store = open_schedule_store(self.app, self.state_file)
            self._config_errors = errors + self.store.sync_config(entries, app_tz=self._app_tz())
            self._reload()
            self._lead()

        self._is_setup = retry_until_reachable(
            self.app, connect, who="beat", meanwhile="sending nothing", stopped=self._stopped
        )
        return self.errors

    def run(self) -> None:
        """Loop until :meth:`stop`; then release the lease so a standby takes over at once."""
        if not self._is_setup:
            self.setup()
        try:
            while self._is_setup and not self._stopped.is_set():  # not set up: stopped in setup
                self._stopped.wait(self.run_once())
        finally:
            self._shutdown()

    def start_thread(self) -> threading.Thread:
        """Run :meth:`run` in a daemon thread (``worker -B``); call :meth:`setup` first."""
        thread = threading.Thread(target=self.run, name="chard-beat", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Ask the loop to stop; it wakes at once (thread- and signal-handler-safe)."""
        self._stopped.set()

    def run_once(self) -> float:
        """Run one iteration (lead, maybe reload, tick, send); return the seconds to sleep."""
        try:
            self._lead()
            if self.clock.monotonic() >= self._next_reload:
                self._reload()
            if self.is_leader and self.clock.monotonic() >= self._lease_until:
                self._lead()  # the reload outlasted the lease: renew before sending, or stand by
            if not self.is_leader:
                return self.reload_interval
            sleep = self._tick(datetime.fromtimestamp(self.clock.time(), UTC))
        except ChardError as exc:
            logger.warning("beat: schedule store or broker failed (%s); retrying", exc)
            self.is_leader = False  # not sure we still lead: renew before sending again
            return self.reload_interval
        return min(sleep, self.reload_interval, self.lease_timeout / 3)

    @property
    def is_setup(self) -> bool:
        """Whether :meth:`setup` reached the broker (False if it was stopped while waiting)."""
        return self._is_setup

    def leader(self) -> LeaseHolder | None:
        """Return who holds the leader lease now (this beat or another), or None."""
        assert self.store is not None, "call setup() first"
        return self.store.lease_holder()

    def planned(self) -> list[PlannedRun]:
        """Describe every entry and its next run, for the start-up summary."""
        now = datetime.fromtimestamp(self.clock.time(), UTC)
        return [
            PlannedRun(e.name, e.task, repr(e.schedule), e.next_run(now), e.task in self.app.tasks)
            for e in sorted(self.scheduler.entries.values(), key=lambda e: e.name)
        ]

    # -- steps ----------------------------------------------------------------
    def _lead(self) -> None:
        assert self.store is not None, "call setup() first"
        was_leader = self.is_leader
        asked_at = self.clock.monotonic()
        self.is_leader = self.store.acquire_lease(self.owner, self.lease_timeout)
        if self.is_leader:
            self._lease_until = asked_at + self.lease_timeout
            self._seen_leader = self.owner
            if not was_leader:
                logger.info("beat: %s is the leader now; sending due tasks", self.owner)
                self._next_reload = 0.0  # continue from the previous leader's run state
            return
        if was_leader:
            logger.warning("beat: %s lost the leader lease; standing by", self.owner)
        holder = self.store.lease_holder()
        if holder is not None and holder.owner != self._seen_leader:
            logger.info(
                "beat: %s stands by; %s leads (a standby takes over within %.1fs of it stopping)",
                self.owner,
                holder.owner,
                self.lease_timeout,
            )
        self._seen_leader = holder.owner if holder is not None else None

    def _reload(self) -> None:
        assert self.store is not None, "call setup() first"
        entries, errors = self.store.load(self.app, self._config)
        self._report(self._config_errors + errors)
        fresh = {e.name: e for e in entries}
        for name in list(self.scheduler.entries):
            if name not in fresh:
                logger.info("beat: entry %r removed", name)
                self.scheduler.remove(name)
        for entry in entries:
            old = self.scheduler.entries.get(entry.name)
            if old is None:
                logger.info("beat: entry %r added (%s, %r)", entry.name, entry.task, entry.schedule)
                self._check_task(entry)
            elif _definition(old) != _definition(entry):
                logger.info("beat: entry %r changed", entry.name)
                self._check_task(entry)
            # Our own last write may have failed: never move the schedule back.
            if old is not None and _is_later(old.last_run_at, entry.last_run_at):
                entry = replace(entry, last_run_at=old.last_run_at)
            self.scheduler.add(entry)
        self._next_reload = self.clock.monotonic() + self.reload_interval

    def _tick(self, now: datetime) -> float:
        assert self.store is not None, "call setup() first"
        previous = {name: e.last_run_at for name, e in self.scheduler.entries.items()}
        due, sleep = self.scheduler.tick(now)
        for name, entry in self.scheduler.entries.items():
            if previous.get(name) is None and entry.last_run_at is not None:
                # First sight: persist the anchor so a restart keeps the rhythm.
                self.store.record_run(name, entry.last_run_at, entry.total_run_count)
        for entry in due:
            last = previous.get(entry.name)
            scheduled = entry.schedule.next_after(last) if last is not None else now
            self._fire(entry, scheduled, now)
        return sleep

    def _fire(self, entry: ScheduleEntry, scheduled: datetime, now: datetime) -> None:
        assert self.store is not None, "call setup() first"
        key = slot_key(entry.name, scheduled)
        if not self.store.claim_firing(entry.name, scheduled):
            logger.info("beat: %s was already sent by another beat; skipping it", key)
            # Continue right after that slot, not from now: a leader killed between its send
            # and its record leaves this standby several slots behind, and the next of them
            # is still sent (late, once), not skipped with the rest. The store's run state
            # never moves back, so a live sender's later record wins at the reload below.
            self.scheduler.add(replace(entry, last_run_at=scheduled))
            self.store.record_run(entry.name, scheduled, 0)  # counts stay as the sender wrote
            self._next_reload = 0.0
            return
        options = dict(entry.options)
        headers = {**dict(options.pop("headers", None) or {}), SLOT_HEADER: key}
        try:
            result = self.app.send_task(
                entry.task, args=entry.args, kwargs=entry.kwargs, headers=headers, **options
            )
        except Exception as exc:  # one bad entry (or a broker hiccup) must not stop beat
            logger.error(
                "beat: sending %r (%s) for %s failed: %s; this run is skipped",
                entry.name,
                entry.task,
                scheduled.isoformat(),
                exc,
                exc_info=True,
            )
        else:
            logger.info("Scheduler: Sending due task %s (%s) %s", entry.name, entry.task, result.id)
        self.store.record_run(entry.name, now, entry.total_run_count)

    # -- helpers --------------------------------------------------------------
    def _report(self, errors: list[str]) -> None:
        """Log each problem once (at ERROR) while it lasts; the other entries keep running."""
        for error in errors:
            if error not in self._reported:
                logger.error("beat: %s; skipping this entry, the others run", error)
        self._reported = set(errors)
        self.errors = list(errors)

    def _check_task(self, entry: ScheduleEntry) -> None:
        if entry.task in self.app.tasks or (entry.name, entry.task) in self._warned_tasks:
            return
        self._warned_tasks.add((entry.name, entry.task))
        logger.warning(
            "beat: entry %r sends task %r, which is not registered in this process; sending it "
            "by name anyway (fine if only the workers import it, otherwise check the name)",
            entry.name,
            entry.task,
        )

    def _app_tz(self) -> str | None:
        zone = self.app.conf.timezone
        return str(zone) if zone else None

    def _shutdown(self) -> None:
        if self.store is None:
            return
        try:
            if self.is_leader:
                self.store.release_lease(self.owner)
                logger.info("beat: %s released the leader lease", self.owner)
        except ChardError as exc:
            logger.warning("beat: could not release the leader lease (%s); it lapses", exc)
        finally:
            self.is_leader = False
            self.store.close()


def _is_later(a: datetime | None, b: datetime | None) -> bool:
    return a is not None and (b is None or a > b)


def _definition(entry: ScheduleEntry) -> tuple[object, ...]:
    return (entry.task, entry.schedule, entry.args, dict(entry.kwargs), dict(entry.options),
            entry.enabled)  # fmt: skip
