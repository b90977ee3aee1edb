"""The dashboard's parts that know no HTTP: metrics text, credentials, task filters (issue 17)."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from chard.config import Settings
from chard.dashboard import graph, metrics, views
from chard.dashboard.auth import COOKIE, Credentials, check_exposure, credentials_from
from chard.events.state import State
from chard.exceptions import ImproperlyConfigured


def event(type_: str, uuid: str, stamp: float, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "uuid": uuid, "hostname": "w1@h", "timestamp": stamp, **fields}


def fed(*events: dict[str, Any]) -> tuple[State, metrics.Metrics]:
    state, counted = State(), metrics.Metrics()
    for e in events:
        state.event(e)
        counted.observe(e, state)
    return state, counted


# -- metrics ------------------------------------------------------------------------
def test_runtime_histogram_buckets_are_cumulative_and_counted_by_task_name() -> None:
    _, counted = fed(
        event("task-received", "a", 1.0, name="proj.add"),
        event("task-succeeded", "a", 2.0, runtime=0.02),
        event("task-received", "b", 3.0, name="proj.add"),
        event("task-failed", "b", 4.0, runtime=3.0, exception="E"),
    )
    text = metrics.render(
        counted, kept_by_state={}, queue_lengths={"celery": 4}, dead_letters=2, workers_online=1
    )
    lines = set(text.splitlines())
    assert 'chard_task_events_total{task="proj.add",state="SUCCESS"} 1' in lines
    assert 'chard_task_events_total{task="proj.add",state="FAILURE"} 1' in lines
    assert 'chard_task_runtime_seconds_bucket{task="proj.add",le="0.01"} 0' in lines
    assert 'chard_task_runtime_seconds_bucket{task="proj.add",le="0.025"} 1' in lines
    assert 'chard_task_runtime_seconds_bucket{task="proj.add",le="2.5"} 1' in lines
    assert 'chard_task_runtime_seconds_bucket{task="proj.add",le="5.0"} 2' in lines
    assert 'chard_task_runtime_seconds_bucket{task="proj.add",le="+Inf"} 2' in lines
    assert 'chard_task_runtime_seconds_count{task="proj.add"} 2' in lines
    assert 'chard_queue_length{queue="celery"} 4' in lines
    assert "chard_dead_letters 2" in lines
    assert "# TYPE chard_task_runtime_seconds histogram" in lines


def test_label_values_are_escaped() -> None:
    labels = metrics._labels(task='we"ird\\name\nx')
    assert labels == '{task="we\\"ird\\\\name\\nx"}'


def test_events_of_unknown_tasks_are_counted_as_unknown() -> None:
    _, counted = fed(event("task-succeeded", "late", 1.0, runtime=0.1))
    assert counted.events == {("unknown", "SUCCESS"): 1}


# -- credentials --------------------------------------------------------------------
def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_credentials_let_in_the_right_token_basic_auth_or_cookie_only() -> None:
    creds = Credentials(token="t0ken", basic=("ann", "pw"))
    assert creds.allows("Bearer t0ken", None)
    assert creds.allows(basic("ann", "pw"), None)
    assert creds.allows(None, f"{COOKIE}={creds.session}; other=1")
    assert not creds.allows(None, None)
    assert not creds.allows("Bearer t0ke", None)
    assert not creds.allows(basic("ann", "no"), None)
    assert not creds.allows("Basic !!notbase64", None)
    assert not creds.allows(None, f"{COOKIE}=forged")
    assert "t0ken" not in creds.session


def test_no_credentials_is_open_and_only_allowed_on_loopback() -> None:
    open_ = Credentials()
    assert open_.allows(None, None)
    check_exposure("127.0.0.1", open_)
    check_exposure("::1", open_)
    check_exposure("localhost", open_)
    with pytest.raises(ImproperlyConfigured, match=re.escape("listen on 0.0.0.0 without a login")):
        check_exposure("0.0.0.0", open_)
    check_exposure("0.0.0.0", Credentials(token="x"))


def test_csrf_needs_the_value_and_no_foreign_origin() -> None:
    creds = Credentials()
    assert creds.csrf_ok(creds.csrf, None, "h:1")
    assert creds.csrf_ok(creds.csrf, "http://h:1", "h:1")
    assert not creds.csrf_ok(creds.csrf, "http://evil.example", "h:1")
    assert not creds.csrf_ok(None, None, "h:1")
    assert not creds.csrf_ok("guess", None, "h:1")


def test_basic_auth_setting_must_be_user_colon_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARD_DASHBOARD_BASIC_AUTH", "justauser")
    with pytest.raises(ImproperlyConfigured, match="must be 'user:password'"):
        credentials_from(Settings())
    monkeypatch.setenv("CHARD_DASHBOARD_BASIC_AUTH", "ann:p:w")
    assert credentials_from(Settings()).basic == ("ann", "p:w")


# -- task filters -------------------------------------------------------------------
def test_task_filter_matches_each_field() -> None:
    state, _ = fed(
        event("task-received", "abc123", 10.0, name="proj.add", args="(1, 2)", kwargs="{}"),
        event("task-succeeded", "abc123", 11.0, runtime=0.1),
    )
    task = state.tasks["abc123"]
    assert views.TaskFilter(state="SUCCESS", name="add", worker="w1@h", id="abc").matches(task)
    assert views.TaskFilter(search="1, 2", since=11.0, until=11.0).matches(task)
    assert not views.TaskFilter(state="FAILURE").matches(task)
    assert not views.TaskFilter(search="zzz").matches(task)
    assert not views.TaskFilter(since=12.0).matches(task)


def test_a_malformed_filter_is_a_400_naming_the_value() -> None:
    with pytest.raises(views.ApiError, match="state='DONE' is not a task state") as info:
        views.TaskFilter(state="DONE").check()
    assert info.value.status == 400


# -- the OpenAPI document -----------------------------------------------------------
def test_the_openapi_document_names_every_api_route_and_no_other() -> None:
    from starlette.routing import Route

    from chard import Celery
    from chard.dashboard.api import create_app
    from chard.dashboard.monitor import Monitor
    from chard.dashboard.openapi import openapi_document

    app = create_app(Monitor(Celery("doc", broker="memory://")), Credentials())
    routed = {
        (method.lower(), route.path)
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith(("/api/", "/metrics"))
        for method in (route.methods or ()) - {"HEAD"}
    }
    document = openapi_document()
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert routed == documented


# -- charts -------------------------------------------------------------------------
def test_throughput_buckets_count_ends_and_runtime_percentiles() -> None:
    from chard.dashboard.charts import throughput

    state, _ = fed(
        *[event("task-succeeded", f"s{i}", 100.0 + i, runtime=float(i + 1)) for i in range(10)],
        event("task-failed", "f1", 115.0, exception="E"),
        event("task-succeeded", "old", 50.0, runtime=1.0),  # before the span
        event("task-received", "r1", 101.0, name="x"),  # not ended
    )
    buckets = throughput(state.tasks.values(), now=120.0, span=20.0, step=10.0)
    assert [(b["start"], b["succeeded"], b["failed"]) for b in buckets] == [
        (100.0, 10, 0),
        (110.0, 0, 1),
    ]
    assert (buckets[0]["p50"], buckets[0]["p90"], buckets[0]["p99"]) == (5.0, 9.0, 10.0)
    assert buckets[1]["p50"] is None


# -- the workflow graph -------------------------------------------------------------
def columns_of(drawing: dict[str, Any]) -> dict[str, int]:
    return {n["id"]: n["x"] // (graph.BOX_W + graph.GAP_X) for n in drawing["nodes"]}


def test_a_chain_is_drawn_as_a_sequence_and_a_chord_as_header_then_body() -> None:
    state, _ = fed(
        # a chain a -> b -> c: each step sent by the previous, one root
        event("task-received", "a", 1.0, name="p.first", root_id="a"),
        event("task-received", "b", 2.0, name="p.second", root_id="a", parent_id="a"),
        event("task-received", "c", 3.0, name="p.third", root_id="a", parent_id="b"),
        # a chord [h1, h2] -> body: members of one group naming the body; the body sent
        # by the member that finished last
        event("task-received", "h1", 4.0, name="p.h", root_id="h1", group_id="g",
              chord_body_id="body"),
        event("task-received", "h2", 4.5, name="p.h", root_id="h2", group_id="g",
              chord_body_id="body"),
        event("task-received", "body", 6.0, name="p.sum", root_id="h2", parent_id="h2"),
        event("task-received", "alone", 7.0, name="p.other"),
    )  # fmt: skip
    chain = graph.layout(graph.related(state.tasks["b"], graph.in_memory(state.tasks)), "b")
    assert columns_of(chain) == {"a": 0, "b": 1, "c": 2}
    assert {(e["from"], e["to"]) for e in chain["edges"]} == {("a", "b"), ("b", "c")}
    assert [n["id"] for n in chain["nodes"] if n["current"]] == ["b"]

    chord = graph.layout(graph.related(state.tasks["h1"], graph.in_memory(state.tasks)), "h1")
    assert columns_of(chord) == {"h1": 0, "h2": 0, "body": 1}
    assert {(e["from"], e["to"]) for e in chord["edges"]} == {("h1", "body"), ("h2", "body")}

    single = graph.related(state.tasks["alone"], graph.in_memory(state.tasks))
    assert [t.uuid for t in single] == ["alone"]


def test_a_large_workflow_is_cut() -> None:
    state, _ = fed(
        event("task-received", "root", 0.0, name="p.fan", root_id="root"),
        *[event("task-received", f"k{i}", 1.0 + i, root_id="root", parent_id="root")
          for i in range(100)],
    )  # fmt: skip
    flow = graph.related(state.tasks["root"], graph.in_memory(state.tasks))
    assert len(flow) == graph.MAX_NODES


def test_a_filter_with_a_nul_character_is_a_400() -> None:
    with pytest.raises(views.ApiError, match="search contains a NUL character") as info:
        views.TaskFilter(search="a\x00b").check()
    assert info.value.status == 400
