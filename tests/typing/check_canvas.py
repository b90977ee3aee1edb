"""Type checks for the canvas: signatures, chain, group, chord and chunks.

mypy checks this module (``scripts/check``); nothing runs it. A signature carries
its task's result type; a group (and chunks, which sends one) returns a
GroupResult; a chord returns its body's result.
"""

from __future__ import annotations

from typing import Any, assert_type

from chard import (
    AsyncResult,
    Celery,
    GroupResult,
    Signature,
    chain,
    chord,
    chunks,
    group,
    signature,
)


def check_signatures(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert_type(add.s(1, 2), Signature[int])
    assert_type(add.s(1), Signature[int])  # partial: the rest comes from a parent's result
    assert_type(add.si(1, 2), Signature[int])
    assert_type(add.signature((1, 2), countdown=1), Signature[int])
    assert_type(add.s(1, 2).delay(), AsyncResult[int])
    assert_type(add.s(1).delay(2), AsyncResult[int])
    assert_type(add.s(1, 2).apply_async(), AsyncResult[int])
    assert_type(add.s(1, 2).apply_async(queue="hipri"), AsyncResult[int])
    assert_type(add.s(1, 2)(), int)
    assert_type(add.s(1, 2).delay().get(), int)
    assert_type(add.s(1, 2).clone(), Signature[int])
    assert_type(add.s(1, 2).set(queue="hipri"), Signature[int])
    assert_type(add.map([(1, 2)]), Signature[list[int]])
    assert_type(add.starmap([(1, 2)]), Signature[list[int]])
    # By name, the result type is unknown.
    assert_type(signature("proj.add", (1, 2)), Signature[Any])
    assert_type(Signature("proj.add", (1, 2)), Signature[Any])
    assert_type(Signature(add, (1, 2)), Signature[int])


def check_chain(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def double(x: int) -> int:
        return 2 * x

    assert_type(chain(add.s(1, 2), double.s()).apply_async(), AsyncResult[Any])
    assert_type(chain(add.s(1, 2), double.s())(), AsyncResult[Any])
    piped = add.s(1, 2) | double.s()
    assert_type(piped, Signature[Any])
    assert_type(piped.delay(), AsyncResult[Any])
    assert_type((add.s(1, 2) | double.s() | double.s()).apply_async(), AsyncResult[Any])


def check_group(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    members = group(add.s(i, i) for i in range(3))
    assert_type(members.apply_async(), GroupResult)
    assert_type(members.delay(), GroupResult)
    assert_type(members(), GroupResult)
    assert_type(members.apply_async().get(timeout=1.0), list[Any])
    assert_type(group([add.s(1, 2), add.s(3, 4)]).apply_async(), GroupResult)


def check_chord(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def xsum(values: list[int]) -> int:
        return sum(values)

    header = [add.s(i, i) for i in range(3)]
    assert_type(chord(header)(xsum.s()), AsyncResult[int])
    assert_type(chord(header, xsum.s()), chord[int])
    assert_type(chord(header, xsum.s())(), AsyncResult[int])
    assert_type(chord(header, xsum.s()).apply_async(), AsyncResult[int])
    assert_type(chord(header, xsum.s()).delay().get(), int)
    assert_type(chord(group(header), xsum.s())(), AsyncResult[int])
    assert_type(chord(header)(), AsyncResult[Any])
    assert_type(chord(header)({"task": "proj.xsum"}), AsyncResult[Any])
    assert_type(group(header) | xsum.s(), Signature[Any])


def check_chunks(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    parts = add.chunks([(1, 2), (3, 4)], 1)
    assert_type(parts, chunks)
    # Sending chunks sends a group, one member per chunk (see Celery's canvas).
    assert_type(parts.apply_async(), GroupResult)
    assert_type(parts.delay(), GroupResult)
    assert_type(parts(), GroupResult)
    assert_type(parts.group(), group)
    assert_type(chunks(add.s(), [(1, 2)], 1).apply_async(), GroupResult)
