"""AMQP message properties to and from chard's :class:`~chard._amqp.frames.Frame`.

pika encodes no AMQP float or double in a header table, so floats travel as AMQP
decimals (nine significant digits) and come back as floats. Moved out of the client,
which only calls these on the way in and out.
"""

from __future__ import annotations

import decimal
from typing import Any

import pika

from chard._amqp.frames import Frame


def from_properties(props: pika.BasicProperties, body: bytes) -> Frame:
    """The frame of a received message: its body and the properties chard reads."""
    return Frame(
        body=body,
        headers=decode_value(dict(props.headers or {})),
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        priority=props.priority or 0,
    )


def to_properties(frame: Frame, persistent: bool = True) -> pika.BasicProperties:
    """The properties ``frame`` is published with (delivery mode 2 if ``persistent``)."""
    return pika.BasicProperties(
        content_type=frame.content_type,
        content_encoding=frame.content_encoding,
        headers=encode_table(frame.headers) or None,
        delivery_mode=2 if persistent else 1,
        priority=frame.priority or None,
        correlation_id=frame.correlation_id,
        reply_to=frame.reply_to,
    )


def encode_table(value: Any) -> Any:
    """Return ``value`` with floats as Decimals: pika encodes no AMQP float/double field."""
    if isinstance(value, float):
        # AMQP decimals hold a 32-bit unscaled value: nine significant digits.
        exact = decimal.Decimal(repr(value))
        digits = exact.as_tuple().digits
        return exact if len(digits) <= 9 else decimal.Decimal(format(value, ".9g"))
    if isinstance(value, dict):
        return {k: encode_table(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_table(v) for v in value]
    return value


def decode_value(value: Any) -> Any:
    """Undo :func:`encode_table`, and make AMQP byte strings text where they are."""
    if isinstance(value, decimal.Decimal):
        exponent = value.as_tuple().exponent
        return int(value) if exponent == 0 else float(value)
    if isinstance(value, dict):
        return {k: decode_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    return value
