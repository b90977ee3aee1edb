"""How a task ended: the one place that records a terminal state and ends its workflows.

Whatever ends a task -- its body returned or raised (:mod:`.trace`), it was revoked
or expired, its process died past ``task_max_deliveries`` or hit its hard time
limit, its name is not registered, its message cannot be decoded, its return value
cannot be encoded -- the worker calls one of :func:`succeeded`, :func:`failed` or
:func:`revoked`. Each does the same steps in the same order:

1. store the terminal state (unless results are ignored); a value the result
   serializer cannot encode turns a success into a FAILURE with
   :class:`~chard.exceptions.EncodeError`, stored instead;
2. end or continue every workflow the task belongs to: on success the links, the
   next chain step and the chord count; otherwise the ``link_error`` callbacks (on
   FAILURE), the chain steps that will now never run (stored FAILURE or REVOKED,
   naming this step), and the chord, whose body is stored failed with
   :class:`ChordError` (Celery's; ``get()`` on it re-raises the member's own error,
   through the result's parent) and whose errbacks run;
3. call the task class's hook (``on_success``/``on_failure``, only where the body ran);
4. send the signal (``task_success``, ``task_failure``, ``task_revoked``), once.

Right after the store, each also sends its monitoring event (``task-succeeded``,
``task-failed``, ``task-revoked``) when the worker process sends events: so the
events tell every end, whatever caused it, from the process that recorded it.

After the store, each step is guarded on its own (:func:`_guarded`): a follow-up that
cannot be sent, or a hook that raises, is logged and the other steps still happen.
So user code in a hook can never take a workflow's end with it, nor end the task
twice, nor reach the worker's loop. As in Celery, the follow-ups go before the hook.

Because no other code stores a terminal state or sends follow-ups, no way of ending
can forget one of them, and ``get()`` on any result of a workflow raises within
moments of the cause instead of waiting forever. The worker's own paths (revocation,
lost processes, time limits, setting a message aside) call these functions and never
import the canvas themselves.
"""

from __future__ import annotations

import logging
import traceback as tb
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chard import signals, states
from chard._utils.log import saferepr
from chard.canvas.errbacks import run_errback
from chard.canvas.signature import Signature
from chard.exceptions import ChordError, EncodeError, SerializationError, TaskRevokedError
from chard.execution.chord import fail_body, on_part_return, task_ids
from chard.request import Context
from chard.result import AsyncResult, GroupResult

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.task import Task

logger = logging.getLogger("chard.task")

#: A task class hook to call once the state is stored: ``(state, value, traceback)``.
Hook = Callable[[str, Any, "str | None"], None]


def stores_result(app: Celery, task: Task[Any, Any] | None, request: Context) -> bool:
    """Return whether ``request``'s states go to the result backend.

    Not without a backend, nor when the message or the task (or the app's
    ``task_ignore_result``) ignores results; an unregistered task stores unless its
    message says not to.
    """
    if app.backend is None or request.ignore_result:
        return False
    if task is None:
        return not app.conf.task_ignore_result
    return not task.option("ignore_result")


def extra_meta(app: Celery, task: Task[Any, Any] | None, request: Context) -> dict[str, Any]:
    """Return the meta stored beside the state: the parent and group, and more if extended."""
    extra: dict[str, Any] = {"parent_id": request.parent_id, "group_id": request.group}
    if app.conf["result_extended"]:  # (an item: read once per task that stores)
        extra.update(
            name=task.name if task is not None else None,
            args=list(request.args),
            kwargs=request.kwargs,
            worker=request.hostname,
            retries=request.retries,
            queue=request.delivery_info.get("routing_key"),
        )
    return extra


def succeeded(
    app: Celery,
    task: Task[Any, Any],
    request: Context,
    value: Any,
    *,
    store: bool,
    extra: dict[str, Any] | None = None,
    hook: Hook | None = None,
    runtime: float | None = None,
) -> tuple[str, Any, str | None]:
    """Record that ``task`` returned ``value``; send what runs next.

    ``runtime`` (seconds the body ran) goes into the ``task-succeeded`` event.

    Returns:
        ``(state, value, traceback)`` as recorded: SUCCESS, or FAILURE with an
        :class:`EncodeError` when the value cannot be stored.
    """
    if isinstance(value, (AsyncResult, GroupResult)) and not request.is_eager:
        value = value.as_tuple()  # Celery stores (and sends on) a returned result as a tuple
    if store:
        try:
            _store(app, request, value, states.SUCCESS, None, extra)
        except SerializationError as exc:
            error = _unencodable(task.name, request, value, exc)
            trace = "".join(tb.format_exception(error))
            failed(app, task, request, error, trace, store=store, extra=extra, hook=hook)
            return states.FAILURE, error, trace
    events = app.events.task_dispatcher
    if events is not None and events.enabled and not request.is_eager:
        events.send("task-succeeded", uuid=request.id, result=saferepr(value), runtime=runtime)
    if not request.is_eager:
        _send_next(app, task.name, request, value)
    if hook is not None:
        _guarded(task.name, request, "on_success", hook, states.SUCCESS, value, None)
    signals.task_success.send(sender=task, result=value)
    return states.SUCCESS, value, None


