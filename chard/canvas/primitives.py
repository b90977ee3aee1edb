"""The workflow primitives chain and group (the chord is in :mod:`.chords`).

Import them from :mod:`chard.canvas`. Each one is a
:class:`~chard.canvas.Signature` in Celery's dict shape (``celery.chain`` and
``celery.group`` with ``kwargs.tasks``) and implements three operations: ``freeze``
(fix ids), ``_build`` (append its starting messages to an outbox) and ``apply``
(run inline). A group followed by another step becomes a chord; the chord class is
looked up in the registry (:func:`~chard.canvas.signature.register`), since
:mod:`.chords` builds on this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from chard.canvas.signature import (
    _PRIMITIVES,
    _STEP_LOCAL,
    Outbox,
    Result,
    Signature,
    _app_of,
    _as_list,
    _attach_parent,
    _failed,
    _partial,
    _signatures,
    maybe_signature,
    register,
)
from chard.protocol.ids import new_id
from chard.result import AsyncResult, EagerGroupResult, GroupResult

if TYPE_CHECKING:
    from chard.app import Celery

R = TypeVar("R")
S = TypeVar("S")


def _restore(sig: Signature[Any], data: Mapping[str, Any]) -> Signature[Any]:
    """Copy the generic fields of a primitive's dict (partial args, immutability) onto ``sig``."""
    sig["args"] = tuple(data.get("args") or ())
    sig["immutable"] = bool(data.get("immutable", False))
    return sig


class _TaskList(Signature[Any]):
    """What chain and group share: a list of signatures in ``kwargs.tasks``, Celery's shape.

    A nested instance of the same kind is flattened into its parent (``a | (b | c)``
    is one chain of three, a group of groups one group), as in Celery.
    """

    def __init__(self, *tasks: Any, app: Celery | None = None, **options: Any) -> None:
        flat: list[Signature[Any]] = []
        for sig in _signatures(tasks, app):
            flat.extend(sig.tasks if isinstance(sig, type(self)) else [sig])
        name = f"celery.{self.subtask_type}"
        super().__init__(name, (), {"tasks": flat}, options, app=_app_of(flat, app))

    @property
    def tasks(self) -> list[Signature[Any]]:
        """The signatures, in order."""
        tasks: list[Signature[Any]] = self["kwargs"]["tasks"]
        return tasks

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: Celery | None = None) -> Signature[Any]:
        tasks = [maybe_signature(t, app) for t in data["kwargs"]["tasks"]]
        return _restore(cls(tasks, app=app, **(data.get("options") or {})), data)


