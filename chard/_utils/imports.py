"""Resolve ``"package.module:attribute"`` strings and installed entry points.

``import_string`` is for the CLI and configuration only (user-given paths such as ``-A``);
the library itself names no module of a higher layer, and finds what such a layer
provides through the entry points it installs (``load_entry_point``).
"""

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


def load_entry_point(group: str, name: str) -> Any:
    """Load the object an installed distribution registers as ``name`` in ``group``.

    Raises:
        ImportError: nothing installed registers it; the message names the group and the fix.
    """
    # Imported here: importlib.metadata pulls in email, zipfile and more (several MiB per
    # process), and only app.start() looks an entry point up.
    from importlib import metadata

    found = metadata.entry_points(group=group, name=name)
    if not found:
        raise ImportError(
            f"no entry point {name!r} in group {group!r} is installed; install chard "
            "(pip install chard, or pip install -e . in a checkout) so its metadata exists"
        )
    # Several only when two copies of a distribution are installed: any one of them will do.
    return next(iter(found)).load()
