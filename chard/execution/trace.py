"""Run one task body and record its outcome: the single path for eager calls and workers.

``trace_task`` sets the request context, calls the body (``async def`` bodies on
this thread's event loop), turns the outcome into a state (SUCCESS, FAILURE, RETRY
...), stores it, calls the class hooks and signals, and sends follow-up work
(links, the next step of a chain). Message concerns (decoding, expiry, acks,
redelivery) belong to the worker, not here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
import time
import traceback as tb
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chard import _context, signals, states
from chard._utils.log import saferepr
from chard.exceptions import Ignore, Reject, Retry
from chard.protocol.message import new_id
from chard.result import EagerResult
from chard.task import Context, Task, exponential_backoff

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger("chard.task")

_local = threading.local()


@dataclass(frozen=True)
class TraceResult:
    """The outcome of one run of a task body."""

    state: str
    value: Any = None
    traceback: str | None = None
    runtime: float = 0.0
    #: For REJECTED: put the message back on the queue.
    requeue: bool = False


def _event_loop() -> asyncio.AbstractEventLoop:
    """Return this thread's event loop for ``async def`` tasks, kept across tasks."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
    return loop


def _call_body(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    value = task.run(*args, **kwargs)
    if not asyncio.iscoroutine(value):
        return value
    if _loop_is_running():
        # Eager apply() from async code: this thread's loop is busy, so run the body on a
        # helper thread's loop, in this context (the request stays visible).
        context = contextvars.copy_context()
        with concurrent.futures.ThreadPoolExecutor(1, "chard-eager-async") as pool:
            return pool.submit(context.run, asyncio.run, value).result()
    return _event_loop().run_until_complete(value)


def _loop_is_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _call_with_autoretry(
    task: Task[Any, Any], request: Context, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if not task.autoretry_for:
        return _call_body(task, args, kwargs)
    try:
        return _call_body(task, args, kwargs)
    except Retry:
        raise
    except task.autoretry_for as exc:
        options = dict(task.retry_kwargs)
        countdown = options.pop("countdown", None)
        if task.retry_backoff:
            countdown = exponential_backoff(
                float(task.retry_backoff),
                request.retries,
                task.retry_backoff_max,
                full_jitter=task.retry_jitter,
            )
        task.retry(exc=exc, countdown=countdown, **options)
        raise  # unreachable: retry() raises; keeps type checkers informed


def _should_store(task: Task[Any, Any], request: Context, app: Celery) -> bool:
    if app.backend is None or request.ignore_result:
        return False
    return not task.option("ignore_result")


def _extra_meta(task: Task[Any, Any], request: Context, app: Celery) -> dict[str, Any]:
    extra: dict[str, Any] = {"parent_id": request.parent_id, "group_id": request.group}
    if app.conf.result_extended:
        extra.update(
            name=task.name,
            args=list(request.args),
            kwargs=request.kwargs,
            worker=request.hostname,
            retries=request.retries,
            queue=request.delivery_info.get("routing_key"),
        )
    return extra


def trace_task(task: Task[Any, Any], request: Context, *, store: bool = True) -> TraceResult:
    """Run ``task`` for ``request`` and record the outcome; never raises for task errors."""
    app = task.app
    task_id = request.id or ""
    args, kwargs = request.args, request.kwargs
    should_store = store and _should_store(task, request, app)
    extra = _extra_meta(task, request, app) if should_store else {}
    token = _context.push_request(request)
    signals.task_prerun.send(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)
    started = time.perf_counter()
    try:
        task.before_start(task_id, args, kwargs)
        value = _call_with_autoretry(task, request, args, kwargs)
    except Retry as retry:
        outcome = _on_retry(task, request, retry, should_store, extra)
    except Ignore:
        outcome = TraceResult(states.IGNORED)
    except Reject as reject:
        outcome = TraceResult(states.REJECTED, reject.reason, requeue=reject.requeue)
    except Exception as exc:
        outcome = _on_failure(task, request, exc, should_store, extra)
    else:
        outcome = TraceResult(states.SUCCESS, value)
        if should_store:
            app.backend.store_result(task_id, value, states.SUCCESS, None, extra)  # type: ignore[union-attr]
        task.on_success(value, task_id, args, kwargs)
        signals.task_success.send(sender=task, result=value)
        if not request.is_eager:
            send_followups(app, request, value)
    finally:
        _context.pop_request(token)
    runtime = time.perf_counter() - started
    task.after_return(outcome.state, outcome.value, task_id, args, kwargs, None)
    signals.task_postrun.send(
        sender=task,
        task_id=task_id,
        task=task,
        args=args,
        kwargs=kwargs,
        retval=outcome.value,
        state=outcome.state,
    )
    return TraceResult(outcome.state, outcome.value, outcome.traceback, runtime, outcome.requeue)


def _on_retry(
    task: Task[Any, Any], request: Context, retry: Retry, store: bool, extra: dict[str, Any]
) -> TraceResult:
    reason = retry.exc if retry.exc is not None else retry
    trace = "".join(tb.format_exception(reason)) if retry.exc is not None else None
    if store:
        task.app.backend.store_result(request.id or "", reason, states.RETRY, trace, extra)  # type: ignore[union-attr]
    task.on_retry(reason, request.id or "", request.args, request.kwargs, trace)
    signals.task_retry.send(sender=task, request=request, reason=reason, einfo=trace)
    return TraceResult(states.RETRY, reason, trace)


def _on_failure(
    task: Task[Any, Any], request: Context, exc: Exception, store: bool, extra: dict[str, Any]
) -> TraceResult:
    trace = "".join(tb.format_exception(exc))
    if store:
        task.app.backend.store_result(request.id or "", exc, states.FAILURE, trace, extra)  # type: ignore[union-attr]
    task.on_failure(exc, request.id or "", request.args, request.kwargs, trace)
    signals.task_failure.send(
        sender=task,
        task_id=request.id,
        exception=exc,
        args=request.args,
        kwargs=request.kwargs,
        traceback=trace,
        einfo=trace,
    )
    if not request.is_eager:
        send_errbacks(task.app, request, exc)
    return TraceResult(states.FAILURE, exc, trace)


def send_followups(app: Celery, request: Context, value: Any) -> None:
    """Send what runs after a success: link callbacks, the next chain step, chord counting.

    The next step of a chain is the *last* element of the embed's ``chain`` list
    (Celery sends it reversed); it is sent with the rest, so each worker in turn
    sends one step. A chord header task reports to the chord, whose last member
    sends the body (:func:`chard.canvas.on_chord_part_return`).
    """
    from chard.canvas.signature import Signature
    from chard.execution.chord import on_part_return as on_chord_part_return

    root_id = request.root_id or request.id
    for callback in request.callbacks or ():
        Signature.from_dict(callback, app=app).apply_async(
            (value,), parent_id=request.id, root_id=root_id
        )
    if request.chain:
        *rest, following = request.chain
        step = Signature.from_dict(following, app=app)
        step.apply_async((value,), chain=rest or None, parent_id=request.id, root_id=root_id)
    if request.chord:
        on_chord_part_return(app, request, states.SUCCESS, value)


def send_errbacks(app: Celery, request: Context, exc: BaseException) -> None:
    """Send the error callbacks of a failed task (with the failed task's id, as Celery does).

    The chain steps that will now never run get the same failure stored, so that
    ``chain(...)().get()`` raises at once instead of waiting forever (Celery gets
    the same effect by re-checking parents while it waits; their state is FAILURE
    here where Celery leaves PENDING). A chord header member fails its chord.
    """
    from chard.canvas.signature import Signature
    from chard.execution.chord import on_part_return as on_chord_part_return

    for errback in request.errbacks or ():
        sig = Signature.from_dict(errback, app=app)
        sig.apply_async((request.id,), parent_id=request.id)
    end_chain(app, request, exc, states.FAILURE)
    if request.chord:
        on_chord_part_return(app, request, states.FAILURE, exc)


def end_chain(app: Celery, request: Context, exc: BaseException, state: str) -> None:
    """Store ``exc`` in ``state`` for the chain steps after ``request``: they will never run.

    A failed task ends its chain FAILURE; a revoked one, REVOKED. Steps that are
    groups or chords have no single id and are left alone.
    """
    backend = app.backend
    if backend is None:
        return
    for step in request.chain or ():
        step_id = (step.get("options") or {}).get("task_id")
        if step_id and not step.get("subtask_type"):
            backend.store_result(step_id, exc, state, None, {"parent_id": request.id})


def apply_eagerly(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> EagerResult[Any]:
    """Run ``task`` inline as a worker would (``apply()`` and ``task_always_eager``)."""
    app = task.app
    task_id = options.get("task_id") or new_id()
    request = Context(
        id=task_id,
        args=args,
        kwargs=kwargs,
        is_eager=True,
        called_directly=False,
        root_id=options.get("root_id") or task_id,
        parent_id=options.get("parent_id"),
        headers=dict(options.get("headers") or {}),
        hostname="eager",
        delivery_info={"routing_key": options.get("queue")},
    )
    store = bool(app.conf.task_store_eager_result)
    while True:
        outcome = trace_task(task, request, store=store)
        if outcome.state != states.RETRY:
            break
        request = Context(**{**request.__dict__, "retries": request.retries + 1})
    _apply_eager_links(app, options, outcome, task_id)
    if outcome.state == states.FAILURE and app.conf.task_eager_propagates:
        raise outcome.value
    logger.debug(
        "Eager task %s[%s] %s: %s", task.name, task_id, outcome.state, saferepr(outcome.value)
    )
    return EagerResult(
        task_id, outcome.value, outcome.state, outcome.traceback, app=app, task_name=task.name
    )


def _apply_eager_links(
    app: Celery, options: dict[str, Any], outcome: TraceResult, task_id: str
) -> None:
    """Run ``link``/``link_error`` inline after an eager run, as ``Signature.apply`` does."""
    if outcome.state == states.SUCCESS:
        key, argument = "link", outcome.value
    elif outcome.state == states.FAILURE:
        key, argument = "link_error", task_id
    else:
        return
    links = options.get(key) or ()
    if not links:
        return
    from chard.canvas.signature import maybe_signature

    for link in links if isinstance(links, (list, tuple)) else [links]:
        maybe_signature(link, app=app).apply((argument,))
