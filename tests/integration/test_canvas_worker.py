"""Canvas end to end: real ``chard -A canvasapp worker -P prefork`` processes, SQLite and Redis.

Every canvas example of Celery's "Next steps" guide runs here unchanged, plus the
nested forms, failures and a 1,000-member chord completed by two worker nodes
(four processes) racing on the chord counter.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chard import chain, chord, group
from chard.exceptions import ChordError
from chard.protocol.ids import new_id
from chard.result import AsyncResult, GroupResult
from tests.integration.workers import WorkerFactory, WorkerProcess, project_tasks

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent  # holds the canvasapp package
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture
def canvasapp(transport: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The canvas test project's tasks module, configured for this test's transport."""
    yield from project_tasks("canvasapp", transport, monkeypatch)


def start(workers: WorkerFactory, *args: str) -> WorkerProcess:
    return workers.start(
        "-P", "prefork", *args, app="canvasapp", extra_env={"PYTHONPATH": str(HERE)}
    )


def test_next_steps_guide_examples(canvasapp: Any, workers: WorkerFactory) -> None:
    start(workers, "-c", "2")
    add, mul, xsum = canvasapp.add, canvasapp.mul, canvasapp.xsum

    # Signatures and partials
    assert add.signature((2, 2), countdown=0).delay().get(timeout=10) == 4
    assert add.s(2, 2).delay().get(timeout=10) == 4
    assert add.s(2).delay(8).get(timeout=10) == 10
    # Groups, full and partial
    assert group(add.s(i, i) for i in range(10))().get(timeout=10) == list(range(0, 20, 2))
    assert group(add.s(i) for i in range(10))(10).get(timeout=10) == list(range(10, 20))
    # Chains, full and partial
    assert chain(add.s(4, 4) | mul.s(8))().get(timeout=10) == 64
    assert chain(add.s(4) | mul.s(8))(4).get(timeout=10) == 64
    assert (add.s(4, 4) | mul.s(8))().get(timeout=10) == 64
    # Chords, explicit and upgraded from group | task
    assert chord((add.s(i, i) for i in range(10)), xsum.s())().get(timeout=10) == 90
    assert (group(add.s(i, i) for i in range(10)) | xsum.s())().get(timeout=10) == 90
    # map, starmap, chunks
    assert ~xsum.map([range(10), range(100)]) == [45, 4950]
    assert ~add.starmap(zip(range(10), range(10), strict=True)) == list(range(0, 20, 2))
    chunked = add.chunks(zip(range(100), range(100), strict=True), 10)()
    assert isinstance(chunked, GroupResult)
    assert chunked.get(timeout=10) == [list(range(i, i + 20, 2)) for i in range(0, 200, 20)]
    assert len(add.chunks(zip(range(10), range(10), strict=True), 2).group()().get(timeout=10)) == 5


def test_nested_canvases(canvasapp: Any, workers: WorkerFactory) -> None:
    start(workers, "-c", "2")
    add, mul, xsum = canvasapp.add, canvasapp.mul, canvasapp.xsum
    upload, apply_filter = canvasapp.upload, canvasapp.apply_filter

    filters = ["blur", "sharpen", "crop"]
    fanout = (upload.s("doc") | group(apply_filter.s(f) for f in filters))()
    chain_in_group = group(add.s(1, 1) | mul.s(10), add.s(5, 5) | mul.s(2))()
    group_in_chain = (add.s(1, 1) | group(mul.s(i) for i in range(4)) | xsum.s() | add.s(100))()
    chord_of_chords = chord(
        [chord([add.s(i, i), add.s(i, 1)], xsum.s()) for i in range(4)], xsum.s()
    )()

    assert isinstance(fanout, GroupResult)
    assert fanout.get(timeout=10) == [f"uploaded:doc|{f}" for f in filters]
    assert fanout.parent is not None
    assert fanout.parent.get(timeout=10) == "uploaded:doc"
    assert chain_in_group.get(timeout=10) == [20, 20]
    assert group_in_chain.get(timeout=10) == 112
    assert chord_of_chords.get(timeout=10) == sum(2 * i + i + 1 for i in range(4))

    steps = (add.s(1, 1) | mul.s(3) | mul.s(10))()
    assert steps.get(timeout=10) == 60
    assert isinstance(steps.parent, AsyncResult)
    assert steps.parent.get(timeout=10) == 6


