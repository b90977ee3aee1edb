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
import operator
from typing import Any

from chard.protocol import serializers
from chard.protocol.ids import new_id
from chard.protocol.message import Slots, TaskMessage
from chard.protocol.reprs import args_repr, kwargs_repr

#: A slot in the template text: no JSON text holds a raw NUL (the encoder writes \\u0000).
_MARK = "\0"
_JSON = serializers.get_serializer("json")
#: The slots' names, in the order :meth:`EnvelopeTemplate.render` lists their values.
_SLOTS = ("body", *Slots._fields)
#: The ``kwargsrepr`` JSON text of a send without keyword arguments.
_NO_KWARGS = serializers.json_string_text(kwargs_repr({}))


class EnvelopeTemplate:
    """The envelope of ``message`` sent to ``queue``, but for id, arguments and tag."""

    __slots__ = ("_literals", "_pick", "_tail")

    def __init__(self, message: TaskMessage, queue: str) -> None:
        if message.root_id == message.id:  # its own root: each send's id is its root
            message = message.evolve(root_id=None)
        # The ids are written in between quotes as they are (see render()); the reprs come
        # as JSON texts.
        marks = Slots(
            id=f'"{_MARK}id{_MARK}"',
            argsrepr=f"{_MARK}argsrepr{_MARK}",
            kwargsrepr=f"{_MARK}kwargsrepr{_MARK}",
            delivery_tag=f'"{_MARK}delivery_tag{_MARK}"',
        )
        text = message._wire_text(
            f"{_MARK}body{_MARK}", _JSON.content_type, _JSON.content_encoding, queue, marks
        )
        #: The body's end after ``[args, kwargs``: the workflow embed.
        self._tail = "," + serializers.json_text(message.body()[2]) + "]"
        # Split, the text is literal text at even indexes and a slot's name at odd ones.
        # render() puts its values after the literals and picks the pieces in text order:
        # one C call instead of a Python loop over the slots.
        parts = text.split(_MARK)
        self._literals = tuple(parts[::2])
        after = len(self._literals)
        self._pick = operator.itemgetter(
            *(i // 2 if i % 2 == 0 else after + _SLOTS.index(p) for i, p in enumerate(parts))
        )

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

        ``task_id`` and ``delivery_tag`` are written in as they are: ids that JSON writes
        unescaped (no quote, backslash or control character), as :func:`new_id`'s are.

        Raises:
            TypeError, ValueError: an argument cannot be encoded (the caller takes the full
                path, whose error names the argument).
        """
        s = serializers.json_string_text
        body = (serializers.json_text((args, kwargs))[:-1] + self._tail).encode()
        values = (  # in the order of _SLOTS
            binascii.b2a_base64(body, newline=False).decode("ascii"),
            task_id,
            s(args_repr(args)),
            s(kwargs_repr(kwargs)) if kwargs else _NO_KWARGS,
            delivery_tag or new_id(),
        )
        return "".join(self._pick(self._literals + values)).encode()
