"""Map, starmap and chunks: one message running a task over many items.

The signatures (:class:`xmap`, :class:`xstarmap`, :class:`chunks`) and the built-in
tasks behind them. Celery implements these canvas primitives as tasks registered in
every app under ``celery.map``, ``celery.starmap`` and ``celery.chunks``; chard
registers tasks with the same names and arguments, so a message sent by either side
runs on the other. Each runs the wrapped task *inline*, item by item, inside one
message: that is the point of map/chunks (one message for many small calls). In
Celery's dict shape they are ``celery.map``/``celery.starmap`` with
``kwargs.task``/``kwargs.it``, and ``celery.chunks`` with ``kwargs.n`` too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from chard._utils.log import saferepr
from chard.canvas.primitives import group
from chard.canvas.signature import Outbox, Result, Signature, maybe_signature, register, signature

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.result import GroupResult


def _items(it: Iterable[Any]) -> list[Any]:
    """Materialize ``it`` as it will look after the wire: ranges, iterators, tuples -> lists."""
    return [list(x) if isinstance(x, (range, Iterator, tuple)) else x for x in it]


class xmap(Signature[list[Any]]):  # lower-case: Celery's name
    """Call a task for every item, all in one message (``task.map(items)``)."""

    subtask_type = "xmap"
    _task_name = "celery.map"

    def __init__(
        self, task: Any, it: Iterable[Any], app: Celery | None = None, **options: Any
    ) -> None:
        sig = maybe_signature(task, app)
        fields = {"task": sig, "it": _items(it)}
        super().__init__(self._task_name, (), fields, options, immutable=True, app=app or sig._app)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: Celery | None = None) -> Signature[Any]:
        kw = data["kwargs"]
        return cls(kw["task"], kw["it"], app=app, **(data.get("options") or {}))

    def __repr__(self) -> str:
        kw = self["kwargs"]
        return f"[{kw['task'].task}(x) for x in {saferepr(kw['it'])}]"


class xstarmap(xmap):  # lower-case: Celery's name
    """Call a task for every item, unpacking each item as arguments (``task.starmap``)."""

    subtask_type = "xstarmap"
    _task_name = "celery.starmap"

    def __repr__(self) -> str:
        kw = self["kwargs"]
        return f"[{kw['task'].task}(*x) for x in {saferepr(kw['it'])}]"


class chunks(Signature[Any]):  # lower-case: Celery's name
    """Split items into chunks of ``n``; each chunk is one ``xstarmap`` message of a group."""

    subtask_type = "chunks"

    if TYPE_CHECKING:
        # Sending chunks sends a group (one member per chunk): a GroupResult, not an
        # AsyncResult, though chunks is a Signature at runtime (Celery's shape).
        def apply_async(  # type: ignore[override]
            self,
            args: Iterable[Any] | None = None,
            kwargs: Mapping[str, Any] | None = None,
            **options: Any,
        ) -> GroupResult: ...

        def delay(self, *args: Any, **kwargs: Any) -> GroupResult: ...  # type: ignore[override]

    def __init__(
        self, task: Any, it: Iterable[Any], n: int, app: Celery | None = None, **options: Any
    ) -> None:
        if int(n) < 1:
            raise ValueError(f"chunks() size n must be >= 1, got {n!r}")
        sig = maybe_signature(task, app)
        fields = {"task": sig, "it": _items(it), "n": int(n)}
        super().__init__("celery.chunks", (), fields, options, immutable=True, app=app or sig._app)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: Celery | None = None) -> Signature[Any]:
        kw = data["kwargs"]
        return cls(kw["task"], kw["it"], kw["n"], app=app, **(data.get("options") or {}))

    def group(self) -> group:
        """Return the group of ``xstarmap`` signatures, one per chunk."""
        kw = self["kwargs"]
        items = iter(kw["it"])
        parts = iter(lambda: list(itertools.islice(items, kw["n"])), [])
        return group([xstarmap(kw["task"], part, app=self._app) for part in parts], app=self._app)

    def _build(
        self,
        args: Iterable[Any],
        kwargs: Mapping[str, Any] | None,
        options: dict[str, Any],
        out: Outbox,
    ) -> Result:
        return self.group()._build(args, kwargs, {**self.options, **options}, out)

    def _eager(self, app: Celery) -> bool:
        return bool(app.conf.task_always_eager)

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Run every chunk inline."""
        result: Result = self.group().apply(args, kwargs, **{**self.options, **options})
        return result

    def __call__(self, **options: Any) -> GroupResult:
        """Send the chunks as a group; returns its GroupResult."""
        return self.apply_async(**options)

    def __repr__(self) -> str:
        kw = self["kwargs"]
        return f"{kw['task'].task}.chunks({saferepr(kw['it'])}, {kw['n']})"


register(xmap, xstarmap, chunks)

#: Names of the built-in tasks; ``TaskRegistry.user_tasks()`` leaves them out.
BUILTIN_NAMES = ("celery.map", "celery.starmap", "celery.chunks")


def register_builtins(app: Celery) -> None:
    """Register the canvas built-in tasks in ``app`` (called by ``Celery.__init__``)."""

    def xmap(task: Mapping[str, Any], it: Iterable[Any]) -> list[Any]:
        """Call ``task`` once per item of ``it`` (``task.map``)."""
        run = _task_of(app, task)
        return [run(item) for item in it]

    def xstarmap(task: Mapping[str, Any], it: Iterable[Any]) -> list[Any]:
        """Call ``task`` once per item of ``it``, unpacking the item (``task.starmap``)."""
        run = _task_of(app, task)
        return [run(*item) for item in it]

    def send_chunks(task: Mapping[str, Any], it: Iterable[Any], n: int) -> list[str]:
        """Split ``it`` into groups of ``n`` and send them as a group; return the member ids.

        Celery returns the GroupResult object itself, which JSON cannot carry; the ids
        are enough for ``GroupResult(id, [AsyncResult(i) ...])`` on the caller's side.
        """
        result = chunks(task, it, n, app=app).group().apply_async()
        return [r.id for r in result.results]

    def accumulate(*args: Any, **kwargs: Any) -> Any:
        """Return ``args[index]``, or every argument: the body of a group that replaced a
        task (``Task.replace``), as Celery's ``celery.accumulate``."""
        index = kwargs.get("index")
        return args[index] if index is not None else args

    app.task(name="celery.map")(xmap)
    app.task(name="celery.accumulate")(accumulate)
    app.task(name="celery.starmap")(xstarmap)
    app.task(name="celery.chunks")(send_chunks)


def _task_of(app: Celery, task: Mapping[str, Any]) -> Any:
    """Return the callable task named by a signature dict, bound to its partial arguments."""
    sig = signature(task, app=app)
    target = app.tasks[sig.task]
    if not sig.args and not sig.kwargs:
        return target

    def call(*args: Any) -> Any:
        return target(*args, *sig.args, **sig.kwargs)

    return call
