"""The chord: a header group, then a body called with the list of the header's results.

Import it from :mod:`chard.canvas`. In Celery's dict shape (``celery.chord`` with
``kwargs.header``/``kwargs.body``); like the other primitives it implements
``freeze``, ``_build`` and ``apply``. Counting the header's members as they finish is
the worker's (:mod:`chard.execution.chord`).
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, overload

from chard import states
from chard.canvas.errbacks import run_errback
from chard.canvas.primitives import _restore, chain, group
from chard.canvas.signature import (
    Outbox,
    Result,
    Signature,
    _app_of,
    _as_list,
    _attach_parent,
    _failed,
    maybe_signature,
    register,
)
from chard.exceptions import ChordError
from chard.request import Context
from chard.result import AsyncResult, EagerResult, GroupResult, ResultsDisabled

if TYPE_CHECKING:
    from chard.app import Celery

R = TypeVar("R")
S = TypeVar("S")


class chord(Signature[Any], Generic[R]):  # lower-case: Celery's name
    """Run a header group, then the body with the list of header results (in order).

    A header failure fails the body with :class:`~chard.exceptions.ChordError`
    naming the failed task, and calls the body's errbacks.

    ``R`` is the body's result type, for type checkers: ``chord(header, xsum.s())``
    is a ``chord[int]`` whose ``apply_async()`` is an ``AsyncResult[int]``. (A body
    that is itself a group is ``Signature[Any]``, so the chord's result is
    ``AsyncResult[Any]`` though it is a GroupResult at runtime.)
    """

    subtask_type = "chord"

    @overload
    def __init__(
        self: chord[R],
        header: Any,
        body: Signature[R],
        task: str = "celery.chord",
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        app: Celery | None = None,
        **options: Any,
    ) -> None: ...

    @overload
    def __init__(
        self: chord[Any],
        header: Any = None,
        body: Any = None,
        task: str = "celery.chord",
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        app: Celery | None = None,
        **options: Any,
    ) -> None: ...

    def __init__(
        self,
        header: Any = None,
        body: Any = None,
        task: str = "celery.chord",
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        app: Celery | None = None,
        **options: Any,
    ) -> None:
        head: Any = header
        if isinstance(header, Iterator) and not isinstance(header, Mapping):
            pass  # a generator: unrolled when the chord is first used, not here (Celery's)
        elif isinstance(header, chain):
            head = group(header.tasks, app=app)  # Celery: a chain's steps become the members
        elif not isinstance(header, group):
            head = group(header or (), app=app)
        tail = maybe_signature(body, app)
        fields = {"header": head, "body": tail, "kwargs": dict(kwargs or {})}
        known = [part for part in (head, tail) if isinstance(part, Signature)]
        super().__init__(task, args, fields, options, app=_app_of(known, app))

    @property
    def header(self) -> group:
        """The header group (a generator given as the header is unrolled here, once)."""
        head = self["kwargs"]["header"]
        if not isinstance(head, group):
            head = self["kwargs"]["header"] = group(head, app=self._app)
        return head

    @property
    def app(self) -> Celery:
        """The app given, else the header's (a generator header is unrolled to find it)."""
        if self._app is None:
            self._app = _app_of([self.header], None)
        return super().app

    def __length_hint__(self) -> int:
        """Return how many completions the body waits for (Celery's count, recursive)."""
        return sum(_completions(task) for task in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        self.header  # noqa: B018 - unrolls a generator header before copying
        return super().to_dict()

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        self.header  # noqa: B018 - a generator cannot be copied: unroll it first
        return super().__deepcopy__(memo)

    @property
    def body(self) -> Signature[Any]:
        """The body (callback) signature."""
        tail: Signature[Any] = self["kwargs"]["body"]
        return tail

    @property
    def tasks(self) -> list[Signature[Any]]:
        """The header's members."""
        return self.header.tasks

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: Celery | None = None) -> Signature[Any]:
        kw = data["kwargs"]
        header = kw["header"]
        header = maybe_signature(header, app) if isinstance(header, Mapping) else header
        sig = cls(header, kw.get("body"), app=app, **(data.get("options") or {}))
        return _restore(sig, data)

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        """Run ``callback`` with the body's result."""
        return self.body.link(callback)

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        """Run ``errback`` when the chord fails (a header task or the body), as Celery does.

        It goes to the body, to the chords nested in the header (each links it its own
        way), and, with ``task_allow_error_cb_on_chord_header``, to every header task
        too, as an immutable clone (a header task cannot pass on the chord's failure).
        """
        errback = maybe_signature(errback, self._app)
        on_header = bool(self.app.conf.task_allow_error_cb_on_chord_header)
        for task in self.tasks:
            if isinstance(task, chord):
                task.link_error(errback)
            elif on_header:
                task.link_error(errback.clone().set(immutable=True))
        return self.body.link_error(errback)

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Mapping[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Result:
        """Fix the header and body ids; outer group membership goes to the body.

        The chord's own ``task_id`` option becomes the header's group id, as Celery's
        ``chord.freeze`` sets it: a Celery worker applying this chord (the next step of
        a chain) takes its header's group id from there.
        """
        header_result = self.header.freeze()
        self["options"].setdefault("task_id", header_result.id)
        body_result = self.body.freeze(_id, group_id=group_id, chord=chord, group_index=group_index)
        _attach_parent(body_result, header_result)
        return body_result

    if TYPE_CHECKING:
        # The chord's result is its body's (the base class says Signature[Any]).
        def apply_async(
            self,
            args: Iterable[Any] | None = None,
            kwargs: Mapping[str, Any] | None = None,
            **options: Any,
        ) -> AsyncResult[R]: ...

        def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]: ...

    def _split(
        self, kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]
    ) -> tuple[group, Signature[Any], dict[str, Any], dict[str, Any]]:
        """Return (header, body with the outer options applied, header kwargs, header options)."""
        kwargs = dict(kwargs or {})
        body_arg = kwargs.pop("body", None)
        opts = {**self.options, **options}
        header = self.header.clone()
        body = maybe_signature(body_arg, self._app) if body_arg is not None else self.body
        if body is None:
            raise ValueError("chord() needs a body: chord(header, body) or chord(header)(body)")
        body = body.clone()
        outer = list(opts.pop("chain", None) or ())
        if outer:
            body["options"]["chain"] = [*outer, *(body["options"].get("chain") or ())]
        for callback in _as_list(opts.pop("link", None)):
            body.link(callback)
        for errback in _as_list(opts.pop("link_error", None)):
            body.link_error(errback)
        task_id = opts.pop("task_id", None)
        if task_id is not None and task_id == header["options"].get("task_id"):
            task_id = None  # the header's group id (set by freeze), not an id for the body
        body.freeze(
            task_id,
            group_id=opts.pop("group_id", None),
            chord=opts.pop("chord", None),
            group_index=opts.pop("group_index", None),
        )
        return header, body, kwargs, opts

    def _build(
        self,
        args: Iterable[Any],
        kwargs: Mapping[str, Any] | None,
        options: dict[str, Any],
        out: Outbox,
    ) -> Result:
        header, body, kwargs, opts = self._split(kwargs, options)
        app = self.app
        backend = app.backend
        if backend is None:
            raise ResultsDisabled(
                "a chord needs a result backend to count its header tasks; set one, e.g. "
                "Celery('proj', broker=..., backend='redis://localhost:6379/0')"
            )
        header.freeze()
        body_result = body.freeze()
        if not header.tasks:  # nothing to wait for: the body runs now with no results
            body._build(([],), None, {}, out)
            return body_result
        # chard's own join reads the size from the body; Celery's (a mixed fleet) from .s
        compat = app.conf["chard_celery_compat"]
        size = len(header.tasks)
        body_dict = body.to_dict() if compat else {**body.to_dict(), "chord_size": size}
        header_result = header._build(args, kwargs, {**opts, "chord": body_dict}, out)
        assert isinstance(header_result, GroupResult)
        # Saved before anything is published: the worker completing the chord reads it.
        if compat:
            backend.set_chord_size(str(header_result.id), size)
        else:
            backend.save_group(str(header_result.id), [r.id for r in header_result.results])
        _attach_parent(body_result, header_result)
        return body_result

    def _eager(self, app: Celery) -> bool:
        return bool(app.conf.task_always_eager)

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Run the header inline, then the body with its results.

        A failed header member fails the chord with that member's own exception (Celery
        re-raises it from the header's ``get()``); the body's errbacks get a
        :class:`ChordError` naming it, as a worker's chord gives them.
        """
        header, body, kwargs, opts = self._split(kwargs, options)
        header_result = header.apply(args, kwargs, **opts)
        assert isinstance(header_result, GroupResult)
        try:
            values = header_result.get()
        except Exception as exc:
            body_id = str(body.freeze().id)
            error = ChordError(f"Dependency {_failed_id(header_result)} raised {exc!r}")
            request = Context(id=body_id, is_eager=True, called_directly=False)
            for errback in _as_list(body["options"].get("link_error")):
                run_errback(self.app, errback, request, error, None)
            trace = "".join(traceback.format_exception(exc))
            failed: EagerResult[Any] = EagerResult(
                body_id, exc, states.FAILURE, trace, app=self.app
            )
            failed.parent = header_result
            return failed
        result: Result = body.apply((values,))
        _attach_parent(result, header_result)
        return result

    @overload
    def __call__(self, body: Signature[S], **options: Any) -> AsyncResult[S]: ...

    @overload
    def __call__(self, body: None = None, **options: Any) -> AsyncResult[R]: ...

    @overload
    def __call__(self, body: Mapping[str, Any], **options: Any) -> AsyncResult[Any]: ...

    def __call__(self, body: Any = None, **options: Any) -> AsyncResult[Any]:
        """Send the chord; ``chord(header)(body)`` supplies the body late."""
        return self.apply_async((), {"body": body} if body is not None else None, **options)

    def __or__(self, other: Any) -> Signature[Any]:  # type: ignore[override]  # dict's | is merge
        """``chord | task`` appends the task to the body."""
        if isinstance(other, Signature) and not isinstance(other, group):
            new = self.clone()
            assert isinstance(new, chord)
            new["kwargs"]["body"] = chain(new.body, other, app=self._app)
            return new
        return super().__or__(other)

    def __repr__(self) -> str:
        return f"chord({self.header.tasks!r}, {self.body!r})"


def _completions(sig: Any) -> int:
    """How many header completions ``sig`` stands for (Celery's ``chord._descend``).

    A group counts each member, a chain its last step that counts, a chord its body,
    a task one.
    """
    sig = maybe_signature(sig) if isinstance(sig, Mapping) else sig
    if isinstance(sig, group):
        return sum(_completions(member) for member in sig.tasks)
    if isinstance(sig, chain):
        return next((n for n in map(_completions, reversed(sig.tasks)) if n > 0), 0)
    if isinstance(sig, chord):
        return _completions(sig.body)
    return 1


def _failed_id(result: GroupResult) -> str | None:
    """The id of the first failed member, nested groups included."""
    for member in result.results:
        nested: object = member
        if isinstance(nested, GroupResult):
            found = _failed_id(nested)
            if found is not None:
                return found
        elif _failed(member):
            return str(member.id)
    return None


register(chord)
