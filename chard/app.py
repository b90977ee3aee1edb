"""The app: configuration, task registry, broker and backend wiring, and sending.

``Celery(...)`` (also exported as ``Chard``) is the composition root: it owns
its settings, registry, broker and result backend; tasks bind to it when they
are decorated and workers take it as an argument. Nothing is global except the
explicit "current app" contextvar that ``shared_task`` reads.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, ParamSpec, TypeVar, overload
from zoneinfo import ZoneInfo

from chard import _context, routing, signals
from chard import result as _result
from chard._utils.log import redact_url
from chard.backends import ResultBackend, open_backend
from chard.brokers import Broker, OutgoingMessage, open_broker
from chard.config import Settings
from chard.control import Control
from chard.exceptions import BrokerConnectionError, ImproperlyConfigured
from chard.execution.trace import apply_eagerly
from chard.protocol.message import TaskMessage, new_id
from chard.protocol.serializers import accepted_content_types
from chard.registry import TaskRegistry
from chard.result import AsyncResult
from chard.task import Task

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Where the embedded default keeps broker and results when nothing is configured.
DEFAULT_SQLITE_URL = "sqlite:///chard.sqlite3"

#: Tasks declared with ``shared_task``, added to every app's registry.
_shared_tasks: list[Task[Any, Any]] = []


class Celery:
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
        task_cls: type[Task[Any, Any]] | None = None,
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
        self.Task: type[Task[Any, Any]] = task_cls or Task
        self._tasks = TaskRegistry()
        from chard.canvas.maps import register_builtins

        register_builtins(self)  # celery.map / celery.starmap / celery.chunks, as Celery has
        self._shared_seen = 0
        self._connections: dict[str, Any] = {}
        self._conn_pid = os.getpid()
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
        module = os.environ.get(variable_name)
        if not module:
            if silent:
                return
            raise ImproperlyConfigured(
                f"environment variable {variable_name!r} is not set; set it to the dotted "
                "name of a settings module, e.g. export CELERY_CONFIG_MODULE=proj.settings"
            )
        self.config_from_object(module, silent=silent)

    @property
    def timezone(self) -> tzinfo:
        """The configured ``timezone`` as a tzinfo (UTC when unset)."""
        name = self.conf.timezone
        if not name:
            return UTC
        if isinstance(name, tzinfo):
            return name
        try:
            return ZoneInfo(str(name))
        except Exception as exc:
            raise ImproperlyConfigured(
                f"unknown timezone {name!r}; use an IANA name like 'Europe/Moscow'"
            ) from exc

    def now(self) -> datetime:
        """Return the current time in the configured zone."""
        return datetime.now(self.timezone)

    # -- tasks ----------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, /, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...

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
        if self._shared_seen != len(_shared_tasks):
            for shared in _shared_tasks[self._shared_seen :]:
                self._tasks.setdefault(shared.name, shared)
            self._shared_seen = len(_shared_tasks)
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
            self._add_periodic_entry(key, entry, is_named)
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
        self.import_default_modules()
        pending, self._pending_discovery = self._pending_discovery, []
        for packages, related_name in pending:
            self._discover(packages, related_name)
        self.on_after_finalize.send(sender=self)

    def import_default_modules(self) -> None:
        """Import every module in ``include`` and ``imports``."""
        for name in [*(self.conf.include or ()), *(self.conf.imports or ())]:
            importlib.import_module(name)

    def autodiscover_tasks(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
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
            self._discover(packages, related_name)
        else:
            self._pending_discovery.append((packages, related_name))

    def _discover(
        self, packages: Iterable[str] | Callable[[], Iterable[str]] | None, related_name: str
    ) -> None:
        found = packages() if callable(packages) else packages
        if found is None:
            found = self._django_apps()
        for package in found:
            module_name = f"{package}.{related_name}" if related_name else package
            try:
                importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name not in (module_name, package):
                    raise  # the tasks module exists but imports something missing

    @staticmethod
    def _django_apps() -> list[str]:
        try:
            from django.apps import apps  # type: ignore[import-not-found]
        except ImportError:
            return []
        return [config.name for config in apps.get_app_configs()]

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

        ``sig`` is a signature, a task or a task name; ``args`` are prepended to its own and
        ``kwargs`` merged, as Celery's ``sig.clone(args, kwargs)``. Without ``name`` the key
        is the signature's repr, so adding the same signature again replaces the earlier
        entry (with a warning, as Celery 5.3+). Before configuration is final the entry waits
        and is added just before ``on_after_configure`` (Celery's order).
        """
        from chard.canvas import Signature, signature

        if isinstance(sig, Signature):
            call = sig.clone(args, kwargs)
        else:
            call = signature(getattr(sig, "name", sig), args, kwargs, app=self)
        key = name or repr(call)
        entry: dict[str, Any] = {
            "task": call.task,
            "schedule": schedule,
            "args": tuple(call.args),
            "kwargs": dict(call.kwargs),
            "options": {**dict(call.options), **options},
        }
        if self.conf.is_configured:
            self._add_periodic_entry(key, entry, name is not None)
        else:
            self._pending_periodic.append((key, entry, name is not None))
        return key

    def _add_periodic_entry(self, key: str, entry: dict[str, Any], is_named: bool) -> None:
        schedule_map = dict(self.conf.beat_schedule or {})
        earlier = schedule_map.get(key)
        if earlier is not None and not is_named:
            logger.warning(
                "add_periodic_task: %r on schedule %r replaces the entry of the same "
                "signature on schedule %r; pass name= to add_periodic_task to keep both",
                key,
                entry["schedule"],
                earlier.get("schedule") if isinstance(earlier, Mapping) else earlier,
            )
        schedule_map[key] = entry
        self.conf.beat_schedule = schedule_map

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

    def _connection(self, kind: str, factory: Callable[[], Any]) -> Any:
        # Connections are per process: a child after fork opens its own.
        conn = self._connections.get(kind)
        if conn is not None and self._conn_pid == os.getpid():
            return conn  # the common case, without the lock (a dict read is atomic)
        with self._lock:
            if self._conn_pid != os.getpid():
                self._connections = {}
                self._conn_pid = os.getpid()
            conn = self._connections.get(kind)
            if conn is None:
                conn = self._connections[kind] = factory()
            return conn

    @property
    def broker(self) -> Broker:
        """This process's broker connection (opened on first use)."""
        return self._connection(  # type: ignore[no-any-return]
            "broker",
            lambda: open_broker(self.broker_url, self.conf.broker_transport_options),
        )

    @property
    def backend(self) -> ResultBackend | None:
        """This process's result backend, or None when results are disabled."""
        backend = self._connections.get("backend")
        if backend is not None and self._conn_pid == os.getpid():
            return backend  # type: ignore[no-any-return]
        url = self.backend_url
        if url is None:
            return None
        expires = self.conf.result_expires
        if isinstance(expires, timedelta):
            expires = expires.total_seconds()
        return self._connection(  # type: ignore[no-any-return]
            "backend",
            lambda: open_backend(
                url,
                expires=float(expires) if expires else None,
                options=self.conf.result_backend_transport_options,
            ),
        )

    @property
    def accept_content(self) -> frozenset[str]:
        """Content types workers decode (from ``accept_content``)."""
        return accepted_content_types(self.conf.accept_content)

    def close(self) -> None:
        """Close this process's broker and backend connections."""
        with self._lock:
            for conn in self._connections.values():
                conn.close()
            self._connections = {}

    # -- sending --------------------------------------------------------------
    def send_task(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        task_id: str | None = None,
        expires: float | datetime | timedelta | None = None,
        queue: str | None = None,
        priority: int | None = None,
        headers: Mapping[str, Any] | None = None,
        ignore_result: bool | None = None,
        serializer: str | None = None,
        *,
        task: Task[Any, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send task ``name`` by name (no import of the task needed); return its result.

        Raises:
            SerializationError: an argument cannot be encoded (names the argument).
            BrokerConnectionError: the broker stayed unreachable (``task_publish_retry_policy``).
        """
        message, queue = self.build_task_message(
            name,
            args,
            kwargs,
            countdown,
            eta,
            task_id,
            expires,
            queue,
            priority,
            headers,
            ignore_result,
            serializer,
            task=task,
            **options,
        )
        backend = self._result_listener(message)
        if backend is None:
            self.publish(message, queue)
            return AsyncResult(message.id, app=self, task_name=name, ignored=message.ignore_result)
        # Subscribed before the publish, as Celery's on_task_call: the result's PUBLISH
        # then reaches a later get() without a subscribe round trip (see backend.watch).
        backend.watch((message.id,))
        try:
            self.publish(message, queue)
        except BaseException:
            backend.unwatch((message.id,))
            raise
        result: AsyncResult[Any] = AsyncResult(message.id, app=self, task_name=name)
        weakref.finalize(result, backend.unwatch, (message.id,))
        return result

    def _result_listener(self, message: TaskMessage) -> ResultBackend | None:
        """The backend to watch ``message``'s result on, or None (no result, or sent by a task).

        A task sending tasks does not watch: a worker never waits for their results
        (``get()`` inside a task is refused), and would only pile up subscriptions.
        """
        if message.ignore_result or _context.get_current_request() is not None:
            return None
        return self.backend

    def build_task_message(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        task_id: str | None = None,
        expires: float | datetime | timedelta | None = None,
        queue: str | None = None,
        priority: int | None = None,
        headers: Mapping[str, Any] | None = None,
        ignore_result: bool | None = None,
        serializer: str | None = None,
        *,
        task: Task[Any, Any] | None = None,
        **options: Any,
    ) -> tuple[TaskMessage, str]:
        """Build the message :meth:`send_task` would publish and its queue, without publishing.

        The canvas builds every member of a group this way and sends them all with
        one :meth:`publish_batch` (one broker round-trip instead of one per task).
        """
        task = task if task is not None else self.tasks.get(name)
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        task_id = task_id or new_id()
        if countdown is not None or expires is not None:
            now = datetime.now(UTC)
            if countdown is not None:
                eta = now + timedelta(seconds=float(countdown))
            if isinstance(expires, (int, float)):
                expires = now + timedelta(seconds=float(expires))
            if isinstance(expires, timedelta):
                expires = now + expires
        # Item access: a setting read as an attribute first fails the normal lookup (4x dearer).
        conf = self.conf
        routed = routing.route(conf["task_routes"], name, args, kwargs, options, task)
        queue = queue or routed.get("queue") or (task.queue if task else None)
        queue = queue or conf["task_default_queue"]
        if priority is None:
            priority = routed.get("priority", task.priority if task else None)
        if priority is None:
            priority = conf["task_default_priority"]
        hard = options.pop("time_limit", None) or (task.time_limit if task else None)
        soft = options.pop("soft_time_limit", None) or (task.soft_time_limit if task else None)
        if ignore_result is None:  # Celery's precedence: the call, the task, the app
            own = task.ignore_result if task is not None else None
            ignore_result = bool(own if own is not None else conf["task_ignore_result"])
        # The task running here (not an eager one) is the parent, and its root is inherited.
        request = _context.get_current_request()
        if request is not None and request.is_eager:
            request = None
        root_id = options.pop("root_id", None)
        parent_id = options.pop("parent_id", None)
        if request is not None:
            root_id = root_id or request.root_id or request.id
            parent_id = parent_id or request.id
        message = TaskMessage(
            task=name,
            id=task_id,
            args=args,
            kwargs=kwargs,
            eta=eta,
            expires=expires if isinstance(expires, datetime) else None,
            retries=int(options.pop("retries", 0)),
            timelimit=(hard, soft),
            root_id=root_id or task_id,
            parent_id=parent_id,
            group=options.pop("group_id", None),
            group_index=options.pop("group_index", None),
            shadow=options.pop("shadow", None),
            ignore_result=ignore_result,
            callbacks=_sig_dicts(options.pop("link", None)),
            errbacks=_sig_dicts(options.pop("link_error", None)),
            chain=_sig_dicts(options.pop("chain", None)),
            chord=_sig_dict(options.pop("chord", None)),
            priority=int(priority or 0),
            extra_headers=dict(headers or {}),
            serializer=serializer
            or (task.serializer if task and task.serializer else conf["task_serializer"]),
        )
        return message, queue

    def publish(self, message: TaskMessage, queue: str) -> None:
        """Encode ``message`` and publish it to ``queue``, retrying per the publish policy."""
        self.publish_batch([(message, queue)])

    def publish_batch(self, messages: Sequence[tuple[TaskMessage, str]]) -> None:
        """Encode task messages and publish them all in one round-trip (a group's members)."""
        outgoing = []
        before = bool(signals.before_task_publish.receivers)  # headers() only if someone looks
        for message, queue in messages:
            if before:
                signals.before_task_publish.send(
                    sender=message.task, headers=message.headers(), routing_key=queue
                )
            outgoing.append(
                OutgoingMessage(
                    queue=queue,
                    body=message.to_wire(queue),
                    priority=message.priority,
                    eta=message.eta.timestamp() if message.eta is not None else None,
                )
            )
        if outgoing:
            self.publish_many(outgoing)
        if signals.after_task_publish.receivers:
            for message, queue in messages:
                signals.after_task_publish.send(sender=message.task, routing_key=queue)

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish encoded messages in one round-trip, retrying connection errors.

        ``task_publish_retry_policy`` (Celery's keys): ``max_retries`` more attempts,
        sleeping ``interval_start`` then ``interval_step`` longer each time, at most
        ``interval_max``. A retry after a reply was lost may store a message twice
        (at-least-once, like every retry).
        """
        try:
            self.broker.publish_many(messages)
        except BrokerConnectionError as exc:
            self._publish_retrying(messages, exc)

    def _publish_retrying(self, messages: Sequence[OutgoingMessage], exc: Exception) -> None:
        """Retry a publish that failed with ``exc`` per ``task_publish_retry_policy``."""
        policy = dict(self.conf.task_publish_retry_policy or {})
        retries = int(policy.get("max_retries", 3)) if self.conf.task_publish_retry else 0
        interval = float(policy.get("interval_start", 0))
        started = time.monotonic()
        for attempt in range(1, retries + 2):
            if attempt > retries:
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                raise BrokerConnectionError(
                    f"cannot publish to the broker at {redact_url(self.broker_url)!r}: "
                    f"unreachable after {attempt} attempt(s) over "
                    f"{time.monotonic() - started:.1f}s (last error: {cause}). Start the "
                    "broker or fix broker_url; to wait longer, raise max_retries or "
                    f"interval_max in task_publish_retry_policy (now {policy})"
                ) from exc
            logger.warning(
                "Publish failed (%s); retry %d/%d in %.2fs", exc, attempt, retries, interval
            )
            time.sleep(interval)
            interval = min(
                interval + float(policy.get("interval_step", 0.2)),
                float(policy.get("interval_max", 0.2)),
            )
            try:
                self.broker.publish_many(messages)
                return
            except BrokerConnectionError as again:
                exc = again

    # -- results --------------------------------------------------------------
    def AsyncResult(self, task_id: str, **kwargs: Any) -> _result.AsyncResult[Any]:
        """Return the result handle of ``task_id``."""
        return _result.AsyncResult(task_id, app=self, **kwargs)

    def GroupResult(
        self, group_id: str, results: Sequence[_result.AsyncResult[Any]] = ()
    ) -> _result.GroupResult:
        """Return a group result handle."""
        return _result.GroupResult(group_id, results, app=self)

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
        from chard._utils.imports import load_entry_point

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


def _sig_dict(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else dict(value)


def _sig_dicts(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    return [d for d in (_sig_dict(v) for v in items) if d is not None] or None


#: The name Celery code imports; chard's own name for the same class.
Chard = Celery


def shared_task(*args: Any, **options: Any) -> Any:
    """Declare a task for whichever app is current (no app import, no circular import).

    Usable bare (``@shared_task``) or with options (``@shared_task(bind=True)``).
    """

    def decorate(func: Callable[..., Any]) -> Task[Any, Any]:
        base: type[Task[Any, Any]] = options.pop("base", None) or Task
        task = base(func, app=None, **options)
        _shared_tasks.append(task)
        app = _context.peek_current_app()
        if app is not None:
            app.tasks.setdefault(task.name, task)
        return task

    if len(args) == 1 and callable(args[0]) and not options:
        return decorate(args[0])
    return decorate
