"""Resolve ``"package.module:attribute"`` strings, for the CLI and configuration only."""

from __future__ import annotations

import importlib
from typing import Any


def import_string(path: str) -> Any:
    """Import ``module:attr`` or ``module.attr`` and return the object.

    Raises:
        ImportError: the module or the attribute does not exist; the message names which.
    """
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
        if not module_name:
            return importlib.import_module(path)
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj
