"""Finding the modules that declare tasks: ``include``/``imports`` and ``autodiscover_tasks``.

Apart from the app so that the rules for what is imported, and which missing
module is an error, live in one place (Django's installed apps among them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

#: What ``autodiscover_tasks`` takes: package names, or a callable returning them
#: (called late, once the app is finalized), or None for Django's installed apps.
Packages = Iterable[str] | Callable[[], Iterable[str]] | None


def import_modules(names: Iterable[str]) -> None:
    """Import every module named (``include`` and ``imports``): a missing one is an error."""
    for name in names:
        importlib.import_module(name)


def discover(packages: Packages, related_name: str = "tasks") -> None:
    """Import ``<package>.<related_name>`` for every package; packages without one are skipped.

    A tasks module that exists but imports something missing still raises: skipping
    it would hide the real error behind "unknown task".
    """
    found = packages() if callable(packages) else packages
    if found is None:
        found = installed_django_apps()
    for package in found:
        module_name = f"{package}.{related_name}" if related_name else package
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name not in (module_name, package):
                raise


def installed_django_apps() -> list[str]:
    """The names of Django's installed apps, or ``[]`` when Django is not in use."""
    try:
        from django.apps import apps
    except ImportError:
        return []
    if not apps.ready:  # Django installed but not in use (or not set up): no apps to search
        return []
    return [config.name for config in apps.get_app_configs()]
