"""Unit-test fixtures: in-process apps, throwaway importable modules, a fresh app context."""

from __future__ import annotations

import contextvars
import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chard import Celery, _context

WriteModules = Callable[[dict[str, str]], Path]


@pytest.fixture
def app() -> Iterator[Celery]:
    """An app on the in-process memory broker and backend (real implementations)."""
    application = Celery("t", broker="memory://", backend="memory://")
    yield application
    application.close()


@pytest.fixture
def no_broker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide broker/backend URLs in the environment (the settings' fallbacks)."""
    for name in (
        "CHARD_BROKER_URL",
        "CELERY_BROKER_URL",
        "CHARD_RESULT_BACKEND",
        "CELERY_RESULT_BACKEND",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def write_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModules]:
    """Write ``{"pkg/__init__.py": source, ...}`` under ``tmp_path``, importable for this test.

    Modules imported from there are removed from ``sys.modules`` afterwards, so the
    next test can reuse the same names.
    """
    root = tmp_path / "modules"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))

    def write(files: dict[str, str]) -> Path:
        for relative, source in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return root

    yield write
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(root)):
            del sys.modules[name]


@pytest.fixture
def no_current_app(monkeypatch: pytest.MonkeyPatch) -> contextvars.Context:
    """A context in which no app was ever created (run code in it with ``.run(fn)``)."""
    monkeypatch.setattr(_context, "_default_app", [])
    return contextvars.Context()