def failed(
    app: Celery,
    task: Task[Any, Any] | None,
    request: Context,
    exc: BaseException,
    traceback: str | None = None,
    *,
    store: bool,
    name: str | None = None,
    extra: dict[str, Any] | None = None,
    hook: Hook | None = None,
) -> None:
    """Record that the task failed with ``exc``; end every workflow it belongs to.

    ``task`` is None when the name is not registered (``name`` then says which).
    """
    name = task.name if task is not None else (name or "?")
    if store:
        _store(app, request, exc, states.FAILURE, traceback, extra)
    events = app.events.task_dispatcher
    if events is not None and events.enabled and not request.is_eager:
        trace = traceback or "".join(tb.format_exception(exc))
        events.send("task-failed", uuid=request.id, exception=saferepr(exc), traceback=trace)
    for errback in request.errbacks or ():
        # Celery's two forms: errback(request, exc, traceback) inline, or sent with the id.
        _guarded(name, request, "link_error", run_errback, app, errback, request, exc, traceback)
    if not request.is_eager:
        why = f"chain step {name}[{request.id}] failed:\n{traceback or repr(exc)}"
        _guarded(name, request, "chain end", _end_chain, app, request, exc, states.FAILURE, why)
        if request.chord:
            _guarded(name, request, "chord", on_part_return, app, request, states.FAILURE, exc)
    if hook is not None:
        _guarded(name, request, "on_failure", hook, states.FAILURE, exc, traceback)
    signals.task_failure.send(
        sender=task,
        task_id=request.id,
        exception=exc,
        args=request.args,
        kwargs=request.kwargs,
        traceback=traceback,
        einfo=traceback,
    )


def revoked(
    app: Celery,
    task: Task[Any, Any] | None,
    request: Context,
    reason: str,
    *,
    store: bool,
    name: str | None = None,
    signum: int | None = None,
) -> None:
    """Record that the task will not run, or ran no further: REVOKED, for ``reason``.

    ``reason`` is Celery's: ``"revoked"``, ``"expired"`` or ``"terminated"``. As in
    Celery, revoking is not failing: no ``link_error`` callbacks run.
    """
    name = task.name if task is not None else (name or "?")
    error = TaskRevokedError(reason)
    if store:
        _store(app, request, error, states.REVOKED, None, extra_meta(app, task, request))
    events = app.events.task_dispatcher
    if events is not None and events.enabled:
        events.send(
            "task-revoked",
            uuid=request.id,
            terminated=reason == "terminated",
            signum=signum,
            expired=reason == "expired",
        )
    step = TaskRevokedError(f"chain step {name}[{request.id}] was {reason}; this step never ran")
    _guarded(name, request, "chain end", _end_chain, app, request, step, states.REVOKED, None)
    if request.chord:
        _guarded(name, request, "chord", on_part_return, app, request, states.REVOKED, error)
    signals.task_revoked.send(
        sender=task,
        request=request,
        terminated=reason == "terminated",
        signum=signum,
        expired=reason == "expired",
    )


def _store(
    app: Celery,
    request: Context,
    value: Any,
    state: str,
    traceback: str | None,
    extra: dict[str, Any] | None,
) -> None:
    assert app.backend is not None
    if request.children:
        extra = {**(extra or {}), "children": request.children}
    app.backend.store_result(request.id or "", value, state, traceback, extra)


def _unencodable(name: str, request: Context, value: Any, exc: Exception) -> EncodeError:
    logger.error(
        "Task %s[%s] returned a value of type %s that cannot be stored: %s",
        name,
        request.id,
        type(value).__name__,
        exc,
    )
    return EncodeError(
        f"task {name!r} returned a value of type {type(value).__name__!r} that the result "
        f"serializer cannot encode ({exc}); return plain data (str, int, float, bool, None, "
        "list, dict), or pick a result_serializer that can encode it"
    )


