"""Run one task body: the single path for eager calls and workers.

``trace_task`` sets the request context, calls the body (``async def`` bodies on
this thread's event loop), applies ``autoretry_for``, and turns what happened into
a state (SUCCESS, FAILURE, RETRY ...). A terminal state is handed to
:mod:`chard.execution.outcome`, which stores it and sends the follow-up work.
Message concerns (decoding, expiry, acks, redelivery) belong to the worker, not here.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import traceback as tb
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple

from chard import _context, signals, states
from chard._utils.log import saferepr
from chard.exceptions import Ignore, Reject, Retry
from chard.execution import outcome
from chard.protocol.ids import new_id
from chard.result import EagerResult
from chard.task import Context, Task, exponential_backoff

if TYPE_CHECKING:
    import asyncio

    from chard.app import Celery

logger = logging.getLogger("chard.task")

_local = threading.local()


class TraceResult(NamedTuple):
    """The outcome of one run of a task body (a tuple: made once per task a worker runs)."""

    state: str
    value: Any = None
    traceback: str | None = None
    runtime: float = 0.0
    #: For REJECTED: put the message back on the queue.
    requeue: bool = False


def _event_loop() -> asyncio.AbstractEventLoop:
    """Return this thread's event loop for ``async def`` tasks, kept across tasks."""
    import asyncio  # here, not at import: ~10 MiB in every process, most never await

    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
    return loop


#: Return values that are never coroutines: no ABC check for them (most tasks return one).
_PLAIN = frozenset({type(None), bool, int, float, str, bytes, list, dict, tuple})


def _call_body(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    value = task.run(*args, **kwargs)
    if type(value) in _PLAIN or not isinstance(value, Coroutine):  # asyncio.iscoroutine's check
        return value
    import asyncio
    import concurrent.futures

    if _loop_is_running():
        # Eager apply() from async code: this thread's loop is busy, so run the body on a
        # helper thread's loop, in this context (the request stays visible).
        context = contextvars.copy_context()
        with concurrent.futures.ThreadPoolExecutor(1, "chard-eager-async") as pool:
            return pool.submit(context.run, asyncio.run, value).result()
    return _event_loop().run_until_complete(value)


def _loop_is_running() -> bool:
    import asyncio

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


def trace_task(task: Task[Any, Any], request: Context, *, store: bool = True) -> TraceResult:
    """Run ``task`` for ``request`` and record the outcome; never raises for task errors.

    A terminal outcome (SUCCESS, FAILURE) is recorded by :mod:`chard.execution.outcome`,
    with the task's ``on_success``/``on_failure`` hook; RETRY, IGNORED and REJECTED are
    not terminal and end here.
    """
    app = task.app
    task_id = request.id or ""
    args, kwargs = request.args, request.kwargs
    should_store = store and outcome.stores_result(app, task, request)
    extra = outcome.extra_meta(app, task, request) if should_store else {}
    if not task.trail:
        request.children = None
    token = _context.push_request(request, task)
    signals.task_prerun.send(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)
    started = time.perf_counter()

    def hook(state: str, value: Any, trace: str | None) -> None:
        if state == states.SUCCESS:
            task.on_success(value, task_id, args, kwargs)
        else:
            task.on_failure(value, task_id, args, kwargs, trace)

    requeue = False
    try:
        task.before_start(task_id, args, kwargs)
        value = _call_with_autoretry(task, request, args, kwargs)
    except Retry as retry:
        state, value, trace = _on_retry(task, request, retry, should_store, extra)
    except Ignore:
        state, value, trace = states.IGNORED, None, None
    except Reject as reject:
        state, value, trace, requeue = states.REJECTED, reject.reason, None, reject.requeue
    except Exception as exc:
        trace = "".join(tb.format_exception(exc))
        outcome.failed(app, task, request, exc, trace, store=should_store, extra=extra, hook=hook)
        state, value = states.FAILURE, exc
    else:
        ran = time.perf_counter() - started
        state, value, trace = outcome.succeeded(
            app, task, request, value, store=should_store, extra=extra, hook=hook, runtime=ran
        )
    finally:
        _context.pop_request(token)
    runtime = time.perf_counter() - started
    try:
        task.after_return(state, value, task_id, args, kwargs, None)
    except Exception as exc:  # the end is recorded: a hook must not undo it, nor the worker
        logger.error("Task %s[%s]: after_return raised %r", task.name, task_id, exc, exc_info=True)
    signals.task_postrun.send(
        sender=task,
        task_id=task_id,
        task=task,
        args=args,
        kwargs=kwargs,
        retval=value,
        state=state,
    )
    return TraceResult(state, value, trace, runtime, requeue)


def _on_retry(
    task: Task[Any, Any], request: Context, retry: Retry, store: bool, extra: dict[str, Any]
) -> tuple[str, Any, str | None]:
    """Record a retry; return ``(state, value, traceback)``."""
    reason = retry.exc if retry.exc is not None else retry
    trace = "".join(tb.format_exception(reason)) if retry.exc is not None else None
    if store:
        task.app.backend.store_result(request.id or "", reason, states.RETRY, trace, extra)  # type: ignore[union-attr]
    task.on_retry(reason, request.id or "", request.args, request.kwargs, trace)
    signals.task_retry.send(sender=task, request=request, reason=reason, einfo=trace)
    return states.RETRY, reason, trace


def apply_eagerly(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> EagerResult[Any]:
    """Run ``task`` inline as a worker would (``apply()`` and ``task_always_eager``)."""
    app = task.app
    task_id = options.get("task_id") or new_id()
    outer: Context | None = _context.get_current_request()  # a nested apply() is its child
    parent_id = options.get("parent_id") or (outer.id if outer is not None else None)
    root_id = options.get("root_id") or (outer.root_id if outer is not None else None)
    errbacks = options.get("link_error") or None
    request = Context(
        id=task_id,
        args=args,
        kwargs=kwargs,
        is_eager=True,
        called_directly=False,
        root_id=root_id or task_id,
        parent_id=parent_id,
        headers=dict(options.get("headers") or {}),
        hostname="eager",
        delivery_info={"routing_key": options.get("queue"), "priority": options.get("priority")},
        errbacks=errbacks if isinstance(errbacks, list) else [errbacks] if errbacks else None,
        priority=options.get("priority"),
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
    """Run ``link`` callbacks inline after an eager success, as ``Signature.apply`` does.

    (``link_error`` errbacks are the request's, run by :func:`outcome.failed`.)
    """
    if outcome.state != states.SUCCESS:
        return
    argument = outcome.value
    links = options.get("link") or ()
    if not links:
        return
    from chard.canvas.signature import maybe_signature

    for link in links if isinstance(links, (list, tuple)) else [links]:
        maybe_signature(link, app=app).apply((argument,))
