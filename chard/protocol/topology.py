"""Queues, exchanges and bindings as Celery declares them (``task_queues``), as pure data.

Celery users write ``from kombu import Exchange, Queue``; chard offers the same names
(``from chard import Exchange, Queue, binding``) with kombu's constructor arguments and
defaults, and also reads kombu's own objects (by their attributes) and Celery's dict form
(``task_queues = {'name': {'exchange': ..., 'routing_key': ...}}``).

:class:`Topology` is the resolved table a broker reads: each queue's declaration
(:class:`QueueSpec`: exchange, type, bindings, arguments exactly as Celery 5.7 passes them to
RabbitMQ, so both declare the same thing and neither gets ``PRECONDITION_FAILED``), queues
that no setting names (created as Celery's ``Queues.new_missing`` does), and where a message
for a queue is published (:meth:`Topology.destination`, Celery's ``send_task_message`` rule:
a direct queue through the default exchange, a topic or fanout one through its exchange with
its routing key). Only RabbitMQ uses exchanges; the other brokers route by queue name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chard.exceptions import ImproperlyConfigured

#: Exchange types RabbitMQ has without plugins.
EXCHANGE_TYPES = ("direct", "topic", "fanout", "headers")
#: Queue attributes kombu turns into RabbitMQ arguments (seconds become milliseconds).
_SECONDS_ARGUMENTS = {"expires": "x-expires", "message_ttl": "x-message-ttl"}
_COUNT_ARGUMENTS = {
    "max_length": "x-max-length",
    "max_length_bytes": "x-max-length-bytes",
    "max_priority": "x-max-priority",
}


class Exchange:
    """An exchange declaration, as kombu's ``Exchange(name, type, **options)``."""

    def __init__(
        self,
        name: str = "",
        type: str = "",  # kombu's keyword
        channel: Any = None,  # kombu's channel binding: unused
        *,
        durable: bool = True,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
        delivery_mode: int | str | None = None,
        no_declare: bool = False,
        passive: bool = False,
    ) -> None:
        self.name = name or ""
        self.type = type or "direct"
        self.durable = durable
        self.auto_delete = auto_delete
        self.arguments = dict(arguments) if arguments else None
        self.delivery_mode = delivery_mode
        self.no_declare = no_declare
        self.passive = passive

    def __repr__(self) -> str:
        return f"<Exchange {self.name}({self.type})>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Exchange) and exchange_spec(self) == exchange_spec(other)

    def __hash__(self) -> int:
        return hash(("E", self.name))


