"""Routing: Celery's ``task_routes`` forms, resolved to options for one task name."""

from __future__ import annotations

import re
from typing import Any

import pytest

from chard.exceptions import ImproperlyConfigured
from chard.routing import route


def find(routes: Any, name: str = "proj.tasks.add", **options: Any) -> dict[str, Any]:
    return route(routes, name, (1, 2), {}, options)


def test_no_routes_route_nothing() -> None:
    assert find(None) == {}
    assert find({}) == {}
    assert find([]) == {}


def test_exact_name_with_an_options_dict() -> None:
    routes = {"proj.tasks.add": {"queue": "math", "priority": 3}}

    assert find(routes) == {"queue": "math", "priority": 3}
    assert find(routes, "proj.tasks.other") == {}


def test_a_string_value_is_a_queue_name() -> None:
    assert find({"proj.tasks.add": "math"}) == {"queue": "math"}


def test_the_returned_options_are_a_copy() -> None:
    routes = {"proj.tasks.add": {"queue": "math"}}

    find(routes)["queue"] = "changed"

    assert routes["proj.tasks.add"] == {"queue": "math"}


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("proj.tasks.*", "proj.tasks.add", True),
        ("proj.tasks.*", "proj.other.add", False),
        ("proj.*.add", "proj.tasks.add", True),
        ("proj.tasks.ad?", "proj.tasks.add", True),
        ("proj.tasks.[ab]dd", "proj.tasks.add", True),
        ("PROJ.tasks.*", "proj.tasks.add", False),  # case-sensitive, as Celery's
    ],
)
def test_glob_patterns(pattern: str, name: str, matches: bool) -> None:
    assert find({pattern: "q"}, name) == ({"queue": "q"} if matches else {})


def test_an_exact_name_beats_an_earlier_glob() -> None:
    routes = {"proj.tasks.*": "glob", "proj.tasks.add": "exact"}

    assert find(routes) == {"queue": "exact"}


def test_a_plain_key_is_not_a_prefix() -> None:
    assert find({"proj.tasks": "q"}) == {}


def test_compiled_regex_keys() -> None:
    routes = {re.compile(r"^proj\.(tasks|jobs)\."): {"queue": "re"}}

    assert find(routes, "proj.jobs.resize") == {"queue": "re"}
    assert find(routes, "other.proj.tasks.x") == {}


def test_callable_router_gets_celerys_arguments() -> None:
    seen: list[tuple[Any, ...]] = []

    def router(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        seen.append((name, args, kwargs, dict(options), task))
        return {"queue": "called"}

    result = route(router, "proj.tasks.add", (1,), {"x": 2}, {"countdown": 3}, task="the-task")

    assert result == {"queue": "called"}
    assert seen == [("proj.tasks.add", (1,), {"x": 2}, {"countdown": 3}, "the-task")]


def test_callable_router_may_return_a_queue_name_or_none() -> None:
    assert find(lambda *a, **k: "by-name") == {"queue": "by-name"}
    assert find(lambda *a, **k: None) == {}


def test_a_list_of_routers_is_tried_in_order() -> None:
    routes = [
        lambda name, *a, **k: None,  # declines
        {"proj.other": "no"},  # does not match
        {"proj.tasks.*": "second"},
        {"proj.tasks.add": "third"},  # never reached
    ]

    assert find(routes) == {"queue": "second"}
    assert find(tuple(routes)) == {"queue": "second"}


def test_an_empty_route_lets_the_next_router_answer() -> None:
    assert find([lambda *a, **k: {}, {"proj.tasks.add": "next"}]) == {"queue": "next"}


@pytest.mark.parametrize("entry", [42, 1.5, object()])
def test_an_entry_that_is_not_a_dict_or_callable_is_an_error(entry: Any) -> None:
    with pytest.raises(ImproperlyConfigured, match=re.escape(f"task_routes entry {entry!r}")):
        find([entry])


# -- Celery's other forms (issue 14): string routers, legacy router classes, lists of pairs --


def route_by_prefix(name: str, args: Any, kwargs: Any, options: Any, task: Any = None) -> Any:
    """A router function, named in task_routes by its dotted path."""
    return {"queue": name.rpartition(".")[0]} if name.startswith("proj.") else None


class LegacyRouter:
    """A Celery 3 router class: instantiated once, asked through route_for_task."""

    def route_for_task(self, task: str, args: Any = None, kwargs: Any = None) -> Any:
        return "legacy" if task.endswith(".add") else None


def test_a_string_names_a_router_function() -> None:
    routes = ["tests.unit.test_routing.route_by_prefix"]

    assert find(routes) == {"queue": "proj.tasks"}
    assert find("tests.unit.test_routing:route_by_prefix") == {"queue": "proj.tasks"}
    assert find(routes, "other.add") == {}


def test_a_string_names_a_legacy_router_class() -> None:
    assert find(("tests.unit.test_routing.LegacyRouter",)) == {"queue": "legacy"}
    assert find([LegacyRouter], "proj.tasks.mul") == {}
    assert find([LegacyRouter()]) == {"queue": "legacy"}


def test_a_list_of_pairs_is_a_map_in_order() -> None:
    routes = ([("proj.*", {"queue": "first"}), ("proj.tasks.*", "second")],)

    assert find(routes) == {"queue": "first"}
    assert find([[("proj.*", "first"), ("proj.tasks.add", "exact")]]) == {"queue": "exact"}


def test_a_router_path_that_cannot_be_imported_is_one_clear_error() -> None:
    with pytest.raises(
        ImproperlyConfigured,
        match=r"task_routes names router 'proj\.nowhere\.route', which cannot be imported: .*"
        r"give it as 'package\.module\.function'",
    ):
        find(["proj.nowhere.route"])


def test_a_router_path_naming_something_else_is_an_error() -> None:
    with pytest.raises(ImproperlyConfigured, match="not a router function or class"):
        find(["tests.unit.test_routing.__doc__"])


@pytest.mark.parametrize("value", [42, ["q"], object()])
def test_a_route_value_that_is_not_a_queue_or_dict_is_an_error(value: Any) -> None:
    with pytest.raises(TypeError, match="a route must be a queue name or an options dict"):
        find({"proj.tasks.add": value})


def test_a_callable_returning_nonsense_is_an_error() -> None:
    with pytest.raises(TypeError, match="a route must be"):
        find(lambda *a, **k: 7)
