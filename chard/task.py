"""Tasks: ``Task[P, R]`` and the request context a bound task reads as ``self.request``.

A task is a real object the moment it is decorated (no proxies, no per-app classes
built with ``type()``): ``@app.task`` makes an instance of ``Task`` (or of
``base=``) holding the function. Sending goes ``delay -> apply_async ->
app.send_task -> broker.publish``.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from chard import _context, states
from chard import result as _result
from chard.exceptions import Ignore, MaxRetriesExceededError, Retry
from chard.request import Context as Context  # re-exported: Celery's chard.task.Context
from chard.result import AsyncResult, EagerResult
from chard.validation import ArgumentCheck, pydantic_wrapper

if TYPE_CHECKING:
    from chard import canvas
    from chard.app import Celery
    from chard.canvas import Signature

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


_EMPTY_REQUEST = Context()
#: Not looked up yet (the cached argument check is None for a callable without a signature).
_UNCHECKED: Any = object()


def exponential_backoff(
    factor: float, retries: int, maximum: float, full_jitter: bool = False
) -> float:
    """Return Celery's backoff: ``factor * 2**retries`` capped at ``maximum``, maybe jittered."""
    countdown = min(maximum, factor * (2**retries))
    if full_jitter:
        countdown = random.randrange(int(countdown) + 1)
    return max(0.0, float(countdown))


#: Options Celery users misspell, and what they meant (difflib catches the rest).
_MEANT = {
    "auto_retry": "autoretry_for",
    "autoretry": "autoretry_for",
    "retry_for": "autoretry_for",
    "retry_on": "autoretry_for",
    "max_retry": "max_retries",
    "retries": "max_retries",
    "retires": "max_retries",
    "ack_late": "acks_late",
    "timeout": "time_limit",
}


def _warn_unknown_option(key: str, task_name: str | None) -> None:
    """Log a warning when ``key`` looks like a misspelt task option; stay quiet otherwise.

    Celery keeps any unknown option as a task attribute (libraries add their own), so an
    unknown option is not an error; but a typo (seed 002's ``auto_retry=``) silently
    disables what the user asked for, so a likely one is named with its correct spelling.
    """
    known = [n for n in dir(Task) if not n.startswith("_") and not callable(getattr(Task, n))]
    meant = _MEANT.get(key) or next(iter(difflib.get_close_matches(key, known, 1, 0.75)), None)
    if meant is not None:
        logger.warning(
            "task %r: unknown option %r is kept as an attribute and does nothing; did you mean %r?",
            task_name,
            key,
            meant,
        )


