"""How a chard AMQP connection writes: each call's frames in one send, made at once.

pika's transport queues every frame as a buffer of its own and sends only when its I/O
loop next finds the socket writable. So a publish was: an ``epoll_ctl`` to watch the
socket for writability, a poll that reports it, pika's dispatch of that event, three
sends (method, header, body), and another ``epoll_ctl`` to stop watching; an ack the
same with one send. On loopback each send runs the whole TCP path of both ends (20-70
µs of CPU each on this machine), and each turn of pika's loop is Python on the path of
every task: the worker's reply and ack, the client's ``delay()``.

:class:`Writes` makes a call's frames one ``bytes`` and sends it in the calling thread
(the client's lock is held, as for every use of the connection) when nothing is queued
before it. What the socket does not take at once (a full send buffer, an error) goes
into pika's queue, and pika's own path sends it or meets the error and closes the
connection as it always did. While :attr:`Writes.held` is set, writes queue in pika's
buffer instead, to go out together (a batch of acks: :meth:`AmqpClient.acks_together`);
anything that waits on the way (a confirmed publish) sends them with its own, through
pika's loop. :meth:`Writes.release` then sends what is queued itself, again without a
turn of the loop first (in traced round trips the sender's confirm and its reply often
reached it right after the worker's ack: the ack may be on the round trip's path).

The transport is pika's private part: a connection of another shape (TLS) keeps only
the joining of queued buffers, or nothing if that too has another shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pika


class Writes:
    """The write path of one connection (see the module docstring)."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        #: Queue writes in pika's buffer, for :meth:`release` (or pika's loop) to send.
        self.held = False
        self._transport: Any = None
        impl = connection._impl
        transport = getattr(impl, "_transport", None)
        produce = getattr(transport, "_produce", None)
        if transport is None or produce is None or not hasattr(transport, "_tx_buffers"):
            return
        buffers = transport._tx_buffers

        def produce_joined() -> None:
            if len(buffers) > 1:
                joined = b"".join(buffers)
                buffers.clear()
                buffers.append(joined)
            produce()

        transport._produce = produce_joined
        if type(transport).__name__ != "_AsyncPlaintextTransport" or not all(
            hasattr(transport, a)
            for a in (
                "write",
                "_sock",
                "_state",
                "_STATE_ACTIVE",
                "_nbio",
                "_tx_buffered_byte_count",
                "_sigint_safe_send",
            )
        ):
            return
        self._transport = transport
        self._queue = transport.write
        transport.write = self._write
        if hasattr(impl, "_output_marshaled_frames"):
            self._impl = impl
            impl._output_marshaled_frames = self._output

    def _output(self, frames: Sequence[bytes]) -> None:
        """pika's frame output, with the frames of one call joined into one write."""
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        self._impl.bytes_sent += len(data)
        self._impl.frames_sent += len(frames)
        self._impl._adapter_emit_data(data)

    def release(self) -> None:
        """End :attr:`held`: send what pika has queued, in one send, now."""
        self.held = False
        transport = self._transport
        if transport is None or not transport._tx_buffers:
            return
        if transport._state != transport._STATE_ACTIVE:
            return
        buffers = transport._tx_buffers
        data = b"".join(buffers)
        try:
            sent = transport._sigint_safe_send(transport._sock, data)
        except OSError:  # pika's loop meets the error again and handles it
            return
        buffers.clear()
        transport._tx_buffered_byte_count = len(data) - sent
        if sent < len(data):
            buffers.append(data[sent:])  # its writer is still watched: pika's loop sends it
        else:
            transport._nbio.remove_writer(transport._sock.fileno())

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if self.held or transport._tx_buffers or transport._state != transport._STATE_ACTIVE:
            self._queue(data)  # behind what is queued (or pika ignores it when inactive)
            return
        try:
            sent = transport._sigint_safe_send(transport._sock, data)
        except OSError:  # EAGAIN, or an error pika's path will meet again and handle
            sent = 0
        if sent < len(data):
            self._queue(data[sent:])
