"""Signatures: a task invocation as data, and the helpers every primitive shares.

A :class:`Signature` is a task name with arguments and options, plain data that
travels on the wire as Celery's dict shape (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``), so a signature passed as a task
argument or stored in a message round-trips between chard and Celery.

The primitives (:mod:`chard.canvas.primitives`, :mod:`chard.canvas.maps`) are
signatures too, stored in Celery's shape so a Celery worker or client can rebuild
them: each registers its ``subtask_type`` here (:func:`register`), which
``Signature.from_dict`` and ``a | b`` look up, so this module never imports them.

Sending is split in two steps so that nesting costs nothing: ``freeze()`` fixes
every task id up front (so a chain can return the last step's result before the
worker sends it), and ``_build()`` appends the messages that start the canvas to
an outbox that ``apply_async`` publishes at once. Eager mode (``apply()``, and
``task_always_eager``) runs the same structure inline.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, cast, overload

from chard import _context, states
from chard._utils.log import saferepr
from chard.protocol.ids import new_id
from chard.result import AsyncResult, EagerResult, GroupResult
from chard.sending import RoutedMessage, SendOptions, build_message

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.task import Task

R = TypeVar("R")

#: Messages built while sending a canvas, published together in one batch.
Outbox = list[RoutedMessage]
#: What sending a canvas returns: one task's result, or a group's.
Result = AsyncResult[Any] | GroupResult

#: Options that belong to one message only, not to every step of a chain.
_STEP_LOCAL = frozenset(
    {"task_id", "parent_id", "root_id", "countdown", "eta", "expires", "chain", "chord"}
    | {"group_id", "group_index", "link", "link_error"}
)


class Signature(dict[str, Any], Generic[R]):
    """A task invocation as data: ``add.s(2, 2)``.

    It subclasses ``dict`` only so that ``json.dumps(sig)`` and kombu-style
    serializers see Celery's shape, as Celery users expect; the API is the
    attributes and methods below, and the dict is kept in sync by them.

    ``R`` is the task's return type, for type checkers only (``add.s(1, 2)`` is a
    ``Signature[int]``, so its ``delay()`` is an ``AsyncResult[int]``); ``Generic``
    adds no state and no ``__new__``, so the dict, pickling and ``from_dict`` are
    unchanged. The primitives are ``Signature[Any]``: a group or a chord is not one
    task's value.
    """

    #: The registered name of the primitive for ``from_dict`` (None: a plain task).
    subtask_type: str | None = None

    # Two overloads so that a signature of a task object carries its result type, and
    # one built from a name is Signature[Any] (not an unsolved type that mypy asks
    # the caller to annotate).
    @overload
    def __init__(
        self: Signature[R],
        task: Task[Any, R],
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Celery | None = None,
        **extra_options: Any,
    ) -> None: ...

    @overload
    def __init__(
        self: Signature[Any],
        task: str | None = None,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Celery | None = None,
        **extra_options: Any,
    ) -> None: ...

    def __init__(
        self,
        task: str | Task[Any, Any] | None = None,
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
    # Each field is the dict's own item, readable and settable as an attribute, as in
    # Celery (``sig.args = (1, 2)``, ``sig.options['queue'] = 'hipri'``).
    @property
    def task(self) -> str:
        """The task name."""
        return str(self["task"])

    @task.setter
    def task(self, value: str) -> None:
        self["task"] = value

    name = task

    @property
    def args(self) -> tuple[Any, ...]:
        """Positional arguments (partial: more are prepended when called, as in Celery)."""
        return tuple(self["args"])

    @args.setter
    def args(self, value: Iterable[Any]) -> None:
        self["args"] = tuple(value)

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments (the signature's own dict: changes to it stay)."""
        kwargs: dict[str, Any] = self["kwargs"]
        return kwargs

    @kwargs.setter
    def kwargs(self, value: Mapping[str, Any]) -> None:
        self["kwargs"] = dict(value)

    @property
    def options(self) -> dict[str, Any]:
        """Sending options: queue, countdown, link, ... (the signature's own dict)."""
        options: dict[str, Any] = self["options"]
        return options

    @options.setter
    def options(self, value: Mapping[str, Any]) -> None:
        self["options"] = dict(value)

    @property
    def immutable(self) -> bool:
        """Whether a parent's result is *not* prepended to the arguments."""
        return bool(self["immutable"])

    @immutable.setter
    def immutable(self, value: bool) -> None:
        self["immutable"] = bool(value)

    @property
    def id(self) -> str | None:
        """The task id, if one was set in the options (see :meth:`freeze`)."""
        task_id = self["options"].get("task_id")
        return str(task_id) if task_id is not None else None

    @property
    def app(self) -> Celery:
        """The app to send with: the one given, else the current app."""
        return self._app if self._app is not None else _context.get_current_app()

    @property
    def type(self) -> Any:
        """The registered task object (Celery's ``sig.type``)."""
        return self.app.tasks[self.task]

    # -- building ---------------------------------------------------------------
    def clone(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Self:
        """Return a copy with arguments added (partial application) and options merged.

        New positional arguments are prepended and new keyword arguments win, as in
        Celery (``add.s(2).delay(8)`` runs ``add(8, 2)``); immutable signatures keep theirs.
        """
        new = copy.deepcopy(self)
        new._app = self._app
        if args and not self.immutable:
            new["args"] = tuple(args) + self.args
        if kwargs and not self.immutable:
            new["kwargs"] = {**self.kwargs, **kwargs}
        if options:
            new["options"] = {**self.options, **options}
        return new

    def set(self, immutable: bool | None = None, **options: Any) -> Self:
        """Set options in place (``sig.set(queue='hipri')``); returns the signature."""
        if immutable is not None:
            self["immutable"] = immutable
        self["options"].update(options)
        return self

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        """Add a signature to run with this task's result when it succeeds (once: a
        signature already linked is not added again, as in Celery)."""
        _add_once(self["options"].setdefault("link", []), callback)
        return callback

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        """Add a signature to run when this task fails (see :mod:`chard.canvas.errbacks`)."""
        _add_once(self["options"].setdefault("link_error", []), errback)
        return errback

    def on_error(self, errback: Signature[Any]) -> Self:
        """Link ``errback`` (as :meth:`link_error`) and return this signature, for chaining.

        ``add.s(2, 2).on_error(report.s()).delay()`` sends ``add``, not the errback.
        """
        self.link_error(errback)
        return self

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Mapping[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Result:
        """Fix this task's id (and group membership) in place; return its result handle.

        Idempotent: an id already set is kept, so a canvas frozen by the client and
        sent later by a worker keeps the ids the client's result objects point at.
        """
        opts = self["options"]
        if _id is not None:
            opts["task_id"] = _id
        task_id = opts.setdefault("task_id", new_id())
        fields = {"group_id": group_id, "group_index": group_index, "chord": chord}
        fields.update(root_id=root_id, parent_id=parent_id)
        opts.update({k: v for k, v in fields.items() if v is not None})
        return AsyncResult(task_id, app=self.app, task_name=self.task)

    def to_dict(self) -> dict[str, Any]:
        """Return Celery's wire shape (plain dicts and lists all the way down)."""
        plain: dict[str, Any] = _plain(self)
        return plain

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: Celery | None = None) -> Signature[Any]:
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
    def _eager(self, app: Celery) -> bool:
        """Whether ``apply_async`` runs inline (``task_always_eager`` and a local task)."""
        return bool(app.conf.task_always_eager) and self.task in app.tasks

    def _build(
        self,
        args: Iterable[Any],
        kwargs: Mapping[str, Any] | None,
        options: dict[str, Any],
        out: Outbox,
    ) -> Result:
        """Append the messages that start this canvas to ``out``; return its result handle."""
        sig = self.clone(args, kwargs, **options)
        result = sig.freeze()
        app, task = sig.app, sig.app.tasks.get(sig.task)
        if task is not None:
            task.check_arguments(sig.args, sig.kwargs)
        out.append(
            build_message(app, sig.task, sig.args, sig.kwargs, SendOptions.of(sig.options), task)
        )
        return result

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send: extra args are prepended (unless immutable), kwargs and options merged.

        Returns an :class:`AsyncResult` (a :class:`GroupResult` for a group, whose
        class declares that type); every message of the canvas goes out in one broker
        round-trip.
        """
        app = self.app
        if self._eager(app):
            eager: AsyncResult[R] = self.apply(args, kwargs, **options)
            return eager
        out: Outbox = []
        result = self._build(tuple(args or ()), kwargs, dict(options), out)
        app.publish(out)
        # One task's result here; a group or chunks (GroupResult) redeclares the type.
        return cast("AsyncResult[R]", result)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """Send with extra arguments: ``add.s(2).delay(8)`` runs ``add(8, 2)``."""
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        """Call the task inline with the signature's arguments (Celery's behaviour)."""
        sig = self.clone(args, kwargs)
        value: R = sig.app.tasks[sig.task](*sig.args, **sig.kwargs)
        return value

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run inline as a worker would, links included; returns an eager result."""
        sig = self.clone(args, kwargs, **options)
        opts = sig["options"]
        links = _as_list(opts.pop("link", None))
        opts["link_error"] = _as_list(opts.pop("link_error", None))  # run by the task's end
        for key in ("chain", "chord", "group_id", "group_index"):
            opts.pop(key, None)
        result: EagerResult[Any] = sig.app.tasks[sig.task].apply(sig.args, sig.kwargs, **opts)
        if result.state == states.SUCCESS:
            for callback in links:
                maybe_signature(callback, sig._app).apply((result.result,))
        return result

    # -- composing --------------------------------------------------------------
    def __or__(self, other: Any) -> Signature[Any]:  # type: ignore[override]  # dict's | is merge
        """``a | b``: a chain (``group | task`` becomes a chord when sent)."""
        if isinstance(other, Signature):
            # chain(*tasks, app=...) is the primitive's own constructor, not Signature's.
            make_chain: Any = _PRIMITIVES["chain"]
            linked: Signature[Any] = make_chain(self, other, app=self._app)
            return linked
        return NotImplemented

    if TYPE_CHECKING:
        # Declared, not defined: at runtime dict's own ``__ror__`` still merges
        # ``{...} | sig``. Without this, mypy takes ``sig | other_sig`` to dict's
        # ``__ror__`` (a dict) whenever the right side is a subtype of the left, such as
        # ``Signature[int]`` after ``Signature[Any]``; Python calls ``__or__`` there.
        def __ror__(self, value: dict[Any, Any], /) -> dict[Any, Any]: ...

    def __invert__(self) -> R:
        """``~sig``: send and wait for the result (Celery's shortcut)."""
        return self.apply_async().get()

    def __repr__(self) -> str:
        parts = [saferepr(a) for a in self.args]
        parts += [f"{k}={saferepr(v)}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)})"

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
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


def _add_once(links: list[Any], sig: Any) -> None:
    if sig not in links:
        links.append(sig)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _partial(args: Iterable[Any] | None, sig: Signature[Any]) -> tuple[Any, ...]:
    """A primitive's own args are partial arguments, put after the new ones."""
    if sig.immutable:
        return sig.args
    return tuple(args or ()) + sig.args


def _attach_parent(result: Result, parent: Result | None) -> None:
    """Hang ``parent`` above the oldest ancestor of ``result`` (``res.parent`` walks a chain)."""
    node: Result = result
    while node.parent is not None:
        node = node.parent
    if node is not parent:
        node.parent = parent


def _failed(result: Result) -> bool:
    if isinstance(result, GroupResult):
        return result.failed()
    return result.state in states.PROPAGATE_STATES


def _app_of(sigs: Iterable[Signature[Any]], app: Celery | None) -> Celery | None:
    return app if app is not None else next((s._app for s in sigs if s._app is not None), None)


#: Canvas primitives by ``subtask_type``, for :meth:`Signature.from_dict` and ``|``.
_PRIMITIVES: dict[str, type[Signature[Any]]] = {}


def register(*kinds: type[Signature[Any]]) -> None:
    """Make primitives known by their ``subtask_type`` (Celery's ``Signature.register_type``).

    The primitives subclass :class:`Signature` and so import this module; registering
    them here, instead of importing them back, keeps the import graph one-way.
    """
    for kind in kinds:
        assert kind.subtask_type is not None, kind
        _PRIMITIVES[kind.subtask_type] = kind


def signature(
    varies: str | Mapping[str, Any] | Any,
    args: Iterable[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    app: Celery | None = None,
    **options: Any,
) -> Signature[Any]:
    """Return a signature from a task name, a task, or a signature dict."""
    if isinstance(varies, Mapping) and not isinstance(varies, str):
        sig = Signature.from_dict(varies, app=app).clone()
        if app is not None:
            sig._app = app
        return sig
    return Signature(varies, args, kwargs, options=options, app=app)


subtask = signature


def maybe_signature(d: Any, app: Celery | None = None, clone: bool = False) -> Any:
    """Return ``d`` as a Signature (dicts are rebuilt; None stays None)."""
    if d is None:
        return None
    if isinstance(d, Signature):
        sig = d.clone() if clone else d
    elif isinstance(d, Mapping):
        sig = Signature.from_dict(d, app=app)
    else:
        raise TypeError(f"expected a signature or a signature dict, got {d!r}")
    if app is not None and sig._app is None:
        sig._app = app
    return sig


def _signatures(tasks: tuple[Any, ...], app: Celery | None) -> list[Signature[Any]]:
    """Accept ``f(a, b)``, ``f([a, b])`` and ``f(generator)``, as Celery does."""
    if len(tasks) == 1 and not isinstance(tasks[0], Mapping) and isinstance(tasks[0], Iterable):
        tasks = tuple(tasks[0])
    return [maybe_signature(t, app) for t in tasks]
