"""Chord completion: count finished header tasks atomically; the last one sends the body.

Celery counts with a Redis-only Lua script, and falls back to ``celery.chord_unlock``
(a task that polls the header every second) on other backends. chard needs only
the backend's atomic ``incr``, so every backend gets the same push-style join:

1. The client saves the header's task ids (``save_group``, Celery's
   ``celery-taskset-meta-<gid>`` key) *before* publishing, and embeds the body
   with ``chord_size`` in every header message.
2. A header task that succeeded (its result is already stored) increments a
   per-member marker ``<gid key>.cm.<group_index>``. Only the first increment
   (marker == 1) goes on to increment the count ``<gid key>.cn``: a redelivered
   header task (worker lost, ``acks_late``) therefore never counts twice.
3. The task that brings the count to ``chord_size`` claims the chord with
   ``<gid key>.cc`` (first increment wins, so the body is sent once even if two
   deliveries race), reads every header result in order with one ``get_many``
   and sends the body with that list.
4. A header failure claims the chord too and fails it: the body's result (and the
   chain steps after it) become :class:`ChordError` naming the failed task, and the
   body's errbacks run. Later header results are ignored.

A chord sent by Celery (or by chard with ``chard_celery_compat``) has no ``chord_size``
in its body: its header tasks join it Celery's way instead (the Redis backend's ``.j``
zset, ``.s`` size, ``.d`` seen-set and ``.c`` claim, one script per end, as Celery 5.7
does), so chard and Celery workers complete each other's chords.

The one window this leaves: a worker dying *between* its marker and count
increments. Its redelivery sees marker > 1 and does not count, so instead it checks
the stored results of all members; when all succeeded it claims and sends the body
(the claim keeps this exactly-once). Every key expires with ``result_expires``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from chard import states
from chard.backends.base import decode_exception
from chard.canvas.primitives import chain
from chard.canvas.signature import Signature, _as_list, maybe_signature
from chard.exceptions import ChordError
from chard.task import Context

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.backends.base import ResultBackend

logger = logging.getLogger("chard.canvas")


def on_part_return(app: Celery, request: Context, state: str, value: Any) -> None:
    """Record that header task ``request`` finished in ``state``; send or fail the body."""
    backend = app.backend
    if backend is None or not request.group or not request.chord:
        logger.error("Chord member %s has no group or result backend; body not sent", request.id)
        return
    if "chord_size" not in request.chord:  # sent by Celery, or by chard_celery_compat
        _celery_part_return(app, backend, request, state, value)
        return
    key = backend.group_key(request.group)
    if state != states.SUCCESS:
        if backend.incr(key + ".cc") == 1:
            error = ChordError(f"Dependency {request.id} raised {value!r}")
            fail_body(app, request.chord, error, request)
        return
    member = request.group_index if request.group_index is not None else request.id
    if backend.incr(f"{key}.cm.{member}") == 1:
        if backend.incr(key + ".cn") < int(request.chord.get("chord_size") or 0):
            return
    elif not _all_ready(backend, request.group):
        return  # a redelivered member: counted already, and the chord is not done
    if backend.incr(key + ".cc") != 1:
        return  # another worker sent the body (or the chord failed)
    _send_body(app, backend, request)


def _all_ready(backend: ResultBackend, group_id: str) -> bool:
    ids = backend.restore_group(group_id)
    if not ids:
        return False
    return all(m["status"] in states.READY_STATES for m in backend.get_many(ids))


def _send_body(app: Celery, backend: ResultBackend, request: Context) -> None:
    """Send the body with the header results in ``group_index`` order."""
    chord = request.chord or {}
    ids = backend.restore_group(str(request.group))
    if ids is None:
        error = ChordError(
            f"chord {request.group} lost its member list (expired? result_expires too short)"
        )
        fail_body(app, chord, error, request)
        return
    metas = backend.get_many(ids)
    members = [
        (tid, m["status"], m["result"], m.get("traceback"))
        for tid, m in zip(ids, metas, strict=True)
    ]
    _join(app, request, members)


def _celery_part_return(
    app: Celery, backend: ResultBackend, req: Context, state: str, value: Any
) -> None:
    """``chard_celery_compat``: count with Celery's Redis keys, so that Celery workers and
    chard workers join the same chord whoever sent it (Celery's rule: the body waits for
    every member, and any failed member then fails it)."""
    join = backend.celery_chord_part(str(req.group), str(req.id), state, value, req.group_index)
    if join is None:
        return
    try:
        _join(app, req, [(*member, None) for member in join.members])
    finally:
        backend.celery_chord_done(join)


def _join(app: Celery, request: Context, members: list[tuple[str, str, Any, Any]]) -> None:
    """Send the body with the members' results in order, or fail it on a failed member.

    ``members``: ``(task_id, state, stored result, traceback or None)`` in order.
    """
    chord = request.chord or {}
    values = []
    for task_id, state, result, traceback in members:
        if state in states.PROPAGATE_STATES:
            exc = decode_exception(result, traceback)
            fail_body(app, chord, ChordError(f"Dependency {task_id} raised {exc!r}"), request)
            return
        values.append(result)
    body = Signature.from_dict(chord, app=app)
    try:
        body.apply_async((values,), parent_id=request.id, root_id=request.root_id or request.id)
    except Exception as exc:  # e.g. a header result the body's message cannot encode
        logger.error("Chord %s could not send its body: %r", request.group, exc, exc_info=True)
        fail_body(app, chord, ChordError(f"chord body could not be sent: {exc!r}"), request)


def task_ids(sig: Mapping[str, Any]) -> list[str]:
    """Every task id a signature would run: its own, a group's or chain's members', a
    chord's header and body. Ids not frozen yet are left out (nobody can wait on them).
    """
    kind, kwargs = sig.get("subtask_type"), sig.get("kwargs") or {}
    if kind in ("group", "chain"):
        return [task_id for member in kwargs.get("tasks") or () for task_id in task_ids(member)]
    if kind == "chord":
        parts = [kwargs.get("header"), kwargs.get("body")]
        return [task_id for part in parts if part for task_id in task_ids(part)]
    task_id = (sig.get("options") or {}).get("task_id")
    return [str(task_id)] if task_id else []


def fail_body(app: Celery, body_dict: dict[str, Any], error: ChordError, request: Context) -> None:
    """Mark the body (every step of it, and the chain after it) failed; run its errbacks.

    Storing the failure on the steps that will now never run lets ``get()`` on any
    of them raise at once instead of waiting forever.
    """
    body = Signature.from_dict(body_dict, app=app)
    body.freeze()
    steps = list(body.tasks) if isinstance(body, chain) else [body]
    last_opts = steps[-1]["options"]
    following = [maybe_signature(d, app) for d in _as_list(last_opts.get("chain"))]
    logger.warning("Chord %s failed: %s", request.group, error)
    body_id = str(steps[0].id)
    backend = app.backend
    if backend is not None:
        for step in [*steps, *following]:
            extra = {"parent_id": request.id, "group_id": step["options"].get("group_id")}
            for task_id in task_ids(step):
                backend.store_result(task_id, error, states.FAILURE, None, extra)
    errbacks: dict[str, Signature[Any]] = {}
    for step in steps:
        for errback in _as_list(step["options"].get("link_error")):
            sig = maybe_signature(errback, app)
            errbacks.setdefault(json.dumps(sig.to_dict(), sort_keys=True, default=str), sig)
    for sig in errbacks.values():
        sig.apply_async((body_id,), parent_id=body_id)
    if last_opts.get("chord") and last_opts.get("group_id"):  # the body is a chord member
        outer = Context(
            id=str(steps[-1].id),
            group=last_opts["group_id"],
            group_index=last_opts.get("group_index"),
            chord=last_opts["chord"],
            root_id=request.root_id,
        )
        on_part_return(app, outer, states.FAILURE, error)
