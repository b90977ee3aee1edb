"""Checking a task's arguments against its function: Celery's ``typing`` check and ``pydantic``.

:class:`ArgumentCheck` is Celery's ``typing`` check (``Task.apply_async`` binds the
arguments to the function's header, so ``add.delay(10)`` fails at the call, not in the
worker), made cheap: ``inspect.Signature.bind`` costs about 16 µs, so the common cases
are decided from the parameter kinds computed once, and ``bind`` runs only to word the
error.

``@app.task(pydantic=True)`` is Celery's feature (``celery/app/base.py``,
``pydantic_wrapper``): a parameter annotated with a pydantic ``BaseModel`` (or
``Model | None``) receives the model built from the plain data the message carried
(``model_validate``, strict if ``pydantic_strict``), and a returned model whose class
matches the return annotation is sent back as plain data (``model_dump(mode="json")``),
so the wire stays JSON.

pydantic is optional: it is imported only for a task that asks for it, and a missing
install is a clear :class:`~chard.exceptions.ImproperlyConfigured` at decoration time.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from chard.exceptions import ImproperlyConfigured


class ArgumentCheck:
    """Whether arguments fit a function's parameters (what ``Signature.bind`` decides)."""

    def __init__(self, header: inspect.Signature) -> None:
        self.header = header
        params = list(header.parameters.values())
        kinds = inspect.Parameter
        self._positional = [
            p.name for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        ]
        self._by_keyword = frozenset(
            p.name for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
        )
        self._has_varargs = any(p.kind is kinds.VAR_POSITIONAL for p in params)
        self._has_varkw = any(p.kind is kinds.VAR_KEYWORD for p in params)
        self._required = [
            p.name
            for p in params
            if p.default is p.empty and p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
        ]
        self._position = {name: index for index, name in enumerate(self._positional)}
        # How many positional arguments fit a call without keywords (the usual delay(1, 2)):
        # required ones come first; a required keyword-only parameter fits none.
        needs_keyword = any(
            p.kind is kinds.KEYWORD_ONLY for p in params if p.name in self._required
        )
        self._fewest: float = float("inf") if needs_keyword else len(self._required)
        self._most: float = float("inf") if self._has_varargs else len(self._positional)

    def error(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
        """Return why ``args``/``kwargs`` do not fit (Python's words), or None if they do."""
        if not kwargs and self._fewest <= len(args) <= self._most:
            return None  # the usual delay(1, 2), without a call to _fits
        if self._fits(args, kwargs):
            return None
        try:
            self.header.bind(*args, **kwargs)
        except TypeError as exc:
            return str(exc)
        return None

    def _fits(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        count = len(args)
        if not kwargs:
            return self._fewest <= count <= self._most
        if count > len(self._positional) and not self._has_varargs:
            return False
        for key in kwargs:
            index = self._position.get(key)
            if index is not None and index < count:
                return False  # given twice
            if key not in self._by_keyword and not self._has_varkw:
                return False
        for name in self._required:
            is_given = name in kwargs or (name in self._position and self._position[name] < count)
            if not is_given:
                return False
        return True

    def describe(self) -> str:
        """The parameters as the caller writes them: ``(x, y=1)``, without annotations."""
        plain = [p.replace(annotation=p.empty) for p in self.header.parameters.values()]
        return str(self.header.replace(parameters=plain, return_annotation=self.header.empty))


def pydantic_wrapper(
    fn: Callable[..., Any],
    task_name: str,
    strict: bool = False,
    context: dict[str, Any] | None = None,
    dump_kwargs: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """Return ``fn`` wrapped to validate model arguments and dump a model result.

    Raises:
        ImproperlyConfigured: pydantic is not installed.
    """
    try:
        pydantic = importlib.import_module("pydantic")
    except ModuleNotFoundError as exc:
        raise ImproperlyConfigured(
            f"task {task_name!r} uses pydantic=True but pydantic is not installed; "
            "pip install 'pydantic>=2', or drop pydantic=True"
        ) from exc
    base_model: type = pydantic.BaseModel
    signature = inspect.signature(fn)
    try:  # resolves string annotations (``from __future__ import annotations``)
        hints = typing.get_type_hints(fn)
    except (NameError, AttributeError, TypeError):
        hints = {name: p.annotation for name, p in signature.parameters.items()}
        hints["return"] = signature.return_annotation
    extra = {**(context or {}), "celery_task_name": task_name}
    dump = {"mode": "json", **(dump_kwargs or {})}

    def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        bound = signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            model = _model_class(hints.get(name), base_model)
            if model is not None and value is not None and not isinstance(value, model):
                bound.arguments[name] = model.model_validate(value, strict=strict, context=extra)
        return bound

    def result(value: Any) -> Any:
        model = _model_class(hints.get("return"), base_model)
        if model is not None and isinstance(value, model):
            return value.model_dump(**dump)
        return value

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            bound = arguments(args, kwargs)
            return result(await fn(*bound.args, **bound.kwargs))

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        bound = arguments(args, kwargs)
        return result(fn(*bound.args, **bound.kwargs))

    return run


def _model_class(annotation: Any, base_model: type) -> Any:
    """The model class an annotation names (``Model`` or ``Model | None``), else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) != 1:
            return None
        annotation = members[0]
    if inspect.isclass(annotation) and issubclass(annotation, base_model):
        return annotation
    return None
