"""``app.start()`` and ``app.worker_main()``: the command line, run in process for an app.

The library never imports the CLI layer; it finds it through the entry point that chard
installs, so these tests also guard that the entry point is declared and loads.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import pytest

from chard import Celery, states
from chard._utils import imports

pytestmark = pytest.mark.usefixtures("no_broker_env")


@pytest.mark.parametrize("method", [Celery.start, Celery.worker_main])
def test_start_runs_the_command_line_with_this_app(
    app: Celery,
    capsys: pytest.CaptureFixture[str],
    method: Callable[[Celery, list[str]], None],
) -> None:
    # Given: a result only this app's backend holds
    app.backend.store_result("t-1", 42, states.SUCCESS)

    # When: the command line runs without -A
    with pytest.raises(SystemExit) as exited:
        method(app, ["result", "t-1"])

    # Then: it used the app in hand
    assert exited.value.code == 0
    assert capsys.readouterr().out == "42\n"


def test_start_names_the_fix_when_chard_is_not_installed(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: ())

    with pytest.raises(ImportError, match=r"'run_with_app' in group 'chard\.command_line'.*pip"):
        app.start(["--version"])


def test_the_library_never_names_the_cli_package() -> None:
    # import-linter sees imports, not strings handed to importlib: check the strings too.
    # chard/__main__.py (python -m chard) is an entry point, like the console script.
    package = Path(imports.__file__).parents[1]
    naming = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.parent.name != "cli"
        and path.name != "__main__.py"
        and "chard.cli" in path.read_text()
    ]

    assert naming == []
