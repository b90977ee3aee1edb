"""The app: configuration, task registry, broker and backend wiring, and sending.

``Celery(...)`` (also exported as ``Chard``) is the composition root: it owns
its settings, registry, broker and result backend; tasks bind to it when they
are decorated and workers take it as an argument. Nothing is global except the
explicit "current app" contextvar that ``shared_task`` reads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from chard import _context, discovery, periodic, sending, shared, signals
from chard import result as _result
from chard._utils.imports import import_string, load_entry_point
from chard._utils.perprocess import PerProcess
from chard.app_compat import CeleryCompat
from chard.backends import ResultBackend, open_backend
from chard.brokers import Broker, open_broker
from chard.config import Settings, backend_options, broker_options
from chard.contrib import django
from chard.control import Control
from chard.events import Events
from chard.exceptions import ImproperlyConfigured
from chard.execution.trace import apply_eagerly
from chard.protocol.serializers import accepted_content_types
from chard.registry import TaskRegistry
from chard.result import AsyncResult
from chard.sending import RoutedMessage, SendOptions, build_message
from chard.shared import shared_task
from chard.task import Task

__all__ = ["DEFAULT_SQLITE_URL", "Celery", "Chard", "shared_task"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Where the embedded default keeps broker and results when nothing is configured.
DEFAULT_SQLITE_URL = "sqlite:///chard.sqlite3"


class Celery(CeleryCompat):
    """A chard application; Celery's constructor and attributes."""

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        backend: str | None = None,
        *,
        include: Sequence[str] | None = None,
        config_source: Any = None,
        set_as_current: bool = True,
        task_cls: type[Task[Any, Any]] | str | None = None,
        namespace: str | None = None,
        **settings: Any,
    ) -> None:
        self.main = main or "__main__"
        self.conf = Settings(**settings)
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        if include:
            self.conf.include = list(include)
        if config_source is not None:
            self.config_from_object(config_source, namespace=namespace)
        # Celery's default under Django is its DjangoTask (delay_on_commit); a path is imported.
        self.Task: type[Task[Any, Any]] = (
            import_string(task_cls) if isinstance(task_cls, str) else task_cls
        ) or django.default_task_class()
        self._tasks = TaskRegistry()
        from chard.canvas.maps import register_builtins

        register_builtins(self)  # celery.map / celery.starmap / celery.chunks, as Celery has
        self._shared_seen = 0
        self._send_plans: dict[str, Any] = {}  # task name -> what its plain sends share
        self._connections = PerProcess()
        self._lock = threading.RLock()
        self._finalized = False
        self._pending_discovery: list[tuple[Any, str]] = []
        self.on_configure = signals.Signal("on_configure")
        self.on_after_configure = signals.Signal("on_after_configure")
        self.on_after_finalize = signals.Signal("on_after_finalize")
        # add_periodic_task calls made before configuration, applied when it is final (Celery).
        self._pending_periodic: list[tuple[str, dict[str, Any], bool]] = []
        self.conf.call_on_first_read(self._configure)
        #: Remote control of the workers (``app.control.revoke(task_id)``); connects on use.
        self.control = Control(self)
        self.events = Events(self)  #: monitoring events: ``.Receiver(handlers=)``, ``.State()``
        if set_as_current:
            _context.set_current_app(self)

    # -- configuration --------------------------------------------------------
    def config_from_object(
        self, obj: Any, silent: bool = False, force: bool = False, namespace: str | None = None
    ) -> None:
        """Load settings from a module, class, mapping or dotted path (Celery's signature)."""
        try:
            self.conf.load_object(obj, namespace=namespace)
        except ImproperlyConfigured:
            if not silent:
                raise

    def config_from_envvar(self, variable_name: str, silent: bool = False) -> None:
        """Load settings from the module named by environment variable ``variable_name``."""
        module = self.conf.module_in_envvar(variable_name, silent)
        if module:
            self.config_from_object(module, silent=silent)

    def now(self) -> datetime:
        """Return the current time in the configured zone."""
        return datetime.now(self.timezone)

    # -- tasks ----------------------------------------------------------------
    # The overloads type the result: bare, with options, and bind=True, whose function
    # takes the task as its first argument, which is not part of what callers pass.
    # shared_task has the same four.
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, /, *, bind: Literal[True], **options: Any
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...

    @overload
    def task(
        self, /, *, bind: Literal[False] = False, **options: Any
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    @overload
    def task(
        self, /, *, bind: bool, **options: Any
    ) -> Callable[[Callable[..., R]], Task[..., R]]: ...

    def task(self, fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(bind=True, ...)``."""

        def decorate(func: Callable[P, R]) -> Task[P, R]:
            base: type[Task[Any, Any]] = options.pop("base", None) or self.Task
            name = options.pop("name", None) or self._default_name(func)
            # peek: decorating is not a read (Celery's is lazy), so handlers fire later.
            annotations = (self.conf.peek("task_annotations") or {}).get(name, {})
            task: Task[P, R] = base(func, app=self, name=name, **{**options, **annotations})
            self._tasks.register(task)
            return task

        if fn is not None:
            return decorate(fn)
        return decorate

    def _default_name(self, fn: Callable[..., Any]) -> str:
        module = fn.__module__
        if module == "__main__" and self.main != "__main__":
            module = self.main
        return f"{module}.{fn.__qualname__}"

    def register_task(self, task: Task[Any, Any] | type[Task[Any, Any]]) -> Task[Any, Any]:
        """Register a class-based task (an instance or a class); returns the instance."""
        instance = task() if isinstance(task, type) else task
        instance.bind_app(self)
        self._tasks.register(instance)
        return instance

    @property
    def tasks(self) -> TaskRegistry:
        """The registry; shared tasks declared so far are included."""
        declared = shared.declared
        if self._shared_seen != len(declared):
            for task in declared[self._shared_seen :]:
                self._tasks.setdefault(task.name, task)
            self._shared_seen = len(declared)
        return self._tasks

    def _configure(self) -> None:
        """Finalize configuration: called once, by the first read of ``app.conf`` (Celery's).

        Sends ``on_configure``, applies ``add_periodic_task`` calls made before, then sends
        ``on_after_configure``: whoever reads ``app.conf.beat_schedule`` sees their entries.
        It imports nothing; importing task modules waits for :meth:`finalize`.
        """
        self.on_configure.send(sender=self)
        pending, self._pending_periodic = self._pending_periodic, []
        for key, entry, is_named in pending:
            periodic.add(self.conf, key, entry, is_named)
        self.on_after_configure.send(sender=self, source=self.conf)

    def finalize(self) -> None:
        """Finalize configuration, import configured modules, run on_after_finalize once.

        Called by the worker and beat at start-up (and safe to call again). Configuration
        (``on_after_configure``) is usually final already: any read of ``app.conf`` does it.
        """
        with self._lock:
            if self._finalized:
                return
            self._finalized = True
        self.conf.configure()
        django.setup(self)  # django.setup() before any task module imports a model
        self.import_default_modules()
        pending, self._pending_discovery = self._pending_discovery, []
        for packages, related_name in pending:
            discovery.discover(packages, related_name)
        self.on_after_finalize.send(sender=self)

    def import_default_modules(self) -> None:
        """Import every module in ``include`` and ``imports``."""
        discovery.import_modules([*(self.conf.include or ()), *(self.conf.imports or ())])

    def autodiscover_tasks(
        self,
        packages: discovery.Packages = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.tasks`` for every package (packages without one are skipped).

        As in Celery, discovery waits until the app is finalized (worker or beat
        start-up), so a Django project can call this from ``proj/celery.py`` before
        ``django.setup()`` ran; ``force=True`` discovers now. With no packages, the
        installed Django apps are searched.
        """
        if force or self._finalized:
            discovery.discover(packages, related_name)
        else:
            self._pending_discovery.append((packages, related_name))

    def add_periodic_task(
        self,
        schedule: Any,
        sig: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> str:
        """Add an entry to ``beat_schedule`` (Celery's API); returns the entry name.

        See :func:`chard.periodic.entry` for how the entry is built and keyed. Before
        configuration is final the entry waits and is added just before
        ``on_after_configure`` (Celery's order).
        """
        key, entry = periodic.entry(self, schedule, sig, args, kwargs, name, options)
        if self.conf.is_configured:
            periodic.add(self.conf, key, entry, name is not None)
        else:
            self._pending_periodic.append((key, entry, name is not None))
        return key

    # -- connections ----------------------------------------------------------
    @property
    def broker_url(self) -> str:
        """The broker URL in use (the embedded SQLite default when none is set)."""
        return str(self.conf.broker_url or DEFAULT_SQLITE_URL)

    @property
    def backend_url(self) -> str | None:
        """The result backend URL, or None when results are disabled.

        With neither broker nor backend configured both default to the embedded
        SQLite file; a broker without a backend disables results, as in Celery.
        """
        url = self.conf.result_backend
        if url:
            return str(url)
        return None if self.conf.broker_url else DEFAULT_SQLITE_URL

    @property
    def uses_embedded_default(self) -> bool:
        """Whether the app runs on the SQLite default because nothing was configured."""
        return not self.conf.broker_url

    @property
    def broker(self) -> Broker:
        """This process's broker connection (opened on first use)."""
        return self._connections.get(  # type: ignore[no-any-return]
            "broker",
            lambda: open_broker(self.broker_url, broker_options(self.conf)),
        )

    @property
    def backend(self) -> ResultBackend | None:
        """This process's result backend, or None when results are disabled."""
        backend = self._connections.peek("backend")
        if backend is not None:
            return backend  # type: ignore[no-any-return]
        url = self.backend_url
        if url is None:
            return None
        expires = self.conf.result_expires
        expires = expires.total_seconds() if isinstance(expires, timedelta) else expires

        def open_it() -> ResultBackend:
            opened = open_backend(
                url,
                expires=float(expires) if expires else None,
                options=backend_options(self.conf, url, self.broker_url),
            )
            opened.share_broker(lambda: self.broker)
            return opened

        return self._connections.get("backend", open_it)  # type: ignore[no-any-return]

    @property
    def accept_content(self) -> frozenset[str]:
        """Content types workers decode (from ``accept_content``)."""
        return accepted_content_types(self.conf.accept_content)

    def close(self) -> None:
        """Close this process's broker and backend connections.

        The plain-send plans go too: the next send reads the configuration again, as
        the next connection does (environment variables such as ``CHARD_RESULT_BACKEND``
        included, which bump no settings version).
        """
        self._connections.close()
        self._send_plans.clear()

    # -- sending --------------------------------------------------------------
    def send_task(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        task_id: str | None = None,
        *,
        task: Task[Any, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send task ``name`` by name (no import of the task needed); return its result.

        Options are ``apply_async``'s (see :class:`~chard.sending.SendOptions`); the
        positional order is Celery's.

        Raises:
            SerializationError: an argument cannot be encoded (names the argument).
            BrokerConnectionError: the broker stayed unreachable (``task_publish_retry_policy``).
        """
        task = task if task is not None else self.tasks.get(name)
        request = _context.get_current_request()
        sent = None
        if not options and request is None and countdown is None and eta is None and not task_id:
            args = tuple(args) if args else ()
            kwargs = kwargs if isinstance(kwargs, dict) else dict(kwargs or {})
            sent = sending.send_plain(self, name, args, kwargs, task)
        if sent is not None:
            task_id, ignored = sent
        else:
            send = SendOptions.of(options, countdown=countdown, eta=eta, task_id=task_id)
            routed = build_message(self, name, args, kwargs, send, task)
            task_id, ignored = routed.message.id, routed.message.ignore_result
            # The call's retry / retry_policy, if it gave any.
            sending.publish(self, (routed,), send.other or None)
        if not ignored:
            # Opened at the first send, as Celery's on_task_call does, so that a wrong result
            # backend URL is refused here and not at the first get(). Nothing is subscribed:
            # a get() that finds its task pending subscribes then (wait_for_many).
            self.backend  # noqa: B018
        return AsyncResult(task_id, app=self, task_name=name, ignored=ignored)

    def publish(
        self,
        messages: RoutedMessage | Sequence[RoutedMessage],
        retry: Mapping[str, Any] | None = None,
    ) -> None:
        """Encode built messages and publish them in one broker round-trip.

        The one way out to the broker: ``send_task`` publishes one message, a canvas
        all of its messages at once. Connection errors are retried per
        ``task_publish_retry_policy``, or the ``retry``/``retry_policy`` in ``retry``.
        """
        batch = (messages,) if isinstance(messages, RoutedMessage) else messages
        sending.publish(self, batch, retry)

    def transaction(self, connection: Any) -> AbstractContextManager[None]:  # Any: DB-API
        """Send this block's tasks through ``connection``, visible when its transaction commits."""
        return self.broker.enlist(connection)

    # -- canvas shortcuts -----------------------------------------------------
    def signature(
        self,
        varies: Any,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Return a signature bound to this app (``app.signature('proj.tasks.add', (2, 2))``)."""
        from chard.canvas import signature

        return signature(varies, args, kwargs, app=self, **options)

    # -- running ----------------------------------------------------------------
    def start(self, argv: Sequence[str] | None = None) -> None:
        """Run the ``chard`` command line with this app (``if __name__ == '__main__'``).

        The command line is a layer above the library, so it is not imported by name: it
        is found through the entry point it installs (``chard.command_line``, see
        ``pyproject.toml``), as the ``chard`` console script is.
        """
        run_with_app = load_entry_point("chard.command_line", "run_with_app")
        run_with_app(self, list(argv) if argv is not None else None)

    def worker_main(self, argv: Sequence[str] | None = None) -> None:
        """Run a worker from argv (Celery's ``app.worker_main(['worker', ...])``)."""
        self.start(argv)

    def _apply_eagerly(
        self,
        task: Task[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> _result.EagerResult[Any]:
        """Run ``task`` inline for ``Task.apply()``.

        Here rather than in :mod:`chard.task`: running a body is :mod:`chard.execution`'s,
        a layer above ``Task`` (it imports it), and the app is where the layers meet.
        """
        return apply_eagerly(task, args, kwargs, options)

    def __repr__(self) -> str:
        return f"<Celery {self.main} at {id(self):#x}>"


#: The name Celery code imports; chard's own name for the same class.
Chard = Celery