def test_links_and_failures(canvasapp: Any, workers: WorkerFactory) -> None:
    start(workers, "-c", "2")
    add, boom, xsum, collect = canvasapp.add, canvasapp.boom, canvasapp.xsum, canvasapp.collect
    app = add.app

    record_failure = canvasapp.record_failure
    callback_id, errback_id, chord_errback_id = new_id(), new_id(), new_id()
    add.apply_async((2, 2), link=collect.s("linked").set(task_id=callback_id))
    failed = boom.apply_async(link_error=record_failure.s().set(task_id=errback_id))
    assert app.AsyncResult(callback_id).get(timeout=10) == [4, "linked"]
    assert app.AsyncResult(errback_id).get(timeout=10) == [failed.id]

    body = xsum.s()
    body.link_error(record_failure.si("chord failed").set(task_id=chord_errback_id))
    result = chord([add.s(1, 1), boom.s(), add.s(2, 2)], body)()
    with pytest.raises(ChordError) as info:
        result.get(timeout=10, follow_parents=False)
    header = result.parent
    assert isinstance(header, GroupResult)
    assert header.results[1].id in str(info.value)
    assert "ValueError" in str(info.value)
    assert app.AsyncResult(chord_errback_id).get(timeout=10) == ["chord failed"]

    broken_chain = (add.s(1, 1) | boom.s() | add.s(1))()
    with pytest.raises(ValueError, match="boom"):
        broken_chain.get(timeout=10)


def test_group_and_chord_of_1000_on_two_nodes(canvasapp: Any, workers: WorkerFactory) -> None:
    start(workers, "-c", "2", "-n", "a@%h")
    start(workers, "-c", "2", "-n", "b@%h")
    add, xsum, noop = canvasapp.add, canvasapp.xsum, canvasapp.noop

    grouped = group(noop.s(i) for i in range(1000))()
    assert grouped.get(timeout=60) == [None] * 1000
    assert grouped.completed_count() == 1000

    result = chord((add.s(i, i) for i in range(1000)), xsum.s())()
    assert result.get(timeout=60) == sum(range(0, 2000, 2))
    header = result.parent
    assert isinstance(header, GroupResult)
    assert header.completed_count() == 1000


def test_a_group_followed_by_a_group_in_a_chain(canvasapp: Any, workers: WorkerFactory) -> None:
    # Celery's canvas tests: a group then a group (or a chord) in one chain; it hit a
    # RecursionError in the worker sending the chord body and stayed PENDING (issue 10)
    start(workers, "-c", "2")
    add, xsum = canvasapp.add, canvasapp.xsum

    two_groups = chain(group(add.s(1, 1), add.s(2, 2)), group(xsum.s(), xsum.s()), xsum.s())
    assert two_groups.apply_async().get(timeout=30) == 12
    group_then_chord = chain(
        group(add.s(1, 1), add.s(2, 2)), chord([xsum.s(), xsum.s()], xsum.s()), add.s(1)
    )
    assert group_then_chord.apply_async().get(timeout=30) == 13