class Task(Generic[P, R]):
    """A unit of work with Celery's attributes; subclass it for class-based tasks."""

    #: Registered name; defaults to ``module.function``.
    name: str = ""
    typing: bool = True
    max_retries: int | None = 3
    default_retry_delay: float = 180.0
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: Mapping[str, Any] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    ignore_result: bool | None = None
    track_started: bool | None = None
    acks_late: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    serializer: str | None = None
    queue: str | None = None
    priority: int | None = None
    rate_limit: str | None = None
    #: Celery's ``shared=``: whether other apps get the task too (chard's are per app, so
    #: it is kept for compatibility and changes nothing).
    shared: bool = True
    #: Celery's ``trail``: store what the task sent while it ran as its ``children``.
    trail: bool = True
    #: Validate arguments into pydantic models and dump a returned model (see
    #: :mod:`chard.validation`); the other three tune it, as Celery's.
    pydantic: bool = False
    pydantic_strict: bool = False
    pydantic_context: dict[str, Any] | None = None
    pydantic_dump_kwargs: dict[str, Any] | None = None
    expires: float | datetime | None = None
    bind: bool = False

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        app: Celery | None = None,
        name: str | None = None,
        **options: Any,
    ) -> None:
        self._fn = fn
        self._app = app
        for key, value in options.items():
            if not hasattr(type(self), key):
                _warn_unknown_option(key, name or getattr(fn, "__qualname__", None))
            setattr(self, key, value)  # unknown ones too: Celery keeps them as attributes
        if name:
            self.name = name
        elif fn is not None:
            self.name = f"{fn.__module__}.{fn.__qualname__}"
        elif not self.name:
            self.name = f"{type(self).__module__}.{type(self).__qualname__}"
        if fn is not None and self.pydantic:
            fn = self._fn = pydantic_wrapper(
                fn,
                self.name,
                self.pydantic_strict,
                self.pydantic_context,
                self.pydantic_dump_kwargs,
            )
        if fn is not None:
            self.__doc__ = fn.__doc__
            self.__wrapped__ = fn
            self.__module__ = fn.__module__
            self.__qualname__ = fn.__qualname__
        self.is_async = inspect.iscoroutinefunction(fn or self.run)

    # -- identity -------------------------------------------------------------
    @property
    def app(self) -> Celery:
        """The app this task belongs to (for ``shared_task``: the current app, when used)."""
        return self._app if self._app is not None else _context.get_current_app()

    def bind_app(self, app: Celery) -> None:
        """Attach the task to ``app`` (done by ``app.task`` and ``register_task``)."""
        self._app = app

    def option(self, name: str) -> Any:
        """Return this task's ``name`` option, or the app's ``task_<name>`` setting if unset.

        Celery's precedence for options such as ``acks_late``, ``track_started`` and
        ``ignore_result``: the task's own value wins, ``None`` defers to the app.
        """
        value = getattr(self, name)
        return value if value is not None else self.app.conf[f"task_{name}"]

    @property
    def request(self) -> Context:
        """The invocation context of the running task (empty when called directly)."""
        request = _context.get_current_request()
        return request if request is not None else _EMPTY_REQUEST

    @property
    def backend(self) -> Any:
        """The app's result backend (or None)."""
        return self.app.backend

    def __repr__(self) -> str:
        return f"<@task: {self.name} of {self.app.main if self._app else 'current app'}>"

    # -- running --------------------------------------------------------------
    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The task body; the decorated function, or override it in a class-based task."""
        if self._fn is None:
            raise NotImplementedError(f"task {self.name!r} defines no run() method")
        if self.bind:
            return self._fn(self, *args, **kwargs)
        return self._fn(*args, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task inline in this process, now (no broker, no result stored)."""
        outer = _context.get_current_request()
        if outer is None:
            result: R = self.run(*args, **kwargs)
            return result
        # Called from inside another task: give this call its own request (its arguments,
        # called_directly), as Celery does, keeping the outer task's lineage for what it sends.
        direct = Context(
            id=outer.id,
            args=tuple(args),
            kwargs=dict(kwargs),
            is_eager=outer.is_eager,
            called_directly=True,
            hostname=outer.hostname,
            root_id=outer.root_id,
            parent_id=outer.parent_id,
            children=outer.children,  # what it sends is the worker task's trail (Celery's)
        )
        token = _context.push_request(direct, self)
        try:
            nested: R = self.run(*args, **kwargs)
            return nested
        finally:
            _context.pop_request(token)

    def check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Refuse arguments the task's function cannot take, before sending (Celery's ``typing``).

        Raises:
            TypeError: naming the task, its parameters and the fix; never with ``typing=False``.
        """
        if not self.typing:
            return
        check = self.__dict__.get("_argument_check_cache", _UNCHECKED)
        if check is _UNCHECKED:
            check = self._argument_check()
        problem = check.error(args, kwargs) if check is not None else None
        if problem is not None:
            assert check is not None
            raise TypeError(
                f"task {self.name!r} takes {check.describe()} but was called with "
                f"args={args!r} kwargs={dict(kwargs)!r}: {problem}; fix the call, or pass "
                "typing=False to the task to skip this check"
            )

    def _argument_check(self) -> ArgumentCheck | None:
        """The check of the parameters a caller passes (not a bound task's ``self``), cached."""
        if "_argument_check_cache" in self.__dict__:
            cached: ArgumentCheck | None = self.__dict__["_argument_check_cache"]
            return cached
        try:
            header = inspect.signature(self._fn if self._fn is not None else self.run)
        except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
            check = None
        else:
            if self._fn is not None and self.bind:
                header = header.replace(parameters=list(header.parameters.values())[1:])
            check = ArgumentCheck(header)
        self.__dict__["_argument_check_cache"] = check
        return check

    # -- sending --------------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; shortcut for ``apply_async(args, kwargs)``."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task to a worker (or run it inline with ``task_always_eager``).

        Options are Celery's: ``countdown``, ``eta``, ``expires``, ``queue``, ``priority``,
        ``task_id``, ``headers``, ``ignore_result``, ``serializer``, ``link``,
        ``link_error``, ``time_limit``, ``soft_time_limit``, ``shadow``.
        """
        args = tuple(args) if args else ()
        self.check_arguments(args, kwargs or {})
        app = self.app
        if app.conf["task_always_eager"]:
            return self.apply(args, kwargs, **options)
        result: AsyncResult[R] = app.send_task(self.name, args, kwargs, task=self, **options)
        return result

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Run the task inline, as a worker would, and return an already-ready result."""
        # Through the app: running a body is chard.execution's, which imports this module.
        return self.app._apply_eagerly(self, tuple(args or ()), dict(kwargs or {}), options)

    # -- inside a task --------------------------------------------------------
    def retry(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Schedule this task to run again, and raise :class:`Retry` to end this run.

        Raises:
            Retry: always when ``throw`` (the worker records state RETRY).
            MaxRetriesExceededError: retries used up and no ``exc`` given (else ``exc``).
        """
        request = self.request
        if request.called_directly:
            if exc is not None:
                raise exc
            raise RuntimeError(f"task {self.name!r} called directly cannot be retried")
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"can't retry {self.name}[{request.id}] args:{request.args} "
                f"kwargs:{request.kwargs}: max_retries={limit} reached"
            )
        if eta is None and countdown is None:
            countdown = self.default_retry_delay
        retry = Retry(exc=exc, when=countdown if eta is None else eta)
        if request.is_eager:
            # apply() runs the next attempt with this request's arguments: use the new ones.
            if args is not None:
                request.args = tuple(args)
            if kwargs is not None:
                request.kwargs = dict(kwargs)
        else:
            self.app.send_task(
                self.name,
                tuple(args) if args is not None else request.args,
                dict(kwargs) if kwargs is not None else request.kwargs,
                task=self,
                task_id=request.id,
                retries=request.retries + 1,
                countdown=countdown,
                eta=eta,
                root_id=request.root_id,
                parent_id=request.parent_id,
                group_id=request.group,
                group_index=request.group_index,
                chain=request.chain,
                chord=request.chord,
                link=request.callbacks,
                link_error=request.errbacks,
                queue=request.delivery_info.get("routing_key"),
                headers={k: v for k, v in request.headers.items() if not k.startswith("chard_")},
                **options,
            )
        if throw:
            raise retry
        return retry

    def replace(self, sig: Signature[Any]) -> Any:
        """Replace this task by ``sig`` (a signature, chain or group), keeping its id and place.

        The replacement inherits the task id, its links and errbacks, its chord
        membership and the rest of its chain (see :mod:`chard.canvas.replace`); this run
        ends at once, so write ``return self.replace(...)``.

        Returns:
            The replacement's value, when running eagerly (``apply()``).

        Raises:
            Ignore: always in a worker: the replacement now owns the task's result.
            ImproperlyConfigured: ``sig`` is part of a chord already, or an empty chain.
        """
        from chard.canvas.replace import replacement

        return self.on_replace(replacement(self.app, self.request, sig))

    def on_replace(self, sig: Signature[Any]) -> Any:
        """Send the replacement (run it inline when eager); override to observe it.

        An override must return ``super().on_replace(sig)``, as in Celery.
        """
        if self.request.is_eager:
            return sig.apply().get()
        sig.apply_async()
        raise Ignore("Replaced by new task")

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kw: Any
    ) -> None:
        """Store a custom state (e.g. ``PROGRESS``) with ``meta`` for this or another task."""
        task_id = task_id or self.request.id
        if task_id is None:
            raise RuntimeError("update_state() outside a running task needs task_id=")
        backend = self.app.backend
        if backend is not None:
            backend.store_result(task_id, meta, state or states.PENDING)

    def send_event(self, type_: str, retry: bool = True, **fields: Any) -> None:
        """Send a custom monitoring event about the running task (Celery's, for Flower).

        It carries ``uuid`` (the running task's id) and ``fields``, and goes out whether or
        not the worker sends task events, as in Celery: through the worker's dispatcher
        (its node name), else this process's client one. ``retry`` is accepted, unused.
        """
        events = self.app.events
        dispatcher = events.task_dispatcher or events.client_dispatcher()
        dispatcher.publish(type_, {"uuid": self.request.id, **fields})

    def AsyncResult(self, task_id: str) -> _result.AsyncResult[R]:
        """Return the result handle for ``task_id`` of this task."""
        return _result.AsyncResult(task_id, app=self.app, task_name=self.name)

    # -- hooks for class-based tasks (no-ops) ----------------------------------
    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Called in the worker before the body runs."""

    def on_success(
        self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Called after the body returned."""

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Called after the body raised."""

    def on_retry(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Called when the task is to be retried."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Called after the task finished, whatever the outcome."""

    # -- canvas ---------------------------------------------------------------
    # A signature carries the task's result type but not its parameters: its arguments
    # may be partial (``add.s(2)``, completed by a chain's previous result), so mypy
    # checks them only when the task is called or sent directly.
    def signature(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature[R]:
        """Return a signature of this task with these arguments and options."""
        from chard.canvas import Signature

        return Signature(self.name, args, kwargs, options=options, app=self.app)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """Return a signature of this task (partial arguments allowed)."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """Return an immutable signature: the parent's result is not prepended."""
        return self.signature(args, kwargs, immutable=True)

    def map(self, it: Iterable[Any]) -> Signature[list[R]]:
        """Return a signature that calls this task for every item (one message)."""
        from chard.canvas import xmap

        return xmap(self.s(), it)

    def starmap(self, it: Iterable[Any]) -> Signature[list[R]]:
        """Like :meth:`map` with each item unpacked as the arguments."""
        from chard.canvas import xstarmap

        return xstarmap(self.s(), it)

    def chunks(self, it: Iterable[Any], n: int) -> canvas.chunks:
        """Split ``it`` into ``n``-sized chunks, each one message running :meth:`starmap`.

        Sending it returns a :class:`~chard.result.GroupResult` (one member per chunk).
        """
        from chard.canvas import chunks

        return chunks(self.s(), it, n)
