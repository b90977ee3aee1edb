"""Find the app named by ``-A``, following Celery 5.7's lookup order.

``-A proj`` tries, in order: ``proj.app``, ``proj.celery`` (an app, not the
``proj.celery`` submodule), then the ``proj.celery`` submodule's ``app``,
``celery`` or any app attribute, then any app attribute of ``proj``.
``-A proj.module:attr`` names the app exactly; ``-A main.celery`` (module
``main``, attribute ``celery``) works as in Celery.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any

from chard._utils.log import saferepr
from chard.app import Celery
from chard.exceptions import ImproperlyConfigured


class AppNotFound(ImproperlyConfigured):
    """``-A`` names nothing that is (or contains) an app."""


def _import(name: str) -> ModuleType:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # Celery imports from the current directory too
    return importlib.import_module(name)


def _any_app(module: ModuleType) -> Celery | None:
    for value in vars(module).values():
        if isinstance(value, Celery):
            return value
    return None


def _app_in_module(module: ModuleType) -> Celery | None:
    for attr in ("app", "celery"):
        value = getattr(module, attr, None)
        if isinstance(value, Celery):
            return value
    return None


def find_app(spec: str) -> Celery:
    """Return the app ``spec`` names.

    Raises:
        AppNotFound: with what was tried and how to name the app exactly.
    """
    try:
        found = _find(spec)
    except ModuleNotFoundError as exc:
        module_name = spec.partition(":")[0]
        if not exc.name or not f"{module_name}.".startswith(f"{exc.name}."):
            raise  # the project imports something missing: show that error, not a hint
        raise AppNotFound(
            f"cannot import {spec!r}: {exc}; run chard from the directory that contains "
            f"your project (or add it to PYTHONPATH)"
        ) from exc
    if found is None:
        raise AppNotFound(
            f"no chard/Celery app found in {spec!r} (looked for 'app', 'celery', a "
            f"'{spec}.celery' submodule, and any app attribute); name it exactly: "
            f"-A {spec}:app"
        )
    return found


def _find_exact(spec: str) -> Celery:
    """Return the app ``module:attr`` names, or say why it is not one."""
    module_name, _, attr = spec.partition(":")
    value: Any = _import(module_name)
    for part in attr.split("."):
        if not hasattr(value, part):
            raise AppNotFound(f"module {module_name!r} has no attribute {attr!r}")
        value = getattr(value, part)
    if not isinstance(value, Celery):
        raise AppNotFound(
            f"{attr!r} in module {module_name!r} is {saferepr(value, 80)}, not a chard/Celery app"
        )
    return value


def _find(spec: str) -> Celery | None:
    if ":" in spec:
        return _find_exact(spec)
    module = _import_or_attribute(spec)
    if isinstance(module, Celery):
        return module
    if module is None:
        return None
    found = _app_in_module(module)
    if found is not None:
        return found
    if hasattr(module, "__path__"):
        try:
            submodule = _import(f"{spec}.celery")
        except ModuleNotFoundError as exc:
            if exc.name != f"{spec}.celery":
                raise
        else:
            found = _app_in_module(submodule) or _any_app(submodule)
            if found is not None:
                return found
    return _any_app(module)


def _import_or_attribute(spec: str) -> Any:
    """Import ``spec`` as a module, or as ``module.attribute`` when that is what it names."""
    try:
        return _import(spec)
    except ModuleNotFoundError as exc:
        module_name, _, attr = spec.rpartition(".")
        if not module_name or exc.name != spec:
            raise
        return getattr(_import(module_name), attr, None)
