"""The send path: from ``apply_async``'s options to encoded messages on the broker.

Every send takes the same hops — ``delay -> apply_async -> send_task ->``
:func:`build_message` ``->`` :func:`publish` ``-> Broker.publish`` — and a canvas
takes the last three for all its messages at once (one broker round-trip for a
group). The options are read once, into :class:`SendOptions`, instead of being
repeated as a long keyword list at every hop. A plain ``delay()`` (no options, not
from inside a task) takes :func:`send_plain` instead: the task's cached envelope and
the broker's prepared publish (:meth:`Broker.publisher`), the same bytes on the wire.

This module sits below the task and canvas layers: it takes the app and the task
as arguments and imports neither.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from chard import _context, routing, signals
from chard._utils.log import redact_url
from chard._utils.perprocess import current_pid
from chard.brokers import Broker, OutgoingMessage
from chard.exceptions import BrokerConnectionError
from chard.protocol.ids import new_id, new_id_pair
from chard.protocol.message import SignatureDict, TaskMessage
from chard.protocol.template import EnvelopeTemplate

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.task import Task

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class SendOptions:
    """The options of one send (Celery's ``apply_async`` keywords), read once.

    Options chard does not read (``exchange``, ``routing_key``, ``retry``, ...) are
    kept in :attr:`other`: Celery accepts them, and a ``task_routes`` router sees them.
    """

    countdown: float | None = None
    eta: datetime | None = None
    task_id: str | None = None
    expires: float | datetime | timedelta | None = None
    queue: str | None = None
    priority: int | None = None
    headers: Mapping[str, Any] | None = None
    ignore_result: bool | None = None
    serializer: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    retries: int = 0
    # Where the message sits in a workflow (set by retries and the canvas).
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    shadow: str | None = None
    link: Any = None
    link_error: Any = None
    chain: Any = None
    chord: Any = None
    other: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, options: Mapping[str, Any], **named: Any) -> SendOptions:
        """Split ``options`` (plus ``named``, the keywords a caller took positionally)."""
        known: dict[str, Any] = {k: v for k, v in named.items() if v is not None}
        if not options:  # a plain delay(): no loop, no second dict (the hot path)
            return cls(**known)
        other: dict[str, Any] = {}
        for key, value in options.items():
            (known if key in _FIELDS else other)[key] = value
        return cls(**known, other=other)


_FIELDS = frozenset(f.name for f in fields(SendOptions)) - {"other"}


class RoutedMessage(NamedTuple):
    """A built task message and the queue it goes to (on RabbitMQ, maybe how: see
    :class:`~chard.brokers.base.OutgoingMessage`)."""

    message: TaskMessage
    queue: str
    exchange: str | None = None
    routing_key: str | None = None


def build_message(
    app: Celery,
    name: str,
    args: Iterable[Any] | None,
    kwargs: Mapping[str, Any] | None,
    options: SendOptions,
    task: Task[Any, Any] | None = None,
) -> RoutedMessage:
    """Build the message for one send of task ``name`` and pick its queue.

    Precedence as in Celery: the call's options, then ``task_routes``, then the
    task's attributes, then the app's defaults. The task running in this process
    (a worker's, not an eager one) becomes the parent, and its root is inherited.
    """
    args = tuple(args or ())
    kwargs = dict(kwargs or {})
    task_id = options.task_id or new_id()
    eta, expires = options.eta, options.expires
    if options.countdown is not None or expires is not None:
        now = datetime.now(UTC)
        if options.countdown is not None:
            eta = now + timedelta(seconds=float(options.countdown))
        if isinstance(expires, (int, float)):
            expires = now + timedelta(seconds=float(expires))
        elif isinstance(expires, timedelta):
            expires = now + expires
    # Item access: a setting read as an attribute first fails the normal lookup (4x dearer).
    conf = app.conf
    routed = routing.route(conf["task_routes"], name, args, kwargs, options.other, task)
    queue = options.queue or routed.get("queue") or (task.queue if task else None)
    exchange = routing_key = None
    if routed or options.other:  # a Queue object, an exchange or a routing key (RabbitMQ)
        queue, exchange, routing_key = _destination(queue, routed, options.other)
    priority = options.priority
    if priority is None:
        priority = routed.get("priority", task.priority if task else None)
    if priority is None:
        priority = conf["task_default_priority"]
    hard = options.time_limit or (task.time_limit if task else None)
    soft = options.soft_time_limit or (task.soft_time_limit if task else None)
    if hard and soft and soft > hard:  # Celery's check, at call time
        raise ValueError(
            f"soft_time_limit={soft!r} is greater than time_limit={hard!r} for task {name!r}; "
            "soft_time_limit must be less than or equal to time_limit"
        )
    ignore_result = options.ignore_result
    if ignore_result is None:  # Celery's precedence: the call, the task, the app
        own = task.ignore_result if task is not None else None
        ignore_result = bool(own if own is not None else conf["task_ignore_result"])
    root_id, parent_id = options.root_id, options.parent_id
    request = _context.get_current_request()
    if request is not None and not request.is_eager:
        root_id = root_id or request.root_id or request.id
        parent_id = parent_id or request.id
    reply_to = options.other.get("reply_to") or (request.reply_to if request else None)
    if not reply_to and str(conf["result_backend"] or "").startswith("rpc"):
        backend = app.backend  # rpc://: its reply queue (opened on the first send)
        reply_to = backend.reply_queue if backend is not None else ""
    message = TaskMessage(
        reply_to=str(reply_to or ""),
        task=name,
        id=task_id,
        args=args,
        kwargs=kwargs,
        eta=eta,
        expires=expires if isinstance(expires, datetime) else None,
        retries=int(options.retries),
        timelimit=(hard, soft),
        root_id=root_id or task_id,
        parent_id=parent_id,
        group=options.group_id,
        group_index=options.group_index,
        shadow=options.shadow,
        ignore_result=ignore_result,
        callbacks=_sig_dicts(options.link),
        errbacks=_sig_dicts(options.link_error),
        chain=_sig_dicts(options.chain),
        chord=_sig_dict(options.chord),
        priority=int(priority or 0),
        extra_headers=dict(options.headers or {}),
        serializer=options.serializer
        or (task.serializer if task and task.serializer else conf["task_serializer"]),
    )
    return RoutedMessage(message, queue or conf["task_default_queue"], exchange, routing_key)


def _destination(
    queue: Any, routed: Mapping[str, Any], other: Mapping[str, Any]
) -> tuple[str | None, str | None, str | None]:
    """The queue's name, and the exchange and routing key the call or its route asked for."""
    exchange = other.get("exchange") or routed.get("exchange")
    routing_key = other.get("routing_key") or routed.get("routing_key")
    name = queue if queue is None or isinstance(queue, str) else queue.name  # a Queue object
    return name, getattr(exchange, "name", exchange), routing_key


def publish(
    app: Celery, messages: Sequence[RoutedMessage], retry: Mapping[str, Any] | None = None
) -> None:
    """Encode ``messages`` and store them in one broker round-trip; send the signals.

    ``retry`` holds the call's ``retry`` and ``retry_policy`` (``apply_async``'s), if any.

    Raises:
        SerializationError: a message cannot be encoded (nothing is published).
        BrokerConnectionError: the broker stayed unreachable (``task_publish_retry_policy``).
    """
    before = bool(signals.before_task_publish.receivers)  # headers() only if someone looks
    outgoing = []
    # A Celery worker holds an ETA message itself: in a mixed fleet it must see it now.
    broker_holds_eta = not app.conf["chard_celery_compat"]
    for message, queue, exchange, routing_key in messages:
        if before:
            signals.before_task_publish.send(
                sender=message.task, headers=message.headers(), routing_key=routing_key or queue
            )
        outgoing.append(
            OutgoingMessage(
                queue=queue,
                body=message.to_wire(queue),
                priority=message.priority,
                eta=message.eta.timestamp() if message.eta and broker_holds_eta else None,
                exchange=exchange,
                routing_key=routing_key,
            )
        )
    if not outgoing:
        return
    store(app, outgoing, retry)
    _add_children(messages)
    if signals.after_task_publish.receivers:
        for message, queue, _, routing_key in messages:
            signals.after_task_publish.send(sender=message.task, routing_key=routing_key or queue)
    if app.conf["task_send_sent_event"]:  # batched by a background thread: no round trip
        for message, queue, *_ in messages:
            app.events.task_sent(message, queue)


def store(
    app: Celery, outgoing: Sequence[OutgoingMessage], retry: Mapping[str, Any] | None = None
) -> None:
    """Store encoded messages in one broker round-trip, retried per the publish policy.

    ``retry`` holds the call's ``retry`` and ``retry_policy`` (``apply_async``'s), if any.

    Raises:
        BrokerConnectionError: the broker stayed unreachable (``task_publish_retry_policy``).
    """
    broker = app.broker
    try:
        broker.publish(outgoing)
    except BrokerConnectionError as exc:
        publish_retrying(broker, outgoing, exc, app.conf, retry)


class _Plan(NamedTuple):
    """What every plain send of one task shares; valid while its ``key`` is unchanged."""

    key: tuple[Any, ...]
    #: None: these sends take the full path (see :func:`send_plain`).
    template: EnvelopeTemplate | None
    #: ``task_routes`` when the plan was made, and its answer for this task without arguments.
    routes: Any
    routed: dict[str, Any]
    #: The broker's publish of one body to this task's queue (:meth:`Broker.publisher`).
    publish: Callable[[bytes], None]
    queue: str
    exchange: str | None
    routing_key: str | None
    priority: int
    ignore_result: bool


def send_plain(
    app: Celery,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    task: Task[Any, Any] | None,
) -> tuple[str, bool] | None:
    """Send ``name`` from its task's cached envelope; return its id and ``ignore_result``.

    The caller checked there are no options and no current request. Returns once the
    broker stored the message (retried as :func:`store` does), or None without sending
    when the full path (:func:`build_message` then :func:`publish`) must take the send:
    a signal or ``task_send_sent_event`` wants the message, a router sends these
    arguments elsewhere, or an argument does not encode as JSON (the full path's error
    names it). The bytes are the full path's (with ``rpc://``, the process's reply queue
    is in the plan's envelope: it is declared once per backend, and the plan is made
    again after a fork or ``app.close()``, as the backend is).

    Raises:
        BrokerConnectionError: the broker stayed unreachable (``task_publish_retry_policy``).
    """
    if signals.before_task_publish.has_receivers or signals.after_task_publish.has_receivers:
        return None
    conf = app.conf
    # What the plan is made of besides the settings: the process (a child after fork has
    # a broker of its own, which the plan's publish must be) and the task's own options.
    key: tuple[Any, ...] = (conf.version, current_pid())
    if task is not None:
        key += (
            task,
            task.queue,
            task.priority,
            task.time_limit,
            task.soft_time_limit,
            task.ignore_result,
            task.serializer,
        )
    plans = app._send_plans
    plan = plans.get(name)
    if plan is None or plan.key != key:
        plan = plans[name] = _make_plan(app, name, task, key)
    template = plan.template
    if template is None:
        return None
    routes = plan.routes
    if routes is not None and routing.route(routes, name, args, kwargs, {}, task) != plan.routed:
        return None
    task_id, tag = new_id_pair()
    try:
        body = template.render(task_id, args, kwargs, tag)
    except (TypeError, ValueError, OverflowError, RecursionError):
        return None
    try:
        plan.publish(body)
    except BrokerConnectionError as exc:
        message = OutgoingMessage(
            plan.queue, body, plan.priority, None, plan.exchange, plan.routing_key
        )
        publish_retrying(app.broker, (message,), exc, conf)
    return task_id, plan.ignore_result


def _make_plan(app: Celery, name: str, task: Task[Any, Any] | None, key: tuple[Any, ...]) -> _Plan:
    """The plan of ``name``'s plain sends under the current settings and task options."""
    conf = app.conf
    message, queue, exchange, routing_key = build_message(app, name, (), {}, SendOptions(), task)
    routes = conf["task_routes"]
    routed = routing.route(routes, name, (), {}, {}, task)
    template = None
    if EnvelopeTemplate.fits(message) and not conf["task_send_sent_event"]:
        template = EnvelopeTemplate(message, queue)
    return _Plan(
        key,
        template,
        routes,
        routed,
        app.broker.publisher(queue, message.priority, exchange, routing_key),
        queue,
        exchange,
        routing_key,
        message.priority,
        message.ignore_result,
    )


def _add_children(messages: Sequence[RoutedMessage]) -> None:
    """Record what a running task sent, for its stored ``children`` (Celery's trail).

    In Celery's tuple form: ``((id, None), None)`` per task, and the members of one
    group together as ``((group_id, None), [members])``. Eager runs keep no trail.
    """
    request = _context.get_current_request()
    if request is None or request.is_eager or request.children is None:
        return
    children: list[Any] = request.children
    groups: dict[str, list[Any]] = {}
    for message, *_ in messages:
        node = [[message.id, None], None]
        if message.group is None:
            children.append(node)
        elif message.group in groups:
            groups[message.group].append(node)
        else:
            groups[message.group] = [node]
            children.append([[message.group, None], groups[message.group]])


def publish_retrying(
    broker: Broker,
    messages: Sequence[OutgoingMessage],
    exc: Exception,
    conf: Any,
    call: Mapping[str, Any] | None = None,
) -> None:
    """Retry a publish that failed with ``exc``, per ``task_publish_retry_policy``.

    Celery's keys: ``max_retries`` more attempts, sleeping ``interval_start`` then
    ``interval_step`` longer each time, at most ``interval_max``. A retry after a reply
    was lost may store a message twice (at-least-once, like every retry). The call's
    ``retry_policy`` keys (``call``) override the setting's and its ``retry`` the
    ``task_publish_retry`` switch, as in Celery.

    Raises:
        BrokerConnectionError: still unreachable after the last attempt, saying how to fix it.
    """
    call = call or {}
    policy = {**(conf.task_publish_retry_policy or {}), **(call.get("retry_policy") or {})}
    retry = call.get("retry")
    retry = conf.task_publish_retry if retry is None else retry
    retries = int(policy.get("max_retries", 3)) if retry else 0
    interval = float(policy.get("interval_start", 0))
    started = time.monotonic()
    for attempt in range(1, retries + 2):
        if attempt > retries:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            raise BrokerConnectionError(
                f"cannot publish to the broker at {redact_url(broker.url)!r}: "
                f"unreachable after {attempt} attempt(s) over "
                f"{time.monotonic() - started:.1f}s (last error: {cause}). Start the "
                "broker or fix broker_url; to wait longer, raise max_retries or "
                f"interval_max in task_publish_retry_policy (now {policy})"
            ) from exc
        logger.warning("Publish failed (%s); retry %d/%d in %.2fs", exc, attempt, retries, interval)
        time.sleep(interval)
        interval = min(
            interval + float(policy.get("interval_step", 0.2)),
            float(policy.get("interval_max", 0.2)),
        )
        try:
            broker.publish(messages)
            return
        except BrokerConnectionError as again:
            exc = again


def _sig_dict(value: Any) -> SignatureDict | None:
    if value is None:
        return None
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else dict(value)


def _sig_dicts(value: Any) -> list[SignatureDict] | None:
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    return [d for d in (_sig_dict(v) for v in items) if d is not None] or None
