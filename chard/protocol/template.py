"""A task's envelope with the values of one send left open: what a plain ``delay()`` fills in.

Two sends of the same task with the same options differ only in the task id, the
arguments (body, ``argsrepr``, ``kwargsrepr``) and the delivery tag. The send path keeps
one :class:`EnvelopeTemplate` per task and writes only those in, so a plain ``delay()``
encodes its arguments once and builds no :class:`~chard.protocol.message.TaskMessage`.
The template is cut from :meth:`TaskMessage.to_wire`'s own text, so the bytes are the
same as a full encode's (a test pins them equal).
"""

from __future__ import annotations

import binascii
from typing import Any

from chard.protocol import serializers
from chard.protocol.message import Slots, TaskMessage, _args_repr, _kwargs_repr, new_id

#: A slot in the template text: no JSON text holds a raw NUL (the encoder writes \\u0000).
_MARK = "\0"
_JSON = serializers.get_serializer("json")


class EnvelopeTemplate:
    """The envelope of ``message`` sent to ``queue``, but for id, arguments and tag."""

    __slots__ = ("_parts", "_slots", "_tail")

    def __init__(self, message: TaskMessage, queue: str) -> None:
        if message.root_id == message.id:  # its own root: each send's id is its root
            message = message.evolve(root_id=None)
        marks = Slots(*(f"{_MARK}{name}{_MARK}" for name in Slots._fields))
        text = message._wire_text(
            f"{_MARK}body{_MARK}", _JSON.content_type, _JSON.content_encoding, queue, marks
        )
        #: The body's end after ``[args, kwargs``: the workflow embed.
        self._tail = "," + serializers.json_text(message.body()[2]) + "]"
        #: Literal text at even indexes, a slot's name at odd ones.
        self._parts = text.split(_MARK)
        self._slots = tuple(range(1, len(self._parts), 2))

    @staticmethod
    def fits(message: TaskMessage) -> bool:
        """Whether sends like ``message`` can use a template (JSON, no headers of its own)."""
        return not message.extra_headers and (
            message.serializer in (_JSON.name, _JSON.content_type)
        )

    def render(
        self,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        delivery_tag: str | None = None,
    ) -> bytes:
        """The envelope of one send, byte for byte what ``TaskMessage.to_wire`` writes.

        Raises:
            TypeError, ValueError: an argument cannot be encoded (the caller takes the full
                path, whose error names the argument).
        """
        j = serializers.json_text
        body = (j((args, kwargs))[:-1] + self._tail).encode()
        values = {
            "body": binascii.b2a_base64(body, newline=False).decode("ascii"),
            "id": j(task_id),
            "argsrepr": j(_args_repr(args)),
            "kwargsrepr": j(_kwargs_repr(kwargs)),
            "delivery_tag": j(delivery_tag or new_id()),
        }
        parts = self._parts.copy()
        for index in self._slots:
            parts[index] = values[parts[index]]
        return "".join(parts).encode()
