"""The task message: Celery protocol v2, and the only code that knows its field names.

On every broker chard stores and moves one opaque *envelope*: the JSON document
kombu's Redis transport pushes (``body`` base64, ``content-type``, ``headers``,
``properties``). Keeping that one shape everywhere means a message published by
Celery on Redis is consumed by chard unchanged, and the reverse; a broker whose
native frames differ (AMQP) converts at its edge.

:meth:`TaskMessage.from_wire` is the single decode choke point: any failure
becomes :class:`~chard.exceptions.DecodeError` (or ``ContentDisallowed``), which
the worker dead-letters instead of crashing. That includes a field of the wrong
type (:mod:`chard.protocol.fields`): past this point, worker code trusts the types.
"""

from __future__ import annotations

import base64
import binascii
import os
import socket
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

from chard._utils.log import saferepr
from chard.exceptions import ContentDisallowed, DecodeError, SerializationError
from chard.protocol import fields, serializers
from chard.protocol.ids import new_id
from chard.protocol.reprs import args_repr, kwargs_repr

#: Signature dicts as they travel in the body's ``embed`` part.
SignatureDict = dict[str, Any]

_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
#: Header of chard's own counting how often a worker process died running the message
#: (written by the worker, reset by ``chard dead-letters``); kept among the extra headers.
LOST_HEADER = "chard_lost"
#: Headers of chard's own that the worker reads as counts.
_COUNT_HEADERS = (LOST_HEADER,)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Slots(NamedTuple):
    """The envelope's values that change with every send, as JSON texts to write in."""

    id: str
    argsrepr: str
    kwargsrepr: str
    delivery_tag: str


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One task invocation, as it crosses the broker."""

    task: str
    id: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    eta: datetime | None = None
    expires: datetime | None = None
    retries: int = 0
    timelimit: tuple[float | None, float | None] = (None, None)
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    shadow: str | None = None
    origin: str | None = None
    ignore_result: bool = False
    callbacks: list[SignatureDict] | None = None
    errbacks: list[SignatureDict] | None = None
    chain: list[SignatureDict] | None = None
    chord: SignatureDict | None = None
    reply_to: str = ""
    priority: int = 0
    #: Headers not named above (user ``headers=``, stamps, ``redelivered``), kept verbatim.
    extra_headers: dict[str, Any] = field(default_factory=dict)
    #: Serializer of the body: a registered name or content type.
    serializer: str = "json"

    def evolve(self, **changes: Any) -> TaskMessage:
        """Return a copy with ``changes`` applied."""
        return replace(self, **changes)

    @property
    def argsrepr(self) -> str:
        """The args as the ``argsrepr`` header shows them (logs, monitoring events)."""
        return args_repr(self.args)

    @property
    def kwargsrepr(self) -> str:
        """The kwargs as the ``kwargsrepr`` header shows them."""
        return kwargs_repr(self.kwargs)

    def headers(self) -> dict[str, Any]:
        """Return the protocol-v2 headers, every key present as Celery sends them."""
        headers: dict[str, Any] = {
            "lang": "py",
            "task": self.task,
            "id": self.id,
            "shadow": self.shadow,
            "eta": _iso(self.eta),
            "expires": _iso(self.expires),
            "group": self.group,
            "group_index": self.group_index,
            "retries": self.retries,
            "timelimit": list(self.timelimit),
            "root_id": self.root_id or self.id,
            "parent_id": self.parent_id,
            "argsrepr": args_repr(self.args),
            "kwargsrepr": kwargs_repr(self.kwargs),
            "origin": self.origin or _ORIGIN,
            "ignore_result": self.ignore_result,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        if self.extra_headers:
            headers.update(self.extra_headers)
        return headers

    def body(self) -> list[Any]:
        """Return the body ``[args, kwargs, embed]``."""
        embed = {
            "callbacks": self.callbacks,
            "errbacks": self.errbacks,
            "chain": self.chain,
            "chord": self.chord,
        }
        return [list(self.args), self.kwargs, embed]

    def envelope(self, queue: str = "celery", delivery_tag: str | None = None) -> dict[str, Any]:
        """Return the envelope kombu's Redis transport uses, as a dict (see :meth:`to_wire`).

        Raises:
            SerializationError: an argument cannot be encoded; the message names it.
        """
        payload, content_type, encoding = self._payload()
        return {
            "body": base64.b64encode(payload).decode("ascii"),
            "content-encoding": encoding,
            "content-type": content_type,
            "headers": self.headers(),
            "properties": {
                "correlation_id": self.id,
                "reply_to": self.reply_to,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": self.priority,
                "body_encoding": "base64",
                "delivery_tag": delivery_tag or new_id(),
            },
        }

    def to_wire(self, queue: str = "celery", delivery_tag: str | None = None) -> bytes:
        """Encode as the JSON envelope kombu's Redis transport uses.

        The bytes are ``json_dumps(self.envelope(queue))``, written from a template that
        encodes only the values (the send path's hot spot; a test pins the two equal).

        Raises:
            SerializationError: an argument cannot be encoded; the message names it.
        """
        payload, content_type, encoding = self._payload()
        j = serializers.json_text
        return self._wire_text(
            base64.b64encode(payload).decode("ascii"),
            content_type,
            encoding,
            queue,
            Slots(
                id=j(self.id),
                argsrepr=j(args_repr(self.args)),
                kwargsrepr=j(kwargs_repr(self.kwargs)),
                delivery_tag=j(delivery_tag or new_id()),
            ),
        ).encode()

    def _wire_text(
        self, body: str, content_type: str, encoding: str, queue: str, slots: Slots
    ) -> str:
        """The envelope's JSON text, with the values of ``slots`` written in as given."""
        j = serializers.json_text
        headers = self._headers_json(slots) if not self.extra_headers else j(self.headers())
        return (
            f'{{"body":"{body}",'
            f'"content-encoding":{j(encoding)},"content-type":{j(content_type)},'
            f'"headers":{headers},"properties":{{"correlation_id":{slots.id},'
            f'"reply_to":{j(self.reply_to)},"delivery_mode":2,'
            f'"delivery_info":{{"exchange":"","routing_key":{j(queue)}}},'
            f'"priority":{j(self.priority)},"body_encoding":"base64",'
            f'"delivery_tag":{slots.delivery_tag}}}}}'
        )

    def _headers_json(self, slots: Slots) -> str:
        """The JSON text of :meth:`headers` when there are no extra headers."""
        j = serializers.json_text
        hard, soft = self.timelimit
        root_id = j(self.root_id) if self.root_id else slots.id
        return (
            f'{{"lang":"py","task":{j(self.task)},"id":{slots.id},"shadow":{j(self.shadow)},'
            f'"eta":{j(_iso(self.eta))},"expires":{j(_iso(self.expires))},'
            f'"group":{j(self.group)},"group_index":{j(self.group_index)},'
            f'"retries":{j(self.retries)},"timelimit":[{j(hard)},{j(soft)}],'
            f'"root_id":{root_id},"parent_id":{j(self.parent_id)},'
            f'"argsrepr":{slots.argsrepr},"kwargsrepr":{slots.kwargsrepr},'
            f'"origin":{j(self.origin or _ORIGIN)},"ignore_result":{j(self.ignore_result)},'
            '"replaced_task_nesting":0,"stamped_headers":null,"stamps":{}}'
        )

    def _payload(self) -> tuple[bytes, str, str]:
        """Serialize the body; return ``(payload, content_type, content_encoding)``."""
        try:
            return serializers.dumps(self.body(), self.serializer)
        except SerializationError as exc:
            raise SerializationError(self._name_bad_argument(exc)) from exc.__cause__

    def _name_bad_argument(self, exc: SerializationError) -> str:
        """Find which argument could not be encoded, so the error can name it."""
        candidates: list[tuple[str, Any]] = [(f"args[{i}]", a) for i, a in enumerate(self.args)]
        candidates += [(f"kwargs[{k!r}]", v) for k, v in self.kwargs.items()]
        for label, value in candidates:
            try:
                serializers.dumps(value, self.serializer)
            except SerializationError:
                return (
                    f"task {self.task!r}: argument {label} of type {type(value).__name__} "
                    f"cannot be serialized with {self.serializer!r}; pass plain data "
                    "(e.g. an id instead of the object) or choose another serializer"
                )
        return f"task {self.task!r}: {exc}"

    @classmethod
    def from_wire(cls, data: bytes, accept: frozenset[str]) -> TaskMessage:
        """Decode an envelope; the only way bytes become a :class:`TaskMessage`.

        Args:
            data: the envelope as stored by the broker.
            accept: content types the body may have (see ``accept_content``).

        Raises:
            ContentDisallowed: the body's content type is not accepted.
            DecodeError: anything else is wrong with the message.
        """
        try:
            envelope = serializers.json_loads(data)
            if not isinstance(envelope, dict):
                raise DecodeError("message envelope is not a JSON object", data)
            return cls._from_envelope(envelope, accept)
        except (DecodeError, ContentDisallowed) as exc:
            if isinstance(exc, DecodeError) and exc.data is None:
                exc.data = data
            raise
        except Exception as exc:
            raise DecodeError(f"cannot decode message: {exc}", data) from exc

    @classmethod
    def _from_envelope(cls, envelope: dict[str, Any], accept: frozenset[str]) -> TaskMessage:
        headers = envelope.get("headers")
        if type(headers) is not dict:
            headers = fields.table(headers, "message headers")
        properties = envelope.get("properties")
        if type(properties) is not dict:
            properties = fields.table(properties, "message properties")
        content_type = envelope.get("content-type", "application/json")
        if not isinstance(content_type, str):
            raise DecodeError(f"envelope 'content-type' must be a string, got {content_type!r}")
        raw = envelope.get("body", "")
        if not isinstance(raw, str):
            raise DecodeError(f"envelope 'body' must be a string, got {saferepr(raw)}")
        if properties.get("body_encoding") == "base64":
            try:  # what base64.b64decode(raw, validate=True) does, without its wrapping
                payload = binascii.a2b_base64(raw, strict_mode=True)
            except (binascii.Error, ValueError) as exc:
                raise DecodeError(f"body is not valid base64: {exc}") from exc
        else:
            payload = raw.encode("utf-8")
        try:
            body = serializers.loads(payload, content_type, accept)
        except SerializationError as exc:
            raise DecodeError(str(exc)) from exc
        if "task" not in headers and isinstance(body, dict):
            return cls._from_protocol_v1(body, properties, content_type)
        if not isinstance(body, (list, tuple)) or len(body) != 3:
            raise DecodeError("body is not [args, kwargs, embed] (Celery protocol v2)")
        args, kwargs, embed = body
        return cls._build(headers, properties, args, kwargs, embed, content_type)

    @classmethod
    def _from_protocol_v1(
        cls, body: dict[str, Any], properties: dict[str, Any], content_type: str
    ) -> TaskMessage:
        """Accept the old protocol-1 dict body that very old Celery clients send."""
        headers = {k: body.get(k) for k in ("task", "id", "eta", "expires", "retries", "group")}
        headers["timelimit"] = body.get("timelimit")
        embed = {"callbacks": body.get("callbacks"), "errbacks": body.get("errbacks")}
        args = body.get("args")
        return cls._build(
            headers,
            properties,
            [] if args is None else args,
            body.get("kwargs"),
            embed,
            content_type,
        )

    @classmethod
    def _build(
        cls,
        headers: dict[str, Any],
        properties: dict[str, Any],
        args: Any,
        kwargs: Any,
        embed: Any,
        content_type: str,
    ) -> TaskMessage:
        """Build the message from its decoded parts, checking the type of every field read.

        One pass over the parts, read in place (``headers`` is not changed). Each value
        is first compared with what nearly every message carries (a plain string, null,
        ``[null, null]``...), and only one that differs goes through its check in
        :mod:`chard.protocol.fields`, which accepts or refuses it as it always did: the
        worker decodes every message it runs, so this is on its path once per task.

        Raises:
            DecodeError: a field is missing or has the wrong type; the message names the
                field, the value and what it must be (see :mod:`chard.protocol.fields`).
        """
        get = headers.get
        name, task_id = _identity(get("task"), get("id"))
        if type(embed) is not dict:
            embed = fields.table(embed, "body embed")
        extra = _extra_headers(headers)
        args = tuple(args) if type(args) is list else fields.sequence(args, "body args")
        if type(kwargs) is not dict or kwargs:
            kwargs = fields.mapping(kwargs, "body kwargs")
        eta, expires = get("eta"), get("expires")
        if eta is not None:
            eta = fields.instant(eta, "header 'eta'")
        if expires is not None:
            expires = fields.instant(expires, "header 'expires'")
        retries = get("retries")
        if type(retries) is not int or retries < 0:
            retries = fields.count(retries, "header 'retries'")
        timelimit = fields.time_limits(get("timelimit"), "header 'timelimit'")
        root_id = _text(get("root_id"), "header 'root_id'")
        parent_id = _text(get("parent_id"), "header 'parent_id'")
        group = _text(get("group"), "header 'group'")
        group_index = get("group_index")
        if group_index is not None and (type(group_index) is not int or group_index < 0):
            group_index = fields.optional_index(group_index, "header 'group_index'")
        shadow = _text(get("shadow"), "header 'shadow'")
        origin = _text(get("origin"), "header 'origin'")
        ignore_result = get("ignore_result", False)
        if ignore_result is not False and ignore_result is not True:
            ignore_result = fields.flag(ignore_result, "header 'ignore_result'")
        callbacks = _signatures(embed.get("callbacks"), "embed 'callbacks'")
        errbacks = _signatures(embed.get("errbacks"), "embed 'errbacks'")
        chain = _signatures(embed.get("chain"), "embed 'chain'")
        chord = _signature(embed.get("chord"), "embed 'chord'")
        reply_to, priority = properties.get("reply_to"), properties.get("priority", 0)
        if type(reply_to) is not str:
            reply_to = fields.optional_str(reply_to, "property 'reply_to'") or ""
        if type(priority) is not int or not 0 <= priority <= fields.MAX_PRIORITY:
            priority = fields.priority(priority, "property 'priority'")
        return cls(
            task=name,
            id=task_id,
            args=args,
            kwargs=kwargs,
            eta=eta,
            expires=expires,
            retries=retries,
            timelimit=timelimit,
            root_id=root_id,
            parent_id=parent_id,
            group=group,
            group_index=group_index,
            shadow=shadow,
            origin=origin,
            ignore_result=ignore_result,
            callbacks=callbacks,
            errbacks=errbacks,
            chain=chain,
            chord=chord,
            reply_to=reply_to,
            priority=priority,
            extra_headers=extra,
            serializer=content_type,
        )


def _identity(name: Any, task_id: Any) -> tuple[str, str]:
    """Return the ``task`` and ``id`` headers: non-empty strings that encode as UTF-8."""
    if not isinstance(name, str) or not name:
        raise DecodeError(
            f"header 'task' must be a task name (a non-empty string), got {saferepr(name)}"
        )
    if not isinstance(task_id, str) or not task_id:
        raise DecodeError(
            f"header 'id' of task {name!r} must be a task id (a non-empty string), "
            f"got {saferepr(task_id)}"
        )
    if not name.isascii():
        fields.encodable(name, "header 'task'")
    if not task_id.isascii():
        fields.encodable(task_id, "header 'id'")
    return name, task_id


def _text(value: Any, name: str) -> str | None:
    """:func:`fields.optional_str`, with the usual string or null taken without a call."""
    if value is None or type(value) is str:
        return value
    return fields.optional_str(value, name)


def _signatures(value: Any, name: str) -> list[SignatureDict] | None:
    """:func:`fields.signatures`, with the usual null taken without a call."""
    return None if value is None else fields.signatures(value, name)


def _signature(value: Any, name: str) -> SignatureDict | None:
    """:func:`fields.signature`, with the usual null taken without a call."""
    return None if value is None else fields.signature(value, name)


#: Headers read into the message's fields.
_FIELD_HEADERS = frozenset(
    {
        "task",
        "id",
        "eta",
        "expires",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "group",
        "group_index",
        "shadow",
        "origin",
        "ignore_result",
    }
)
#: Headers written again from the fields on every send (or constant), never kept.
_DERIVED_HEADERS = frozenset({"lang", "argsrepr", "kwargsrepr", "replaced_task_nesting"})
#: Celery's stamping headers: kept as extra headers only when they say something.
_STAMP_HEADERS = frozenset({"stamped_headers", "stamps"})
#: Every header :meth:`TaskMessage.headers` writes: what chard and Celery send.
_STANDARD_HEADERS = _FIELD_HEADERS | _DERIVED_HEADERS | _STAMP_HEADERS


def _extra_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """Return the headers of ``headers`` that no field holds (a new dict), in their order.

    Raises:
        DecodeError: one of chard's counting headers is not a count.
    """
    unstamped = headers.get("stamped_headers") is None and not headers.get("stamps")
    if unstamped and headers.keys() <= _STANDARD_HEADERS:
        return {}  # (a set comparison in C: what nearly every message has)
    extra = {
        key: value
        for key, value in headers.items()
        if key not in _FIELD_HEADERS and key not in _DERIVED_HEADERS
    }
    if unstamped:
        extra.pop("stamped_headers", None)
        extra.pop("stamps", None)
    for counted in _COUNT_HEADERS:
        if counted in extra:
            fields.count(extra[counted], f"header {counted!r}")
    return extra


def peek(data: bytes) -> tuple[str | None, str | None]:
    """Return ``(task name, task id)`` from an envelope's headers, or Nones; never raises.

    Lets the worker name a message it cannot decode in its log line and dead-letter record.
    """
    try:
        headers = serializers.json_loads(data).get("headers") or {}
        return headers.get("task"), headers.get("id")
    except Exception:
        return None, None


def salvage(data: bytes, accept: frozenset[str]) -> TaskMessage | None:
    """Return what can still be read of a message :meth:`TaskMessage.from_wire` refused.

    The task's name and id, its group and lineage headers when they have the right
    types, and the workflow embed (``callbacks``, ``errbacks``, ``chain``, ``chord``)
    when the body still decodes; arguments are left out. None if not even the id can
    be read. Never raises. The worker uses it to record the FAILURE of an undecodable
    message and end its workflow, instead of leaving every waiter PENDING.
    """
    try:
        envelope = serializers.json_loads(data)
        headers = envelope.get("headers") or {}
    except Exception:
        return None
    if not isinstance(headers, dict):
        return None
    name, task_id = headers.get("task"), headers.get("id")
    if not isinstance(task_id, str) or not task_id:
        return None

    def text(key: str) -> str | None:
        value = headers.get(key)
        return value if isinstance(value, str) else None

    index = headers.get("group_index")
    return TaskMessage(
        task=name if isinstance(name, str) and name else "?",
        id=task_id,
        root_id=text("root_id"),
        parent_id=text("parent_id"),
        group=text("group"),
        group_index=index if type(index) is int else None,
        ignore_result=headers.get("ignore_result") is True,
        **_salvage_embed(envelope, accept),
    )


def _salvage_embed(envelope: dict[str, Any], accept: frozenset[str]) -> dict[str, Any]:
    """The workflow fields of a body that still decodes, each only if it has its type."""
    try:
        raw = envelope.get("body", "")
        if (envelope.get("properties") or {}).get("body_encoding") == "base64":
            raw = base64.b64decode(raw, validate=True)
        payload = raw.encode("utf-8") if isinstance(raw, str) else raw
        body = serializers.loads(payload, envelope.get("content-type", "application/json"), accept)
        embed = body[2] if isinstance(body, (list, tuple)) and len(body) == 3 else None
    except Exception:
        return {}
    if not isinstance(embed, dict):
        return {}
    found: dict[str, Any] = {}
    # The same checks as a decoded message's (a signature needs its task name), so what
    # is salvaged can be sent or ended like any workflow.
    for key, check in (
        ("callbacks", fields.signatures),
        ("errbacks", fields.signatures),
        ("chain", fields.signatures),
        ("chord", fields.signature),
    ):
        try:
            found[key] = check(embed.get(key), key)
        except DecodeError:
            continue
    return found


def with_header(data: bytes, key: str, value: Any) -> bytes:
    """Return the envelope ``data`` with header ``key`` set to ``value``, body untouched.

    Used to re-publish a message with a bookkeeping header (e.g. how many times its
    worker process died) without decoding or re-encoding the body.
    """
    envelope = serializers.json_loads(data)
    envelope.setdefault("headers", {})[key] = value
    envelope.setdefault("properties", {})["delivery_tag"] = new_id()
    return serializers.json_dumps(envelope)
