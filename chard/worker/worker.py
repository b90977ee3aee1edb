"""The worker node: wiring in a straight line, signals, banner, and shutdown.

``Worker.start()`` reads top to bottom: finalize the app, open the broker and the
backend (a URL chard cannot use fails here), show the banner, install signal
handlers, wait until broker and backend answer (:mod:`chard.startup`), prepare the
consumers (each with its :class:`~chard.worker.execute.Executor`), say "ready.",
consume until told to stop, shut down.
With the prefork pool (the default) the consuming is done by child processes,
forked once the app is loaded, under a :class:`~chard.worker.supervisor.Supervisor`;
with threads or solo, by a :class:`~chard.worker.consumer.Consumer` in this process.
Warm shutdown (SIGTERM, first Ctrl-C) finishes running tasks and returns unstarted
ones to the queue at once; cold shutdown (second Ctrl-C, SIGQUIT) kills running
tasks (prefork) and returns them too.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING

from chard import __version__, signals
from chard._utils.log import redact_url
from chard._utils.nodenames import host_format
from chard.events import EventDispatcher
from chard.exceptions import ImproperlyConfigured
from chard.startup import check_reachable, retry_until_reachable
from chard.worker.autoscale import Autoscaler, parse_autoscale
from chard.worker.child import ChildSpec
from chard.worker.consumer import Consumer
from chard.worker.execute import Executor
from chard.worker.heart import Heart
from chard.worker.held import ConsumerStats
from chard.worker.mailbox import Mailbox
from chard.worker.node import ChildProcesses, LocalProcesses, Node, Processes
from chard.worker.pools import GEVENT, PREFORK, create_pool, pool_kind
from chard.worker.pools.green import is_patched
from chard.worker.process_control import ProcessControl
from chard.worker.ratelimit import PoolShare
from chard.worker.revocations import Revocations
from chard.worker.supervisor import Supervisor

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger("chard.worker")


def expand_hostname(template: str) -> str:
    """Expand Celery's ``%h`` (host), ``%n`` (name part) and ``%d`` (domain) in a node name.

    Raises:
        ImproperlyConfigured: an unknown ``%`` abbreviation.
    """
    try:
        return host_format(template)
    except ValueError as exc:
        raise ImproperlyConfigured(f"node name: {exc}") from None


class Worker:
    """One worker node: a consumer feeding a pool."""

    def __init__(
        self,
        app: Celery,
        *,
        hostname: str | None = None,
        concurrency: int | None = None,
        pool: str | None = None,
        queues: Sequence[str] | None = None,
        prefetch_multiplier: int | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        autoscale: str | tuple[int, int] | None = None,
        burst: bool = False,
        send_events: bool | None = None,
        heartbeat: bool = True,
        on_banner: Callable[[str], None] | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.hostname = expand_hostname(hostname or "chard@%h")
        self.pool_kind = pool_kind(pool or conf.worker_pool)
        if self.pool_kind == GEVENT and not is_patched():
            raise ImproperlyConfigured(
                "the gevent pool needs the process monkey-patched before the app is loaded; "
                "pass -P gevent to chard worker instead of setting worker_pool"
            )
        self.autoscale = self._autoscale_bounds(autoscale or conf.worker_autoscale)
        default_concurrency = conf.worker_concurrency or os.cpu_count() or 1
        if self.autoscale is not None:  # start small (Celery starts at min), grow on demand
            default_concurrency = concurrency = max(1, self.autoscale[1])
        self.concurrency = 1 if self.pool_kind == "solo" else concurrency or default_concurrency
        self.queues = list(queues or [conf.task_default_queue])
        multiplier = prefetch_multiplier or conf.worker_prefetch_multiplier
        self.prefetch = max(1, self.concurrency * max(1, int(multiplier)))
        self.max_tasks_per_child = max_tasks_per_child or conf.worker_max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child or conf.worker_max_memory_per_child
        self.burst = burst
        if send_events is None:
            send_events = bool(conf.worker_send_task_events)
        #: The node's event dispatcher (``-E``). Its switch is in shared memory made
        #: before the prefork children fork: :meth:`EventDispatcher.enable` here (or in
        #: any child) turns events on in every process of the node.
        self.events = EventDispatcher(app, self.hostname, enabled=send_events)
        #: Whether the node sends worker events (online, heartbeats, offline): Celery's
        #: ``--without-heartbeat`` turns them off; task events follow ``send_events``.
        self.heartbeat = heartbeat
        self.heart: Heart | None = None
        self.consumer: Consumer | None = None
        self.supervisor: Supervisor | None = None
        self.autoscaler: Autoscaler | None = None
        self.mailbox: Mailbox | None = None
        self._signals_seen = 0
        #: Shows the start-up banner (the CLI prints it); None logs it at INFO.
        self.on_banner = on_banner
        self._stopping = threading.Event()

    def _autoscale_bounds(self, value: str | tuple[int, int] | None) -> tuple[int, int] | None:
        if not value:
            return None
        try:
            bounds = parse_autoscale(value)
        except ValueError as exc:
            raise ImproperlyConfigured(str(exc)) from None
        if self.pool_kind != PREFORK:
            raise ImproperlyConfigured(
                f"--autoscale needs the prefork pool, not {self.pool_kind!r}; "
                "use -c to size a threads or gevent pool"
            )
        return bounds

    def start(self) -> ConsumerStats:
        """Run the worker until it is stopped; returns its counters.

        "ready." is logged only once the broker and the result backend have answered
        (each retried with back-off meanwhile; see :mod:`chard.startup`).

        Raises:
            ImproperlyConfigured: a broker or backend URL chard cannot use.
            BrokerConnectionError, BackendConnectionError: still unreachable after the
                start-up retries.
        """
        self.app.finalize()
        signals.worker_init.send(sender=self)
        self.app.broker  # noqa: B018 - open now: a URL chard cannot use fails before anything
        self.app.backend  # noqa: B018 - the same for the backend (rpc:// is refused here)
        if self.on_banner is not None:
            self.on_banner(self.banner())
        else:
            logger.info("%s", self.banner())
        self._install_signal_handlers()  # before waiting: a Ctrl-C while the broker is down
        if not retry_until_reachable(
            self.app,
            lambda: check_reachable(self.app, self.queues[0]),
            who="worker",
            meanwhile="not ready",
            stopped=self._stopping,
        ):
            self.app.close()
            return ConsumerStats()  # stopped before the broker answered
        self.app.events.task_dispatcher = self.events  # task events: here and in children
        run = self._prefork() if self.pool_kind == PREFORK else self._in_process()
        self.mailbox = mailbox = Mailbox(self._node())  # joins the control channel
        mailbox.start()
        if self._stopping.is_set():
            self.stop()  # a signal came before the supervisor or consumer existed: pass it on
        logger.info("%s ready.", self.hostname)
        signals.worker_ready.send(sender=self)
        if self.heartbeat:
            self.heart = Heart(self.events, active=self._active, processed=self._processed)
            self.heart.start()
        try:
            stats = run()
        finally:
            mailbox.stop()  # leaves the channel
            signals.worker_shutdown.send(sender=self)
            if self.heart is not None:
                self.heart.stop()  # worker-offline, after the children stopped
            self.events.close()
            self.app.events.task_dispatcher = None
            self.app.close()
        logger.info(
            "%s stopped: %d received, %d succeeded, %d failed, %d set aside",
            self.hostname,
            stats.received,
            stats.succeeded,
            stats.failed,
            stats.dead_lettered,
        )
        return stats

    def _prefork(self) -> Callable[[], ConsumerStats]:
        """Prepare the consumer processes (forked when the returned callable runs)."""
        spec = ChildSpec(
            app=self.app,
            hostname=self.hostname,
            queues=self.queues,
            prefetch=max(1, self.prefetch // self.concurrency),
            max_tasks_per_child=self.max_tasks_per_child,
            burst=self.burst,
            initializer=self._init_child,
            max_memory_per_child=self.max_memory_per_child,
            rate_share=PoolShare(self.concurrency),
        )
        self.supervisor = Supervisor(spec, self.concurrency)
        if self.autoscale is not None:
            broker, queues = self.app.broker, self.queues
            self.autoscaler = Autoscaler(
                self.supervisor,
                lambda: sum(broker.queue_size(q) for q in queues),
                *self.autoscale,
            )
            self.supervisor.autoscaler = self.autoscaler
        return self.supervisor.run

    def _in_process(self) -> Callable[[], ConsumerStats]:
        """Prepare one consumer feeding a pool of threads (or solo) in this process."""
        executor = Executor(self.app, self.hostname)
        pool = create_pool(
            self.pool_kind,
            executor.run,
            self.concurrency,
            max_tasks_per_child=self.max_tasks_per_child,
            initializer=self._init_child,
        )
        self.consumer = Consumer(
            self.app,
            pool,
            self.queues,
            prefetch=self.prefetch,
            burst=self.burst,
            hostname=self.hostname,
        )
        # This consumer keeps its process's revocation record (it terminates through its pool).
        executor.revocation_check = self.consumer.revocations.check
        pool.start()
        return self.consumer.run

    def _node(self) -> Node:
        """Describe this node for its remote control commands (see :mod:`.commands`)."""
        revocations: Revocations
        processes: Processes
        if self.supervisor is not None:
            revocations = self.supervisor.revocations
            processes = ChildProcesses(self.supervisor.control_links)
        else:
            assert self.consumer is not None
            revocations = self.consumer.revocations
            processes = LocalProcesses(ProcessControl(self.consumer, self.hostname))
        return Node(
            app=self.app,
            hostname=self.hostname,
            pool=self.pool_kind,
            queues=self.queues,  # with prefork, the list children are forked with
            max_tasks_per_child=self.max_tasks_per_child,
            revocations=revocations,
            processes=processes,
            stop=self.stop,
            events=self.events,
            sizing=self,
        )

    def _active(self) -> int:
        """How many tasks run now (for heartbeats)."""
        if self.supervisor is not None:
            return self.supervisor.active_count()
        return self.consumer.active_count() if self.consumer is not None else 0

    def _processed(self) -> int:
        """How many tasks the node finished since it started (for heartbeats)."""
        if self.supervisor is not None:
            return self.supervisor.processed_count()
        return self.consumer.stats.processed if self.consumer is not None else 0

    def stop(self, cold: bool = False) -> None:
        """Ask the worker to stop (warm by default)."""
        if self.mailbox is not None:  # its thread ends while the tasks finish
            self.mailbox.leave()
        self._stopping.set()
        if self.supervisor is not None:
            self.supervisor.stop(cold=cold)
        if self.consumer is not None:
            self.consumer.stop(cold=cold)

    # -- run-time sizing: what the pool_grow, pool_shrink and autoscale commands call -----------
    def pool_grow(self, n: int = 1) -> int:
        """Add ``n`` processes (threads) to the pool; returns the new size."""
        if self.autoscaler is not None:
            self.autoscaler.force_scale_up(n)
        else:
            self._resize(self.pool_size() + n)
        return self.pool_size()

    def pool_shrink(self, n: int = 1) -> int:
        """Retire ``n`` processes (threads) warmly, keeping one; returns the new size."""
        if self.autoscaler is not None:
            self.autoscaler.force_scale_down(n)
        else:
            self._resize(max(1, self.pool_size() - n))
        return self.pool_size()

    def autoscale_update(self, max: int | None, min: int | None) -> tuple[int, int]:
        """Change the autoscale bounds (Celery's ``autoscale`` command); returns ``(max, min)``.

        Raises:
            ImproperlyConfigured: the node was not started with ``--autoscale``.
        """
        if self.autoscaler is None:
            raise ImproperlyConfigured(
                "autoscale is not enabled on this node; start it with --autoscale"
            )
        return self.autoscaler.update(max, min)

    def pool_size(self) -> int:
        """How many processes (or threads) the pool has now."""
        if self.supervisor is not None:
            return self.supervisor.size
        return self.consumer.pool.concurrency if self.consumer is not None else self.concurrency

    def prefetch_count(self) -> int:
        """Messages leased ahead now: each prefork child leases its own window."""
        if self.supervisor is not None:
            return self.supervisor.spec.prefetch * self.pool_size()
        return self.prefetch

    def _resize(self, size: int) -> None:
        if self.supervisor is not None:
            self.supervisor.resize(size)
        elif self.consumer is not None:
            self.consumer.pool.resize(size)

    def _init_child(self) -> None:
        # Each prefork child opens its own connections (the app reopens after fork).
        signals.worker_process_init.send(sender=self)

    def _install_signal_handlers(self) -> None:
        def warm_then_cold(signum: int, frame: FrameType | None) -> None:
            self._signals_seen += 1
            if self._signals_seen == 1 and signum != signal.SIGQUIT:
                logger.warning("worker: Warm shutdown (finishing running tasks)")
                signals.worker_shutting_down.send(sender=self.hostname, sig=signum, how="Warm")
                self.stop(cold=False)
            else:
                logger.warning("worker: Cold shutdown (running tasks are returned to the queue)")
                signals.worker_shutting_down.send(sender=self.hostname, sig=signum, how="Cold")
                self.stop(cold=True)

        if threading.current_thread() is not threading.main_thread():
            return  # embedded in a thread (tests, -B siblings): the owner stops us
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, warm_then_cold)

    def _concurrency_text(self) -> str:
        if self.autoscale is None:
            return str(self.concurrency)
        high, low = self.autoscale
        return f"{{min={low}, max={high}}}"  # Celery's shape

    def banner(self) -> str:
        """Return the start-up banner, in Celery's shape."""
        app, conf = self.app, self.app.conf
        results = redact_url(app.backend_url) if app.backend_url else "disabled"
        lines = [
            "",
            f" -------------- {self.hostname} v{__version__} (chard)",
            "--- ***** ----- ",
            f"-- ******* ---- {platform.platform()} {datetime.now():%Y-%m-%d %H:%M:%S}",
            "- *** --- * --- ",
            "- ** ---------- [config]",
            f"- ** ---------- .> app:         {app.main}:{id(app):#x}",
            f"- ** ---------- .> transport:   {redact_url(app.broker_url)}",
            f"- ** ---------- .> results:     {results}",
            f"- *** --- * --- .> concurrency: {self._concurrency_text()} ({self.pool_kind})",
            f"-- ******* ---- .> acks:        {'late' if conf.task_acks_late else 'early'}"
            f" (max deliveries {conf.task_max_deliveries})",
            f"-- ******* ---- .> task events: {'ON' if self.events.enabled else 'OFF'}",
            "--- ***** ----- ",
            " -------------- [queues]",
        ]
        lines += [f"                .> {q:<16} prefetch={self.prefetch}" for q in self.queues]
        lines += ["", "[tasks]"] + [f"  . {name}" for name in app.tasks.user_tasks()]
        if app.uses_embedded_default:
            lines += [
                "",
                "No broker configured: using the embedded SQLite file "
                f"{app.broker_url.removeprefix('sqlite:///')} for messages and results "
                "(set broker_url and result_backend to a redis:// URL, with "
                "pip install 'chard[redis]', to share work between machines).",
            ]
        return "\n".join(lines) + "\n"
