"""``-A``: finding the app the way Celery 5.7 does, with errors that say what was tried."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from chard import Celery
from chard.cli.appfinder import AppNotFound, find_app
from chard.exceptions import ImproperlyConfigured
from tests.unit.conftest import WriteModules

APP = "from chard import Celery\n"


def imported(name: str) -> object:
    return sys.modules[name]


# -- the lookup order for -A proj -------------------------------------------------------------


def test_proj_app_comes_first(write_modules: WriteModules) -> None:
    write_modules(
        {
            "proj1/__init__.py": APP
            + "app = Celery('by-app')\ncelery = Celery('by-celery')\nother = Celery('other')\n"
        }
    )

    assert find_app("proj1").main == "by-app"


def test_then_the_proj_celery_attribute(write_modules: WriteModules) -> None:
    write_modules(
        {"proj2/__init__.py": APP + "other = Celery('other')\ncelery = Celery('by-celery')\n"}
    )

    assert find_app("proj2").main == "by-celery"


def test_then_the_proj_celery_submodules_app(write_modules: WriteModules) -> None:
    write_modules(
        {
            "proj3/__init__.py": APP + "fallback = Celery('fallback')\n",
            "proj3/celery.py": APP + "app = Celery('submodule-app')\nother = Celery('x')\n",
        }
    )

    assert find_app("proj3").main == "submodule-app"


def test_the_submodules_celery_attribute(write_modules: WriteModules) -> None:
    write_modules(
        {
            "proj4/__init__.py": "",
            "proj4/celery.py": APP + "another = Celery('x')\ncelery = Celery('submodule-celery')\n",
        }
    )

    assert find_app("proj4").main == "submodule-celery"


def test_any_app_in_the_submodule(write_modules: WriteModules) -> None:
    write_modules(
        {
            "proj5/__init__.py": "",
            "proj5/celery.py": APP + "NAME = 'x'\nworker_app = Celery('any-in-submodule')\n",
        }
    )

    assert find_app("proj5").main == "any-in-submodule"


def test_the_common_django_layout(write_modules: WriteModules) -> None:
    # proj/__init__.py imports the app from proj/celery.py, so proj.celery is a module
    # attribute, not an app: it must be looked into, not returned or skipped.
    write_modules(
        {
            "proj6/__init__.py": "from .celery import app as celery_app\n",
            "proj6/celery.py": APP + "app = Celery('django-proj')\n",
        }
    )

    found = find_app("proj6")

    assert found.main == "django-proj"
    assert found is imported("proj6.celery").app  # type: ignore[attr-defined]


def test_finally_any_app_attribute_of_proj(write_modules: WriteModules) -> None:
    write_modules({"proj7.py": APP + "settings = {}\nmy_app = Celery('any-attr')\n"})

    assert find_app("proj7").main == "any-attr"


def test_a_package_without_celery_submodule_falls_back_to_any_app(
    write_modules: WriteModules,
) -> None:
    write_modules({"proj8/__init__.py": APP + "tasks_app = Celery('pkg-any')\n"})

    assert find_app("proj8").main == "pkg-any"


def test_attributes_that_are_not_apps_are_skipped(write_modules: WriteModules) -> None:
    write_modules({"proj9.py": APP + "app = 'a string'\ncelery = None\nreal = Celery('real')\n"})

    assert find_app("proj9").main == "real"


# -- naming the app exactly ------------------------------------------------------------------


def test_module_colon_attribute(write_modules: WriteModules) -> None:
    write_modules(
        {
            "proj10/__init__.py": "",
            "proj10/worker.py": APP + "app = Celery('first')\nsecond = Celery('second')\n",
        }
    )

    assert find_app("proj10.worker:second").main == "second"


def test_module_colon_nested_attribute(write_modules: WriteModules) -> None:
    write_modules({"proj11.py": APP + "class Holder:\n    app = Celery('nested')\n"})

    assert find_app("proj11:Holder.app").main == "nested"


def test_module_dot_attribute_like_main_celery(write_modules: WriteModules) -> None:
    write_modules({"main.py": APP + "celery = Celery('main-celery')\n"})

    assert find_app("main.celery").main == "main-celery"


def test_a_dotted_submodule(write_modules: WriteModules) -> None:
    write_modules(
        {
            "proj12/__init__.py": "",
            "proj12/apps/__init__.py": "",
            "proj12/apps/queue.py": APP + "app = Celery('deep')\n",
        }
    )

    assert find_app("proj12.apps.queue").main == "deep"


def test_the_app_is_imported_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cwd_proj.py").write_text(APP + "app = Celery('from-cwd')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_proj", raising=False)

    try:
        assert find_app("cwd_proj").main == "from-cwd"
    finally:
        sys.modules.pop("cwd_proj", None)


# -- errors -----------------------------------------------------------------------------------


def test_nothing_found_names_what_was_tried(write_modules: WriteModules) -> None:
    write_modules({"empty_proj/__init__.py": "app = 'not an app'\n"})

    with pytest.raises(AppNotFound) as info:
        find_app("empty_proj")

    message = str(info.value)
    assert isinstance(info.value, ImproperlyConfigured)
    assert "no chard/Celery app found in 'empty_proj'" in message
    for tried in ("'app'", "'celery'", "'empty_proj.celery' submodule", "any app attribute"):
        assert tried in message
    assert "-A empty_proj:app" in message


def test_a_missing_attribute_after_a_colon_is_named(write_modules: WriteModules) -> None:
    write_modules({"proj13.py": APP + "app = Celery('x')\n"})

    with pytest.raises(AppNotFound) as info:
        find_app("proj13:missing")

    assert "'missing'" in str(info.value)
    assert "'proj13'" in str(info.value)


def test_an_attribute_that_is_not_an_app_after_a_colon(write_modules: WriteModules) -> None:
    write_modules({"proj14.py": "app = 42\n"})

    with pytest.raises(
        AppNotFound, match=r"'app' in module 'proj14' is 42, not a chard/Celery app"
    ):
        find_app("proj14:app")


def test_a_missing_module_says_how_to_run_from_the_project(write_modules: WriteModules) -> None:
    write_modules({})

    with pytest.raises(AppNotFound) as info:
        find_app("no_such_project")

    assert "cannot import 'no_such_project'" in str(info.value)
    assert "PYTHONPATH" in str(info.value)


def test_a_missing_attribute_of_a_module_path(write_modules: WriteModules) -> None:
    write_modules({"proj15.py": APP + "app = Celery('x')\n"})

    with pytest.raises(AppNotFound, match=r"'proj15\.nothing_here'"):
        find_app("proj15.nothing_here")


def test_an_import_error_inside_the_project_is_not_masked(write_modules: WriteModules) -> None:
    write_modules({"broken_proj/__init__.py": "import a_dependency_that_is_missing\n"})

    with pytest.raises(ModuleNotFoundError) as info:
        find_app("broken_proj")

    assert not isinstance(info.value, AppNotFound)
    assert info.value.name == "a_dependency_that_is_missing"


def test_an_import_error_inside_the_celery_submodule_is_not_masked(
    write_modules: WriteModules,
) -> None:
    write_modules(
        {
            "broken_sub/__init__.py": APP + "fallback = Celery('must-not-be-used')\n",
            "broken_sub/celery.py": "from .settings import missing_name\n",
            "broken_sub/settings.py": "",
        }
    )

    with pytest.raises(ImportError, match="missing_name"):
        find_app("broken_sub")


def test_other_errors_inside_the_project_propagate(write_modules: WriteModules) -> None:
    write_modules({"crashing_proj.py": "raise RuntimeError('bad settings')\n"})

    with pytest.raises(RuntimeError, match="bad settings"):
        find_app("crashing_proj")


def test_an_app_instance_is_returned_as_is(write_modules: WriteModules) -> None:
    write_modules({"proj16.py": APP + "app = Celery('same')\n"})

    found = find_app("proj16")

    assert isinstance(found, Celery)
    assert found is imported("proj16").app  # type: ignore[attr-defined]