def _send_next(app: Celery, name: str, request: Context, value: Any) -> None:
    """Send what runs after a success: link callbacks, the next chain step, chord counting.

    The next step of a chain is the *last* element of the embed's ``chain`` list
    (Celery sends it reversed); it is sent with the rest, so each worker in turn
    sends one step. A chord header task reports to the chord, whose last member
    sends the body (:mod:`chard.execution.chord`).
    """
    for callback in request.callbacks or ():
        _guarded(name, request, "link", _send, app, request, callback, (value,))
    if request.chain:
        *rest, following = request.chain
        try:
            _send(app, request, following, (value,), chain=rest or None)
        except Exception as exc:  # e.g. the value cannot be encoded as the next step's argument
            logger.error(
                "Task %s[%s] succeeded, but its chain's next step could not be sent: %r",
                name,
                request.id,
                exc,
                exc_info=True,
            )
            why = f"chain step {name}[{request.id}] could not send this step: {exc!r}"
            _guarded(name, request, "chain end", _end_chain, app, request, exc, states.FAILURE, why)
    if request.chord:
        _guarded(name, request, "chord", on_part_return, app, request, states.SUCCESS, value)


def _send(
    app: Celery, request: Context, sig: dict[str, Any], args: tuple[Any, ...], **options: Any
) -> None:
    """Send a follow-up (a link, an errback, the next chain step) as a child of this task."""
    if request.reply_to:  # the sender of the workflow hears about every step (rpc://)
        options.setdefault("reply_to", request.reply_to)
    Signature.from_dict(sig, app=app).apply_async(
        args, parent_id=request.id, root_id=request.root_id or request.id, **options
    )


def _guarded(name: str, request: Context, what: str, step: Callable[..., Any], *args: Any) -> None:
    """Run one step of an end; log what it raises instead of raising (see the module doc)."""
    try:
        step(*args)
    except Exception as exc:
        logger.error(
            "Task %s[%s]: its %s raised %r; the task's end is recorded and the other "
            "follow-ups still run",
            name,
            request.id,
            what,
            exc,
            exc_info=True,
        )


def _end_chain(
    app: Celery, request: Context, exc: BaseException, state: str, traceback: str | None
) -> None:
    """Store ``exc`` in ``state`` for the chain steps after ``request``: they will never run.

    A failed step stores its own exception in every later step (so ``except
    ZeroDivisionError`` around ``chain(...)().get()`` works as in Celery), with a
    traceback naming the step that failed; a revoked one stores REVOKED. A group
    step ends each of its members; a chord step its header members and its body
    (with :class:`ChordError`, and the body's errbacks).
    """
    backend = app.backend
    if backend is None:
        return
    for step in request.chain or ():
        if step.get("subtask_type") == "chord":
            _fail_chord_step(app, step, exc, request)
            continue
        for step_id in task_ids(step):  # a task's own id, or every member of a group
            backend.store_result(step_id, exc, state, traceback, {"parent_id": request.id})
    if request.chain:
        _end_outer_chord(app, request.chain[0], exc, state, request)


def _end_outer_chord(
    app: Celery, last: dict[str, Any], exc: BaseException, state: str, request: Context
) -> None:
    """A chain that is a chord member ended early: its last step tells the chord instead.

    The chain's last step (the first of the reversed embed) carries the chord
    membership; it will never run, so without this the chord would wait for it forever.
    A last step that is a group reports through its first member (the first report
    of a failure ends the chord). A chord as the last step reports through its body,
    in :func:`_fail_chord_step`.
    """
    if last.get("subtask_type") == "group":
        members = (last.get("kwargs") or {}).get("tasks") or ()
        last = members[0] if members else {}
    opts = last.get("options") or {}
    if last.get("subtask_type") is None and opts.get("chord") and opts.get("group_id"):
        member = Context(
            id=opts.get("task_id"),
            group=opts["group_id"],
            group_index=opts.get("group_index"),
            chord=opts["chord"],
            root_id=request.root_id,
        )
        on_part_return(app, member, state, exc)


def _fail_chord_step(
    app: Celery, step: dict[str, Any], exc: BaseException, request: Context
) -> None:
    """A chord later in a failed chain never runs: end its header and body, so both raise."""
    header = (step.get("kwargs") or {}).get("header")
    backend = app.backend
    if header and backend is not None:
        for member_id in task_ids(header):
            backend.store_result(member_id, exc, states.FAILURE, None, {"parent_id": request.id})
    body = (step.get("kwargs") or {}).get("body")
    if body:
        error = ChordError(f"Dependency {request.id} raised {exc!r}")
        fail_body(app, body, error, request)
