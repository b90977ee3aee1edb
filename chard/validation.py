"""``@app.task(pydantic=True)``: arguments validated into pydantic models, models returned as data.

Celery's feature (``celery/app/base.py``, ``pydantic_wrapper``): a parameter annotated
with a pydantic ``BaseModel`` (or ``Model | None``) receives the model built from the
plain data the message carried (``model_validate``, strict if ``pydantic_strict``), and
a returned model whose class matches the return annotation is sent back as plain data
(``model_dump(mode="json")``), so the wire stays JSON.

pydantic is optional: it is imported only for a task that asks for it, and a missing
install is a clear :class:`~chard.exceptions.ImproperlyConfigured` at decoration time.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from chard.exceptions import ImproperlyConfigured


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