class chain(_TaskList):  # lower-case: Celery's name
    """Run tasks one after another, each receiving the previous result: ``a | b | c``.

    Calling a chain *sends* it (``chain(...)()`` is ``apply_async``) and returns the
    last task's result, whose ``.parent`` walks back to the first. Its type says
    ``AsyncResult[Any]``: the steps' types are not tracked, and a chain whose last
    step is a group returns that group's GroupResult.
    """

    subtask_type = "chain"

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        """Run ``callback`` with the result of the last step."""
        return self.tasks[-1].link(callback)

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        """Run ``errback`` if any step fails (Celery links it to every step)."""
        for step in self.tasks:
            step.link_error(errback)
        return errback

    def _prepare(
        self, args: Iterable[Any] | None, options: Mapping[str, Any]
    ) -> tuple[list[Signature[Any]], tuple[Any, ...], dict[str, Any], list[Any]]:
        """Return (steps, ``group | x`` upgraded; first args; first options; outer chain)."""
        if not self.tasks:
            raise ValueError("chain() needs at least one task, got none")
        opts = {**self.options, **options}
        outer = list(opts.pop("chain", None) or ())
        steps = _upgrade([step.clone() for step in self.tasks])
        last = steps[-1]
        last.freeze(
            opts.pop("task_id", None),
            group_id=opts.pop("group_id", None),
            chord=opts.pop("chord", None),
            group_index=opts.pop("group_index", None),
        )
        for callback in _as_list(opts.pop("link", None)):
            last.link(callback)
        for errback in _as_list(opts.pop("link_error", None)):
            for step in steps:
                step.link_error(errback)
        shared = {k: v for k, v in opts.items() if k not in _STEP_LOCAL}
        for step in steps[1:]:
            step.set(**shared)
        return steps, _partial(args, self), opts, outer

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Mapping[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Result:
        """Fix every step's id; the last step takes the group membership and the chain's id.

        The chain's own ``id`` is then its last step's (Celery: ``chain.freeze(id)``).
        """
        steps = _upgrade(self.tasks)
        steps[-1].freeze(_id, group_id=group_id, chord=chord, group_index=group_index)
        result = _freeze_steps(steps)[-1]
        self["options"]["task_id"] = result.id
        return result

    def _build(
        self,
        args: Iterable[Any],
        kwargs: Mapping[str, Any] | None,
        options: dict[str, Any],
        out: Outbox,
    ) -> Result:
        steps, first_args, opts, outer = self._prepare(args, options)
        results = _freeze_steps(steps)
        embed = [*outer, *(step.to_dict() for step in reversed(steps[1:]))]
        if embed:
            opts["chain"] = embed
        steps[0]._build(first_args, kwargs, opts, out)
        return results[-1]

    def _eager(self, app: Celery) -> bool:
        return bool(app.conf.task_always_eager)

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Run every step inline, feeding each result to the next; stop at a failure."""
        steps, first_args, opts, _outer = self._prepare(args, options)
        result: Result = steps[0].apply(first_args, kwargs, **opts)
        for step in steps[1:]:
            if _failed(result):
                break
            following: Result = step.apply((result.get(),))
            _attach_parent(following, result)
            result = following
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        """Send the chain (Celery: calling a chain applies it asynchronously)."""
        return self.apply_async(args, kwargs)

    def __or__(self, other: Any) -> Signature[Any]:  # type: ignore[override]  # dict's | is merge
        if isinstance(other, Signature):
            return chain(*self.tasks, other, app=self._app)
        return NotImplemented

    def __repr__(self) -> str:
        return " | ".join(repr(step) for step in self.tasks) or "chain()"


def _chord() -> Any:
    """The chord class, registered by :mod:`chard.canvas.chords` (which imports this module)."""
    return _PRIMITIVES["chord"]


def _upgrade(steps: list[Signature[Any]]) -> list[Signature[Any]]:
    """Turn every group followed by another step into a chord (Celery's rule)."""
    upgraded: list[Signature[Any]] = []
    index = 0
    while index < len(steps):
        step = steps[index]
        if isinstance(step, group) and index + 1 < len(steps):
            upgraded.append(_chord()(step, steps[index + 1], app=step._app))
            index += 2
        else:
            upgraded.append(step)
            index += 1
    return upgraded


def _freeze_steps(steps: list[Signature[Any]]) -> list[Result]:
    """Freeze each step and link every result's ``parent`` to the previous one."""
    results: list[Result] = []
    for step in steps:
        result = step.freeze()
        _attach_parent(result, results[-1] if results else None)
        results.append(result)
    return results


class group(_TaskList):  # lower-case: Celery's name
    """Run tasks in parallel; the result is a :class:`GroupResult` in member order.

    Nested groups are flattened (as in Celery). Calling a group sends it, with
    any arguments prepended to every member (partial group).
    """

    subtask_type = "group"

    if TYPE_CHECKING:
        # Sending a group returns a GroupResult, not an AsyncResult; a group is still a
        # Signature at runtime (Celery's shape), so only the declared types change here.
        def apply_async(  # type: ignore[override]
            self,
            args: Iterable[Any] | None = None,
            kwargs: Mapping[str, Any] | None = None,
            **options: Any,
        ) -> GroupResult: ...

        def delay(self, *args: Any, **kwargs: Any) -> GroupResult: ...  # type: ignore[override]

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        """Run ``callback`` once, when the first member succeeds, without its value.

        Celery's rule: the callback goes to the first member only, made immutable (that
        member cannot pass on its siblings' values); for a callback that waits for
        every member and gets their values, use a chord.
        """
        if not self.tasks:
            raise ValueError("cannot link a callback to an empty group; add a task first")
        return self.tasks[0].link(callback.clone().set(immutable=True))

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        """Run ``errback`` for any member that fails."""
        for member in self.tasks:
            member.link_error(errback)
        return errback

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Mapping[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Result:
        """Fix the group id (``options.task_id``, as Celery) and every member's id."""
        opts = self["options"]
        if _id is not None:
            opts["task_id"] = _id
        gid = opts.setdefault("task_id", new_id())
        results = [
            member.freeze(group_id=gid, group_index=index, chord=chord)
            for index, member in enumerate(self.tasks)
        ]
        return GroupResult(gid, cast("list[AsyncResult[Any]]", results), app=self.app)

    def _options(self, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        opts = {**self.options, **options}
        gid = opts.pop("task_id", None) or new_id()
        opts.pop("group_id", None)
        opts.pop("group_index", None)
        return gid, opts

    def _build(
        self,
        args: Iterable[Any],
        kwargs: Mapping[str, Any] | None,
        options: dict[str, Any],
        out: Outbox,
    ) -> Result:
        gid, opts = self._options(options)
        rest = opts.pop("chain", None)
        if rest:  # more steps after the group: it is a chord header now
            body = chain(*[maybe_signature(d, self._app) for d in reversed(rest)], app=self._app)
            # The header is this group without its own 'chain' option (a group sent as a
            # chain step carries it): else building the header would make a chord again.
            header = self.clone()
            header["options"].pop("chain", None)
            upgraded: Signature[Any] = _chord()(header, body, app=self._app)
            return upgraded._build(args, kwargs, opts, out)
        partial = _partial(args, self)
        results = [
            member._build(partial, kwargs, {**opts, "group_id": gid, "group_index": index}, out)
            for index, member in enumerate(self.tasks)
        ]
        return GroupResult(gid, cast("list[AsyncResult[Any]]", results), app=self.app)

    def _eager(self, app: Celery) -> bool:
        return bool(app.conf.task_always_eager)

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Run every member inline, in order."""
        gid, opts = self._options(options)
        opts.pop("chain", None)
        opts.pop("chord", None)
        partial = _partial(args, self)
        results = [member.apply(partial, kwargs, **opts) for member in self.tasks]
        return EagerGroupResult(gid, cast("list[AsyncResult[Any]]", results), app=self.app)

    def __call__(self, *partial_args: Any, **options: Any) -> GroupResult:
        """Send the group; ``partial_args`` are prepended to every member's arguments."""
        return self.apply_async(partial_args, **options)

    def __or__(self, other: Any) -> Signature[Any]:  # type: ignore[override]  # dict's | is merge
        """``group | task`` is a chord; ``group | chain`` becomes one when sent."""
        if isinstance(other, Signature) and not isinstance(other, (group, chain)):
            chord: Signature[Any] = _chord()(self, other, app=self._app)
            return chord
        return super().__or__(other)

    def __len__(self) -> int:  # a group's length is its member count, not the dict's keys
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"group({self.tasks!r})"


register(chain, group)