class binding:  # kombu's name (lowercase), so Celery code ports with the import changed
    """One more binding of a queue: ``Queue('q', [binding(ex, 'a'), binding(ex, 'b')])``."""

    def __init__(
        self,
        exchange: Exchange | str | None = None,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
        unbind_arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.exchange = Exchange(exchange) if isinstance(exchange, str) else exchange
        self.routing_key = routing_key
        self.arguments = dict(arguments) if arguments else None
        self.unbind_arguments = unbind_arguments

    def __repr__(self) -> str:
        return f"<binding: {self.exchange!r} -> {self.routing_key!r}>"


class Queue:
    """A queue declaration, as kombu's ``Queue(name, exchange, routing_key, **options)``.

    ``exchange`` may be an :class:`Exchange`, its name, or a list of :class:`binding`.
    Options as kombu: ``durable``, ``exclusive`` (implies ``auto_delete``), ``auto_delete``,
    ``queue_arguments``, ``binding_arguments``, ``consumer_arguments``, ``alias``,
    ``expires`` and ``message_ttl`` (seconds), ``max_length``, ``max_length_bytes``,
    ``max_priority``, ``no_declare``.
    """

    def __init__(
        self,
        name: str = "",
        exchange: Exchange | str | Iterable[binding] | None = None,
        routing_key: str = "",
        channel: Any = None,  # kombu's channel binding: unused
        bindings: Iterable[binding] | None = None,
        on_declared: Any = None,  # kombu's declare callback: unused
        **options: Any,
    ) -> None:
        unknown = set(options) - _QUEUE_OPTIONS
        if unknown:
            raise TypeError(f"Queue() got unknown options {sorted(unknown)!r}")
        self.name = name
        self.bindings = set(bindings or ())
        self.exchange: Exchange | None = None
        if isinstance(exchange, str):
            self.exchange = Exchange(exchange)
        elif isinstance(exchange, Exchange):
            self.exchange = exchange
        elif exchange is not None:
            self.bindings |= set(exchange)
        if self.bindings:
            self.exchange = None
        self.routing_key = routing_key
        self.durable = bool(options.get("durable", True))
        self.exclusive = bool(options.get("exclusive", False))
        self.auto_delete = bool(options.get("auto_delete", False)) or self.exclusive
        self.queue_arguments = options.get("queue_arguments")
        self.binding_arguments = options.get("binding_arguments")
        self.consumer_arguments = options.get("consumer_arguments")
        self.alias = options.get("alias")
        self.no_ack = bool(options.get("no_ack", False))
        self.no_declare = bool(options.get("no_declare", False))
        for attr in (*_SECONDS_ARGUMENTS, *_COUNT_ARGUMENTS):
            setattr(self, attr, options.get(attr))

    def __repr__(self) -> str:
        return f"<Queue {self.name} -> {self.exchange!r} -> {self.routing_key}>"


_QUEUE_OPTIONS = frozenset({
    "durable", "exclusive", "auto_delete", "queue_arguments", "binding_arguments",
    "consumer_arguments", "alias", "no_ack", "no_declare", *_SECONDS_ARGUMENTS,
    *_COUNT_ARGUMENTS,
})  # fmt: skip


@dataclass(frozen=True)
class ExchangeSpec:
    """What is declared for one exchange (``exchange_declare``'s arguments)."""

    name: str
    type: str = "direct"
    durable: bool = True
    auto_delete: bool = False
    arguments: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class BindingSpec:
    """One ``queue_bind``: the exchange (declared first) and the routing key."""

    exchange: ExchangeSpec
    routing_key: str
    arguments: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class QueueSpec:
    """What is declared for one queue: ``queue_declare``'s arguments and its bindings."""

    name: str
    bindings: tuple[BindingSpec, ...] = ()
    arguments: tuple[tuple[str, Any], ...] = ()
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    alias: str | None = None
    #: The queue's own exchange (Celery's ``queue.exchange``): publishing goes there.
    exchange: ExchangeSpec | None = None
    routing_key: str = ""

    @property
    def argument_dict(self) -> dict[str, Any]:
        return dict(self.arguments)


def exchange_spec(exchange: Any) -> ExchangeSpec:
    """Return the declaration of ``exchange`` (chard's, kombu's, or a name)."""
    if isinstance(exchange, str):
        return ExchangeSpec(exchange)
    kind = str(getattr(exchange, "type", "") or "direct")
    if kind not in EXCHANGE_TYPES:
        raise ImproperlyConfigured(
            f"exchange {exchange.name!r} has type {kind!r}; RabbitMQ's types are "
            f"{', '.join(EXCHANGE_TYPES)}"
        )
    return ExchangeSpec(
        name=str(exchange.name or ""),
        type=kind,
        durable=bool(getattr(exchange, "durable", True)),
        auto_delete=bool(getattr(exchange, "auto_delete", False)),
        arguments=_pairs(getattr(exchange, "arguments", None)),
    )


def _pairs(mapping: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((mapping or {}).items()))


def _queue_arguments(queue: Any) -> dict[str, Any]:
    """kombu's ``prepare_queue_arguments``: the user's arguments plus the x- attributes."""
    arguments = dict(getattr(queue, "queue_arguments", None) or {})
    for attr, key in _SECONDS_ARGUMENTS.items():
        value = getattr(queue, attr, None)
        if value is not None:
            arguments[key] = int(float(value) * 1000)
    for attr, key in _COUNT_ARGUMENTS.items():
        value = getattr(queue, attr, None)
        if value is not None:
            arguments[key] = int(value)
    return arguments


def queue_spec(queue: Any, default: ExchangeSpec | None = None, routing_key: str = "") -> QueueSpec:
    """Return the declaration of ``queue`` (chard's or kombu's ``Queue``).

    A queue without an exchange (or with the nameless one) and without bindings gets
    ``default`` (Celery's ``task_default_exchange``), and without a routing key
    ``routing_key`` (``task_default_routing_key``), as Celery's ``Queues`` does.
    """
    name = str(queue.name or "")
    if not name:
        raise ImproperlyConfigured(f"a queue in task_queues has no name: {queue!r}")
    bindings = list(getattr(queue, "bindings", None) or ())
    exchange = getattr(queue, "exchange", None)
    # Celery gives the default exchange even to a queue with bindings, and binds it there too.
    own = exchange_spec(exchange) if exchange is not None else None
    if (own is None or not own.name) and default is not None:
        own = default
    key = str(getattr(queue, "routing_key", "") or routing_key or "")
    binding_args = _pairs(getattr(queue, "binding_arguments", None))
    specs = [BindingSpec(own, key, binding_args)] if own is not None and own.name else []
    for extra in bindings:
        if extra.exchange is not None and extra.exchange.name:
            specs.append(
                BindingSpec(
                    exchange_spec(extra.exchange),
                    str(extra.routing_key or ""),
                    _pairs(extra.arguments),
                )
            )
    return QueueSpec(
        name=name,
        bindings=tuple(specs),
        arguments=_pairs(_queue_arguments(queue)),
        durable=bool(getattr(queue, "durable", True)),
        exclusive=bool(getattr(queue, "exclusive", False)),
        auto_delete=bool(getattr(queue, "auto_delete", False)),
        alias=getattr(queue, "alias", None) or None,
        exchange=own,
        routing_key=key,
    )


@dataclass
class Topology:
    """Every queue's declaration and where its messages are published (see the module doc)."""

    queues: dict[str, QueueSpec] = field(default_factory=dict)
    default_exchange: ExchangeSpec | None = None
    default_routing_key: str = ""
    create_missing: bool = True
    #: Arguments of queues no setting names (``x-queue-type``, ``x-max-priority``).
    missing_arguments: tuple[tuple[str, Any], ...] = ()
    #: Exchange type of queues no setting names (Celery: ``direct`` unless set).
    missing_exchange_type: str = "direct"
    aliases: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls,
        queues: Any = None,
        *,
        default_queue: str = "celery",
        default_exchange: str | None = None,
        default_exchange_type: str = "direct",
        default_routing_key: str | None = None,
        default_queue_type: str = "classic",
        create_missing: bool = True,
        missing_queue_type: str = "classic",
        missing_exchange_type: str | None = None,
        max_priority: int | None = None,
    ) -> Topology:
        """Resolve Celery's settings (``task_queues``, ``task_default_*``) as Celery 5.7 does."""
        for kind in (default_queue_type, missing_queue_type):
            if kind not in ("classic", "quorum"):
                raise ImproperlyConfigured(
                    f"queue type {kind!r} is not 'classic' or 'quorum' "
                    "(task_default_queue_type, task_create_missing_queue_type)"
                )
        exchange = exchange_spec(Exchange(default_exchange or default_queue, default_exchange_type))
        routing_key = default_routing_key or default_queue
        priority: dict[str, Any] = {}
        if max_priority is not None:
            priority["x-max-priority"] = int(max_priority)
        missing = dict(priority)
        if missing_queue_type == "quorum":
            missing["x-queue-type"] = "quorum"
        table = cls(
            default_exchange=exchange,
            default_routing_key=routing_key,
            create_missing=create_missing,
            missing_arguments=_pairs(missing),
            missing_exchange_type=missing_exchange_type or "direct",
        )
        entries = _entries(queues)
        if not entries:
            arguments = {"x-queue-type": "quorum"} if default_queue_type == "quorum" else {}
            entries = [Queue(default_queue, Exchange(exchange.name, exchange.type), routing_key,
                             queue_arguments=arguments)]  # fmt: skip
        for entry in entries:
            spec = queue_spec(entry, exchange, routing_key)
            if priority and "x-max-priority" not in spec.argument_dict:
                spec = _with_arguments(spec, priority)
            table.add(spec)
        return table

    def add(self, spec: QueueSpec) -> QueueSpec:
        self.queues[spec.name] = spec
        if spec.alias:
            self.aliases[spec.alias] = spec.name
        return spec

    def queue(self, name: str) -> QueueSpec:
        """Return the declaration of queue ``name`` (or alias), made as Celery would if new.

        Raises:
            ImproperlyConfigured: it is not in ``task_queues`` and
                ``task_create_missing_queues`` is off.
        """
        found = self.queues.get(name) or self.queues.get(self.aliases.get(name, ""))
        if found is not None:
            return found
        if not self.create_missing:
            raise ImproperlyConfigured(
                f"queue {name!r} is not in task_queues and task_create_missing_queues is "
                f"off; add Queue({name!r}, ...) to task_queues"
            )
        own = ExchangeSpec(name, self.missing_exchange_type)
        return self.add(QueueSpec(name, (BindingSpec(own, name),), self.missing_arguments,
                                  exchange=own, routing_key=name))  # fmt: skip

    def destination(
        self, queue: str, exchange: str | None = None, routing_key: str | None = None
    ) -> tuple[str, str]:
        """Return the exchange and routing key a message for ``queue`` is published with.

        Celery's rule: unless both an exchange and a routing key are given, a queue whose
        exchange is direct is published to through the default exchange (``""``) by its
        name; otherwise to the given exchange, or the queue's, with the given routing key,
        or the queue's binding key, or ``task_default_routing_key``.
        """
        spec = self.queue(queue)
        kind = spec.exchange.type if spec.exchange is not None else "direct"
        if (not exchange or not routing_key) and kind == "direct":
            return "", spec.name
        if exchange is None:
            name = spec.exchange.name if spec.exchange is not None else ""
            default = self.default_exchange.name if self.default_exchange else ""
            return name or default, routing_key or spec.routing_key or self.default_routing_key
        return exchange, routing_key or ""


