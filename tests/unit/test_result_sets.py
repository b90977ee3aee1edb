"""Celery's result API (issue 14): ResultSet, GroupResult's argument order, the result tree.

Over the in-process memory backend and broker; ``collect()`` runs its tasks through
``drain`` (the worker's ``trace_task``), so the stored ``children`` are what a worker
stores.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from chard import Celery, group, states
from chard.backends.base import ResultBackend
from chard.exceptions import ResultTimeout
from chard.protocol.control import REVOKE_CHANNEL, Revocation
from chard.result import (
    AsyncResult,
    GroupResult,
    IncompleteStream,
    ResultSet,
    result_from_tuple,
)
from tests.unit.test_canvas import drain


@pytest.fixture
def backend(app: Celery) -> ResultBackend:
    found = app.backend
    assert found is not None
    return found


def store(backend: ResultBackend, task_id: str, value: Any, state: str = states.SUCCESS) -> None:
    backend.store_result(task_id, value, state)


def test_a_result_set_reports_progress_and_values(app: Celery, backend: ResultBackend) -> None:
    # Given three results, one done, one failed, one pending
    rs = app.ResultSet([app.AsyncResult("a"), app.AsyncResult("b"), app.AsyncResult("c")])
    store(backend, "a", 1)
    store(backend, "b", ValueError("bad"), states.FAILURE)

    # Then the set says so, with one read for all
    assert isinstance(rs, ResultSet)
    assert (rs.completed_count(), rs.ready(), rs.waiting()) == (1, False, True)
    assert (rs.successful(), rs.failed()) == (False, True)

    # When the last one is done, the values come back in order (the error as a value)
    store(backend, "c", 3)
    assert rs.ready()
    assert rs.join(timeout=1, propagate=False)[0::2] == [1, 3]
    with pytest.raises(ValueError, match="bad"):
        rs.join_native(timeout=1)
    with pytest.raises(ValueError, match="bad"):
        rs.get(timeout=1)


@pytest.mark.parametrize("method", ["join", "join_native"])
def test_join_with_a_callback_calls_it_per_member(
    app: Celery, backend: ResultBackend, method: str
) -> None:
    rs = ResultSet([app.AsyncResult("a"), app.AsyncResult("b")], app=app)
    store(backend, "a", 1)
    store(backend, "b", 2)
    seen: list[tuple[str, Any]] = []

    returned = getattr(rs, method)(timeout=1, callback=lambda i, v: seen.append((i, v)))

    assert sorted(seen) == [("a", 1), ("b", 2)]
    assert not returned


def test_join_times_out_over_the_whole_set(app: Celery, backend: ResultBackend) -> None:
    store(backend, "a", 1)
    rs = ResultSet([app.AsyncResult("a"), app.AsyncResult("never")], app=app)
    with pytest.raises(ResultTimeout):
        rs.join(timeout=0.05, interval=0.01)


def test_a_result_set_is_edited_like_celerys(app: Celery) -> None:
    a, b, c = app.AsyncResult("a"), app.AsyncResult("b"), app.AsyncResult("c")
    rs = app.ResultSet([a])
    rs.add(b)
    rs.add(b)  # a member already: no duplicate
    rs.update([b, c])
    assert [r.id for r in rs] == ["a", "b", "c"]
    rs.remove("a")
    rs.discard(a)  # no longer there: no error
    with pytest.raises(KeyError):
        rs.remove(a)
    assert rs == ResultSet([b, c])
    results = rs.results
    rs.clear()
    assert results == []
    assert len(rs) == 0


def test_revoking_a_result_set_revokes_every_member(app: Celery) -> None:
    app.ResultSet([app.AsyncResult("a"), app.AsyncResult("b")]).revoke()

    entries = app.broker.broadcast_read(REVOKE_CHANNEL, "0", timeout=0)
    assert [Revocation.from_payload(payload).ids for _, payload in entries] == [("a", "b")]


def test_group_result_takes_celerys_argument_order(app: Celery) -> None:
    parent = app.AsyncResult("p")
    members = [app.AsyncResult("a"), app.AsyncResult("b")]

    made = GroupResult("g", members, parent)
    by_app = app.GroupResult("g", members, parent=parent)

    assert made.parent is parent
    assert made == by_app
    assert made == "g"
    assert str(made) == "g"
    assert made.as_list() == ["g", "p"]
    assert isinstance(made, ResultSet)
    assert not GroupResult()


def test_results_round_trip_through_celerys_tuples_and_pickle(app: Celery) -> None:
    first = app.AsyncResult("first")
    second = AsyncResult("second", app=app, parent=first)
    grouped = GroupResult("g", [AsyncResult("m1", app=app), second], parent=first, app=app)

    assert second.as_list() == ["second", "first"]
    assert second.as_tuple() == (("second", (("first", None), None)), None)
    rebuilt = result_from_tuple(grouped.as_tuple(), app)
    assert rebuilt == grouped
    assert [r.as_list() for r in rebuilt] == [["m1"], ["second", "first"]]
    assert pickle.loads(pickle.dumps(grouped)) == grouped
    unpickled = pickle.loads(pickle.dumps(second))
    assert (unpickled.id, unpickled.parent) == ("second", first)
    eager = app.tasks["celery.accumulate"].apply((1, 2))
    assert pickle.loads(pickle.dumps(eager)).get() == (1, 2)


def test_collect_walks_what_each_task_sent(app: Celery) -> None:
    # Celery's documented example for AsyncResult.collect()
    @app.task(name="pow2")
    def pow2(i: int) -> int:
        return i**2

    @app.task(name="b")
    def b(i: int) -> Any:
        return pow2.delay(i)

    @app.task(name="a")
    def a(how_many: int) -> Any:
        return group(b.s(i) for i in range(how_many))()

    result = a.delay(4)
    with pytest.raises(IncompleteStream):
        list(result.iterdeps())
    drain(app)

    collected = list(result.collect(timeout=1))
    assert [v for _, v in collected if isinstance(v, int)] == [0, 1, 4, 9]
    assert isinstance(collected[1][0], GroupResult)
    assert result.get_leaf() == 9
    assert result.children is not None
    assert len(result.children) == 1


def test_a_task_without_a_trail_stores_no_children(app: Celery) -> None:
    @app.task(name="leaf")
    def leaf() -> None:
        return None

    @app.task(name="quiet_parent", trail=False)
    def quiet_parent() -> None:
        leaf.delay()

    @app.task(name="parent")
    def parent() -> None:
        leaf.delay()

    quiet, loud = quiet_parent.delay(), parent.delay()
    drain(app)
    assert quiet.children == []
    assert loud.children is not None
    assert [child.as_list() for child in loud.children] == [[loud.children[0].id]]
