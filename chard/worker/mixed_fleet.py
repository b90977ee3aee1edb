"""What a chard node does for the Celery workers beside it (``chard_celery_compat``).

What a Celery fleet expects of every worker, done by threads of the node's main process,
each on a broker connection of its own:

* **Celery clients' remote control.** Celery's ``app.control`` (``revoke``,
  ``inspect ping``...) is a cast on ``celery.pidbox`` that only a listening process
  hears. The thread listens before the node says ready and answers what it hears as
  a Celery worker would (:mod:`chard.worker.pidbox`). A ``revoke`` is appended to
  chard's ``revoke`` broadcast channel: from there every chard worker honours it as
  its own (:mod:`chard.worker.revocations`), durably, ``terminate`` included. Each
  chard node appends the same revocation once; a repeated revocation changes nothing.
* **Celery workers' events** (RabbitMQ): each is taken by one chard node from a queue
  bound to Celery's ``celeryev`` and appended to chard's ``events`` log, so ``chard
  events`` and the dashboard show Celery's workers and tasks beside chard's.
* **A dead Celery worker's messages.** What a Celery worker had taken but not acked
  (prefetched, or waiting for its ETA) stays in kombu's ``unacked`` hash until some
  process restores it after the ``visibility_timeout`` (Celery's
  ``broker_transport_options``, default 3600 s). The thread does kombu's restore
  every :data:`SWEEP_INTERVAL` (or the visibility timeout, if shorter), under kombu's
  own mutex, so the last Celery worker of a migrated service can go without
  stranding its messages. chard's own deliveries never enter that hash (they are
  leased and recovered by chard's workers; see the README).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from chard.brokers import Broker, open_broker
from chard.exceptions import BrokerConnectionError
from chard.protocol.events import EVENTS_CHANNEL, EVENTS_MAXLEN, encode_batch
from chard.worker.node import Node
from chard.worker.pidbox import CeleryPidbox

logger = logging.getLogger("chard.worker")

#: Longest single wait for a cast: how soon the thread sees a stop.
READ_TIMEOUT = 1.0
MAX_BACKOFF = 30.0
#: Longest time between two restores of Celery's timed-out deliveries (kombu: ~100 s).
SWEEP_INTERVAL = 60.0
#: kombu's default ``visibility_timeout`` (seconds).
CELERY_VISIBILITY_TIMEOUT = 3600.0


class MixedFleet:
    """Serve the Celery workers beside ``node``; see the module docstring."""

    def __init__(self, node: Node) -> None:
        self.node = node
        options = node.app.conf.broker_transport_options or {}
        self.visibility_timeout = float(
            options.get("visibility_timeout") or CELERY_VISIBILITY_TIMEOUT
        )
        self._sweep_every = max(min(SWEEP_INTERVAL, self.visibility_timeout), READ_TIMEOUT)
        self._next_sweep = 0.0
        self._stopping = threading.Event()
        self._broker: Broker | None = None
        self._pidbox: CeleryPidbox | None = None
        self._threads: list[threading.Thread] = []
        #: A connection of its own for Celery's events, so appending them to chard's log
        #: never delays an answer to a Celery client (whose CLI waits one second).
        self._events_broker: Broker | None = None

    def start(self) -> None:
        """Subscribe now (casts are not stored), then serve the fleet on threads."""
        app = self.node.app
        self._broker = open_broker(app.broker_url, app.conf.broker_transport_options)
        self._pidbox = CeleryPidbox(self.node, self._broker)
        try:
            self._broker.celery_casts(0)
        except NotImplementedError as exc:
            logger.warning("chard_celery_compat has no effect on this worker: %s", exc)
            return
        except Exception as exc:  # the broker is down: the thread subscribes when it is up
            logger.warning("Cannot listen for Celery's remote control yet: %s", exc)
        logger.info(
            "chard_celery_compat: answering Celery clients' remote control; restoring what "
            "dead Celery workers left unacked after %ss (visibility_timeout)",
            self.visibility_timeout,
        )
        self._run("chard-mixed-fleet", lambda: (self.poll(READ_TIMEOUT), self.sweep()))
        self._events_broker = open_broker(app.broker_url, app.conf.broker_transport_options)
        try:
            self._events_broker.celery_events(0)
        except NotImplementedError:  # Redis: every node hears every event (pub/sub)
            self._events_broker.close()
            self._events_broker = None
            return
        except Exception as exc:  # the broker is down: the thread listens when it is up
            logger.warning("Cannot take Celery's events yet: %s", exc)
        self._run("chard-celery-events", lambda: self.move_events(READ_TIMEOUT))

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)
        for broker in (self._broker, self._events_broker):
            if broker is not None:
                broker.close()

    def _run(self, name: str, step: Callable[[], object]) -> None:
        """Call ``step`` on a thread until stopped, backing off while it fails."""

        def follow() -> None:
            pause = 1.0
            while not self._stopping.is_set():
                try:
                    step()
                except Exception as exc:  # the broker is down, mostly: never end the thread
                    is_down = isinstance(exc, BrokerConnectionError)
                    level = logging.WARNING if is_down else logging.ERROR
                    logger.log(level, "Mixed fleet: %s; retrying in %.0fs", exc, pause)
                    self._stopping.wait(pause)
                    pause = min(pause * 2, MAX_BACKOFF)
                    continue
                pause = 1.0

        thread = threading.Thread(target=follow, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def poll(self, timeout: float) -> int:
        """Act on what Celery clients cast within ``timeout``; return how many were heard."""
        assert self._pidbox is not None
        heard = self._pidbox.broker.celery_casts(timeout)
        for payload in heard:
            self._pidbox.handle(payload)
        return len(heard)

    def move_events(self, timeout: float) -> int:
        """Append the events Celery workers sent (taken within ``timeout``) to chard's
        ``events`` log, as one batch; return how many."""
        assert self._events_broker is not None
        events = self._events_broker.celery_events(timeout)
        if events:
            self._events_broker.broadcast(
                EVENTS_CHANNEL, encode_batch(events), maxlen=EVENTS_MAXLEN
            )
        return len(events)

    def sweep(self) -> int:
        """Restore Celery's timed-out deliveries when a sweep is due; return how many."""
        assert self._broker is not None
        now = time.monotonic()
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + self._sweep_every
        restored = self._broker.celery_restore_unacked(self.visibility_timeout)
        if restored:
            logger.warning(
                "Restored %d message(s) a Celery worker left unacked for over %ss",
                restored,
                self.visibility_timeout,
            )
        return restored