def test_self_replace_keeps_id_links_chain_and_chord(
    canvasapp: Any, workers: WorkerFactory
) -> None:
    # Celery's most used replace forms (issue 14): by a task, a chain and a group; inside a
    # chain, inside a chord, with a link and an errback that must move to the replacement
    start(workers, "-c", "2")
    add, mul, collect = canvasapp.add, canvasapp.mul, canvasapp.collect
    by_add, by_chain = canvasapp.replace_with_add, canvasapp.replace_with_chain
    by_group, by_boom = canvasapp.replace_with_group, canvasapp.replace_with_boom
    app = add.app

    assert by_add.delay(1).get(timeout=15) == 101
    assert by_group.delay(3).get(timeout=15) == [0, 2, 4]
    in_chain = (add.s(1, 1) | by_chain.s() | mul.s(10))()
    assert in_chain.get(timeout=15) == 60
    assert in_chain.parent is not None
    assert in_chain.parent.get(timeout=15) == 6
    in_chord = chord([by_add.s(1), by_chain.s(2), by_group.s(2), add.s(3, 3)], collect.s())()
    assert in_chord.get(timeout=15) == [[101, 6, [0, 2], 6]]

    callback_id, errback_id = new_id(), new_id()
    linked = by_chain.apply_async((2,), link=collect.s("cb").set(task_id=callback_id))
    failed = by_boom.apply_async(link_error=canvasapp.record_failure.s().set(task_id=errback_id))
    assert linked.get(timeout=15) == 6
    assert app.AsyncResult(callback_id).get(timeout=15) == [6, "cb"]
    with pytest.raises(ValueError, match="boom"):
        failed.get(timeout=15)
    assert app.AsyncResult(errback_id).get(timeout=15) == [failed.id]


def test_chord_errbacks_and_nested_chords(canvasapp: Any, workers: WorkerFactory) -> None:
    # Issue 14: Celery's chord behaviour, on real worker processes
    start(workers, "-c", "2")
    add, boom, xsum, collect = canvasapp.add, canvasapp.boom, canvasapp.xsum, canvasapp.collect
    report, record = canvasapp.report_failure, canvasapp.record_failure
    app = add.app

    # A failing header member: get() re-raises its own error; the member's errbacks run
    # once per failing member, in Celery's (request, exc, traceback) form, inline
    reports = [new_id(), new_id()]
    members = [boom.s().on_error(report.s(report_id)) for report_id in reports]
    failed = chord([*members, add.s(1, 1)], xsum.s())()
    with pytest.raises(ValueError, match="boom"):
        failed.get(timeout=15)
    header = failed.parent
    assert isinstance(header, GroupResult)
    got = sorted(app.AsyncResult(r).get(timeout=15) for r in reports)
    assert got == sorted([m.id, "ValueError", "boom", True] for m in header.results[:2])

    # A chain in a chord whose first step fails: its errback runs and the chord ends
    errback_id = new_id()
    broken = chain(boom.s(), add.s(1)).on_error(record.s().set(task_id=errback_id))
    ended = chord([broken, add.s(2, 2)], xsum.s())()
    with pytest.raises(ChordError):
        ended.get(timeout=15, follow_parents=False)
    chain_result = ended.parent.results[0]  # the chain's last step; its parent failed
    assert app.AsyncResult(errback_id).get(timeout=15) == [chain_result.parent.id]

    # A chord in a chain in a chord, and a header with a group and a chain in it
    inner = chain(add.s(1, 1), chord([add.s(1), add.s(2)], xsum.s()))  # 2 -> [3, 4] -> 7
    assert chord([inner, add.s(10, 10)], xsum.s())().get(timeout=15) == 27
    mixed = chord([add.si(1, 0), chain(add.si(1, 0), add.s(1)), group(add.si(3, 0))], collect.s())
    assert mixed().get(timeout=15) == [[1, 2, 3]]


def test_the_request_carries_priority_and_properties(
    canvasapp: Any, workers: WorkerFactory
) -> None:
    start(workers, "-c", "1")
    seen = canvasapp.whoami.s().set(priority=3).delay().get(timeout=15)
    assert seen["priority"] == 3
    assert seen["properties"]["priority"] == 3
    assert seen["properties"]["correlation_id"]