def _entries(queues: Any) -> list[Any]:
    """``task_queues`` as a list of queue objects (Celery takes a list or a name -> dict map)."""
    if not queues:
        return []
    if isinstance(queues, Mapping):
        found = []
        for name, value in queues.items():
            if isinstance(value, Mapping):
                options = dict(value)
                key = options.pop("routing_key", None) or options.pop("binding_key", None) or name
                kind = options.pop("exchange_type", None)
                exchange = options.pop("exchange", None)
                if isinstance(exchange, str) or (exchange is None and kind):
                    exchange = Exchange(exchange or name, kind or "")
                found.append(Queue(name, exchange, key, **options))
            else:
                found.append(value)
        return found
    return list(queues)


def _with_arguments(spec: QueueSpec, extra: Mapping[str, Any]) -> QueueSpec:
    return QueueSpec(
        spec.name, spec.bindings, _pairs({**spec.argument_dict, **extra}), spec.durable,
        spec.exclusive, spec.auto_delete, spec.alias, spec.exchange, spec.routing_key,
    )  # fmt: skip


def describe(spec: QueueSpec) -> str:
    """One banner line's worth: ``exchange:media(topic) binding:media.video`` (Celery's)."""
    if not spec.bindings:
        return "exchange:(default) binding:" + spec.name
    first = spec.bindings[0]
    return f"exchange:{first.exchange.name}({first.exchange.type}) binding:{first.routing_key}"
