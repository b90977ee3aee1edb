"""Canvas: signatures and the workflow primitives built from them.

A :class:`Signature` is a task name with arguments and options, plain data that
travels on the wire as Celery's dict shape (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``), so a signature passed as a task
argument or stored in a message round-trips between chard and Celery.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from chard import _context
from chard._utils.log import saferepr

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.result import AsyncResult


class Signature(dict[str, Any]):
    """A task invocation as data: ``add.s(2, 2)``.

    It subclasses ``dict`` only so that ``json.dumps(sig)`` and kombu-style
    serializers see Celery's shape, as Celery users expect; the API is the
    attributes and methods below, and the dict is kept in sync by them.
    """

    #: The registered name of the primitive for ``from_dict`` (None: a plain task).
    subtask_type: str | None = None

    def __init__(
        self,
        task: str | Any = None,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Celery | None = None,
        **extra_options: Any,
    ) -> None:
        name = task if isinstance(task, str) or task is None else task.name
        opts = dict(options or {})
        opts.update(extra_options)
        immutable = bool(opts.pop("immutable", immutable))
        super().__init__(
            task=name,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            options=opts,
            subtask_type=subtask_type if subtask_type is not None else type(self).subtask_type,
            immutable=immutable,
        )
        self._app = app if app is not None else getattr(task, "_app", None)

    # -- fields -----------------------------------------------------------------
    @property
    def task(self) -> str:
        """The task name."""
        return str(self["task"])

    name = task

    @property
    def args(self) -> tuple[Any, ...]:
        """Positional arguments (partial: more are prepended or appended when called)."""
        return tuple(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments."""
        return dict(self["kwargs"])

    @property
    def options(self) -> dict[str, Any]:
        """Sending options (queue, countdown, link, ...)."""
        return dict(self["options"])

    @property
    def immutable(self) -> bool:
        """Whether a parent's result is *not* prepended to the arguments."""
        return bool(self["immutable"])

    @property
    def id(self) -> str | None:
        """The task id, if one was set in the options."""
        task_id = self["options"].get("task_id")
        return str(task_id) if task_id is not None else None

    @property
    def app(self) -> Celery:
        """The app to send with: the one given, else the current app."""
        return self._app if self._app is not None else _context.get_current_app()

    # -- building ---------------------------------------------------------------
    def clone(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """Return a copy with arguments added (partial application) and options merged."""
        new = copy.deepcopy(self)
        new._app = self._app
        if args:
            new["args"] = tuple(args) + self.args if not self.immutable else self.args
        if kwargs and not self.immutable:
            new["kwargs"] = {**self.kwargs, **kwargs}
        if options:
            new["options"] = {**self.options, **options}
        return new

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Set options in place (``sig.set(queue='hipri')``); returns the signature."""
        if immutable is not None:
            self["immutable"] = immutable
        self["options"].update(options)
        return self

    def link(self, callback: Signature) -> Signature:
        """Add a signature to run with this task's result when it succeeds."""
        self["options"].setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Signature) -> Signature:
        """Add a signature to run with this task's id when it fails."""
        self["options"].setdefault("link_error", []).append(errback)
        return errback

    def to_dict(self) -> dict[str, Any]:
        """Return Celery's wire shape (plain dicts and lists all the way down)."""
        plain: dict[str, Any] = _plain(self)
        return plain

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: Celery | None = None) -> Signature:
        """Rebuild a signature (or canvas primitive) from its dict shape."""
        if isinstance(data, Signature):
            return data
        kind = data.get("subtask_type")
        target = _PRIMITIVES.get(kind) if kind else None
        if target is not None:
            return target.from_dict(data, app=app)
        return Signature(
            data["task"],
            data.get("args") or (),
            data.get("kwargs") or {},
            options=data.get("options") or {},
            immutable=bool(data.get("immutable", False)),
            app=app,
        )

    # -- sending ----------------------------------------------------------------
    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send the task: extra args are prepended (unless immutable), options merged."""
        sig = self.clone(args, kwargs, **options) if (args or kwargs or options) else self
        app = sig.app
        task = app.tasks.get(sig.task)
        opts = sig.options
        if task is not None and app.conf.task_always_eager:
            eager: AsyncResult[Any] = task.apply(sig.args, sig.kwargs, **opts)
            return eager
        return app.send_task(sig.task, sig.args, sig.kwargs, task=task, **opts)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        """Send with extra arguments: ``add.s(2).delay(8)`` runs ``add(8, 2)``."""
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task inline with the signature's arguments (Celery's behaviour)."""
        sig = self.clone(args, kwargs)
        return sig.app.tasks[sig.task](*sig.args, **sig.kwargs)

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run inline as a worker would; returns an eager result."""
        sig = self.clone(args, kwargs, **options)
        return sig.app.tasks[sig.task].apply(sig.args, sig.kwargs, **sig.options)

    def __repr__(self) -> str:
        parts = [saferepr(a) for a in self.args]
        parts += [f"{k}={saferepr(v)}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)})"

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        new = type(self).__new__(type(self))
        dict.update(new, copy.deepcopy(dict(self), memo))
        new._app = self._app
        return new

    def __reduce__(self) -> Any:
        return (Signature.from_dict, (self.to_dict(),))


def _plain(value: Any) -> Any:
    """Turn signatures (and tuples) inside ``value`` into plain JSON-shaped data."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


#: Canvas primitives by ``subtask_type``, for :meth:`Signature.from_dict`.
_PRIMITIVES: dict[str, type[Signature]] = {}


def signature(
    varies: str | Mapping[str, Any] | Any,
    args: Iterable[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    app: Celery | None = None,
    **options: Any,
) -> Signature:
    """Return a signature from a task name, a task, or a signature dict."""
    if isinstance(varies, Mapping) and not isinstance(varies, str):
        return Signature.from_dict(varies, app=app).clone()
    return Signature(varies, args, kwargs, options=options, app=app)


subtask = signature
