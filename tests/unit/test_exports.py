"""The public surface: ``chard.__all__`` is a checked-in list, and every name resolves.

Changing the public API means changing ``EXPORTED`` here in the same commit.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import chard
from chard import Celery

#: chard's top-level names (Celery's, plus Chard and ChardError, and kombu's Queue, Exchange
#: and binding for task_queues), sorted.
EXPORTED = [
    "AsyncResult",
    "Celery",
    "Chard",
    "ChardError",
    "EagerResult",
    "Exchange",
    "GroupResult",
    "Queue",
    "ResultSet",
    "Signature",
    "Task",
    "VERSION",
    "__version__",
    "binding",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "current_task",
    "group",
    "maybe_signature",
    "shared_task",
    "signature",
    "states",
    "subtask",
    "xmap",
    "xstarmap",
]

#: Loaded on first access from chard.canvas (being written alongside this test).
CANVAS = ["chain", "group", "chord", "chunks", "xmap", "xstarmap", "maybe_signature"]


def test_exported_names_are_the_checked_in_list() -> None:
    assert sorted(chard.__all__) == EXPORTED
    assert len(set(chard.__all__)) == len(chard.__all__)


@pytest.mark.parametrize("name", [n for n in EXPORTED if n not in CANVAS])
def test_every_eager_name_resolves(name: str) -> None:
    assert getattr(chard, name) is not None


@pytest.mark.parametrize("name", CANVAS)
def test_every_canvas_name_resolves_lazily(name: str) -> None:
    from chard import canvas

    value = getattr(chard, name)

    assert value is getattr(canvas, name)
    assert callable(value)


def test_current_app_resolves_to_the_current_app() -> None:
    app = Celery("exports", broker="memory://")

    assert chard.current_app == app  # a proxy: resolved on each use, as Celery's is
    assert chard.current_app._get_current_object() is app  # type: ignore[attr-defined]


def test_star_import_gives_every_name() -> None:
    namespace: dict[str, object] = {}
    Celery("exports", broker="memory://")  # current_app needs one

    exec("from chard import *", namespace)

    assert sorted(n for n in namespace if n != "__builtins__") == EXPORTED


def test_the_exports_are_the_implementations() -> None:
    from chard import app, canvas, exceptions, result, task

    assert chard.Celery is app.Celery
    assert chard.Chard is app.Celery
    assert chard.shared_task is app.shared_task
    assert chard.Task is task.Task
    assert chard.AsyncResult is result.AsyncResult
    assert chard.EagerResult is result.EagerResult
    assert chard.GroupResult is result.GroupResult
    assert chard.ResultSet is result.ResultSet
    assert chard.Signature is canvas.Signature
    assert chard.signature is canvas.signature
    assert chard.subtask is canvas.signature
    assert chard.ChardError is exceptions.ChardError


def test_version() -> None:
    assert isinstance(chard.__version__, str)
    assert tuple(int(p) for p in chard.__version__.split(".")) == chard.VERSION


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'chard' has no attribute 'nope'"):
        _ = chard.nope


def test_importing_chard_does_not_import_the_transports() -> None:
    # The core stays light (no redis client, no broker implementation, no worker) until used.
    code = (
        "import sys, chard; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'chard') "
        "and m.startswith(('redis', 'chard.brokers.', 'chard.backends.', 'chard.worker'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()

    assert "redis" not in loaded
    assert "chard.brokers.redis" not in loaded
    assert "chard.worker" not in loaded
