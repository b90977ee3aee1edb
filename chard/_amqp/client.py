"""A thread-safe, reconnecting AMQP client over pika's BlockingConnection.

Why pika: chard's worker is synchronous (threads and processes), so a blocking client
fits without an event loop thread; pika is the best known pure-Python AMQP 0-9-1
client, supports publisher confirms, and needs no C extension.

One connection, three channels. The *work* channel publishes (in confirm mode: a publish
returns once RabbitMQ has the message), gets and acks; delivery tags live on it. The
*admin* channel declares, purges and probes (a passive declare of a missing queue closes
its channel, and that must never drop the work channel's unacked deliveries). The *tx*
channel publishes batches in one transaction: all or none, one round trip for the lot.

Every call holds one lock (pika is not thread-safe). On a lost connection the client
reconnects once per call, with back-off across calls, and bumps :attr:`generation`: tags
from an older generation are dead (RabbitMQ has already requeued those messages), so
settling them is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from chard._amqp.confirms import Confirms, Refused, Unroutable
from chard._amqp.frames import Frame
from chard._amqp.properties import decode_value, from_properties, to_properties
from chard._amqp.url import AmqpTarget
from chard._amqp.waking import WakingLock
from chard._amqp.writes import Writes
from chard.exceptions import BrokerConnectionError, BrokerError, ImproperlyConfigured

T = TypeVar("T")

logger = logging.getLogger(__name__)

# pika logs every connection step at INFO; a worker's log is for tasks.
logging.getLogger("pika").setLevel(logging.WARNING)

#: Errors after which the connection is rebuilt.
#: What pika raises for a header value no AMQP field table holds (before writing).
_UNENCODABLE = (struct.error, pika.exceptions.UnsupportedAMQPFieldException)
_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.StreamLostError,
    pika.exceptions.ChannelClosed,
    OSError,
)


def connection_name() -> str:
    """What this process's connections are called in RabbitMQ: ``chard <host>:<pid>``."""
    return f"chard {socket.gethostname()}:{os.getpid()}"


class UnroutableMessage(BrokerError):
    """RabbitMQ had no queue to route a published message to (it was deleted)."""


class MissingQueue(UnroutableMessage):
    """A queue or exchange used on the work channel is gone (deleted behind chard's back)."""


@dataclass(frozen=True)
class Got:
    """A message delivered unacked (pushed or ``basic.get``): its frame and how to settle it."""

    frame: Frame
    tag: int
    generation: int
    redelivered: bool
    exchange: str


class AmqpClient:
    """The calls chard's AMQP broker needs, each safe from any thread."""

    def __init__(self, target: AmqpTarget) -> None:
        self.target = target
        #: Held by every call; a thread that wants it wakes a :meth:`pump` waiting with it.
        self.lock = WakingLock(self._wake)
        #: Bumped on every new connection: delivery tags of older ones are void.
        self.generation = 0
        self._connection: pika.BlockingConnection | None = None
        self._work: BlockingChannel | None = None
        self._admin: BlockingChannel | None = None
        self._tx: BlockingChannel | None = None
        #: Acks are written out together at the end of :meth:`acks_together` (lock held).
        self._acks_deferred = False
        self._writes: Writes | None = None
        self._confirms: Confirms | None = None
        self._failures = 0

    # -- connection ------------------------------------------------------------
    def _parameters(self) -> pika.ConnectionParameters:
        t = self.target
        ssl_options = None
        if t.tls:
            context = ssl.create_default_context(cafile=t.ssl_options.get("ca_certs"))
            if t.ssl_options.get("certfile"):
                context.load_cert_chain(t.ssl_options["certfile"], t.ssl_options.get("keyfile"))
            if t.ssl_options.get("cert_reqs") in (ssl.CERT_NONE, "none", "CERT_NONE"):
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            ssl_options = pika.SSLOptions(context, t.host)
        return pika.ConnectionParameters(
            host=t.host,
            port=t.port,
            virtual_host=t.vhost,
            credentials=pika.PlainCredentials(t.user, t.password),
            heartbeat=t.heartbeat,
            blocked_connection_timeout=30,
            socket_timeout=t.connect_timeout,
            ssl_options=ssl_options,
            # Names this process's connection in RabbitMQ's tools (and for an operator to close).
            client_properties={"connection_name": connection_name()},
        )

    def _connect(self) -> None:
        if self._failures:
            time.sleep(min(0.1 * 2 ** (self._failures - 1), 2.0))  # back-off across calls
        try:
            connection = pika.BlockingConnection(self._parameters())
            writes = Writes(connection)
            work = connection.channel()
            confirms = Confirms(work)
            admin = connection.channel()
            tx = connection.channel()
            tx.tx_select()
        except pika.exceptions.ProbableAuthenticationError as exc:
            raise ImproperlyConfigured(
                f"RabbitMQ at {self.target.redacted!r} refused the login of user "
                f"{self.target.user!r}: {exc}; check the user and password in the broker URL"
            ) from exc
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._failures += 1
            raise BrokerConnectionError(
                f"cannot connect to RabbitMQ at {self.target.redacted!r}: {exc!r}; "
                f"is it running, and does vhost {self.target.vhost!r} exist?"
            ) from exc
        self._failures = 0
        self._connection, self._work, self._admin, self._tx = connection, work, admin, tx
        self._writes, self._confirms = writes, confirms
        self.generation += 1

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._work = self._admin = self._tx = None
        self._writes = self._confirms = None
        if connection is not None and connection.is_open:
            # Closing a broken connection may fail in any way; it is being dropped anyway.
            with contextlib.suppress(Exception):
                connection.close()

    def call(
        self, action: Callable[[BlockingChannel], T], *, admin: bool = False, tx: bool = False
    ) -> T:
        """Run ``action`` on a channel, reconnecting once if the connection was lost."""
        with self.lock:
            for attempt in (1, 2):
                if self._connection is None or not self._connection.is_open:
                    self._drop()
                    self._connect()
                channel = self._admin if admin else self._tx if tx else self._work
                assert channel is not None
                try:
                    if not channel.is_open:
                        raise pika.exceptions.ChannelWrongStateError("channel closed")
                    return action(channel)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if admin:
                        self._reopen_admin()
                    else:  # its unacked deliveries are back in their queues: start afresh
                        self._drop()
                        if exc.reply_code == 404:
                            raise MissingQueue(
                                f"RabbitMQ has no such queue or exchange: {exc.reply_text}"
                            ) from exc
                    if exc.reply_code in (404, 406) or attempt == 2:
                        raise
                except _CONNECTION_ERRORS as exc:
                    self._drop()
                    logger.warning(
                        "Lost the connection to RabbitMQ at %s (%r); reconnecting",
                        self.target.redacted,
                        exc,
                    )
                    if attempt == 2:
                        raise BrokerConnectionError(
                            f"lost the connection to RabbitMQ at {self.target.redacted!r}: {exc!r}"
                        ) from exc
            raise AssertionError("unreachable")

    def _reopen_admin(self) -> None:
        assert self._connection is not None
        self._admin = self._connection.channel()

    def pump(self, timeout: float = 0) -> None:
        """Dispatch what has arrived (deliveries to consumers, AMQP heartbeats).

        With ``timeout``, wait up to that long for something to arrive first, or until
        another thread asks for the lock (see :mod:`chard._amqp.waking`).
        """
        with self.lock:
            if self._connection is not None and self._connection.is_open:
                self.lock.waiting = timeout > 0
                try:
                    if self.lock.contenders:
                        timeout = 0
                    self._connection.process_data_events(timeout)
                except _CONNECTION_ERRORS:
                    self._drop()
                finally:
                    self.lock.waiting = False

    def _wake(self) -> None:
        """End a :meth:`pump` wait (called from another thread, without the lock)."""
        connection = self._connection
        if connection is not None:
            # The connection may close under us; then the wait has ended anyway.
            with contextlib.suppress(Exception):
                connection.add_callback_threadsafe(_nothing)

    @property
    def is_open(self) -> bool:
        """Whether the connection is up (:meth:`pump` drops a broken one; a call reopens it)."""
        with self.lock:
            return self._connection is not None and self._connection.is_open

    def consume(self, queue: str, on_body: Callable[[bytes], None]) -> int:
        """Consume ``queue`` with automatic acks, calling ``on_body`` from :meth:`pump`.

        For a queue only this process reads (an rpc:// reply queue): nothing to redeliver.
        Returns the connection generation it runs on (a reconnect ends it).
        """

        def start(channel: BlockingChannel) -> int:
            channel.basic_consume(
                queue, lambda _ch, _method, _props, body: on_body(body), auto_ack=True
            )
            return self.generation

        return self.call(start)

    def close(self) -> None:
        with self.lock:
            self._drop()

    # -- work channel ------------------------------------------------------------
    def publish(
        self,
        exchange: str,
        routing_key: str,
        frame: Frame,
        *,
        persistent: bool = True,
        confirmed: bool = True,
    ) -> None:
        """Publish ``frame`` and return once RabbitMQ confirmed it.

        A persistent message is confirmed once it is on disk (an fsync away); a transient
        one (``persistent=False``: rpc:// replies, which die with their client anyway) as
        soon as its queue has it. With ``confirmed=False`` it returns once the message is
        written: for a message that only has to reach RabbitMQ before what this client
        writes next on the work channel (see :mod:`chard._amqp.confirms`); an unroutable
        one is dropped.

        Raises:
            UnroutableMessage: no queue is bound for it (declare it, then retry).
            BrokerError: RabbitMQ refused it.
        """
        props = to_properties(frame, persistent)

        def send(_channel: BlockingChannel) -> None:
            assert self._confirms is not None  # set with the work channel
            self._confirms.publish(exchange, routing_key, frame.body, props, wait=confirmed)

        try:
            self.call(send)
        except Unroutable as exc:
            raise UnroutableMessage(
                f"RabbitMQ could not route a message to exchange {exchange!r} with routing key "
                f"{routing_key!r}: no queue is bound for it; check the bindings in task_queues "
                "and the routing_key of the route or call"
            ) from exc
        except Refused as exc:
            raise BrokerError(
                f"RabbitMQ refused a message for {exchange!r} / {routing_key!r}: {exc}"
            ) from exc
        except _UNENCODABLE as exc:
            raise BrokerError(
                f"a message for {exchange!r} / {routing_key!r} has a header value AMQP "
                f"cannot carry ({exc}): pass it as a string, or in the task's arguments"
            ) from exc

    def publish_batch(self, items: Sequence[tuple[str, str, Frame]]) -> None:
        """Publish ``(exchange, routing_key, frame)`` items in one transaction: all or none.

        The caller declared their queues: a transaction reports no unroutable message.
        """

        def send(channel: BlockingChannel) -> None:
            for exchange, key, frame in items:
                channel.basic_publish(exchange, key, frame.body, to_properties(frame))
            channel.tx_commit()

        self.call(send, tx=True)

    def get(self, queue: str) -> Got | None:
        """Take one message from ``queue`` unacked, or None when it has none ready."""

        def take(channel: BlockingChannel) -> Got | None:
            method, props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                return None
            return self._got(method, props, body)

        return self.call(take)

    def subscribe(self, queue: str, prefetch: int, on_got: Callable[[Got], None]) -> str:
        """Consume ``queue`` unacked on the work channel; return the consumer tag.

        RabbitMQ pushes up to ``prefetch`` unacked messages ahead (QoS), so a worker
        waits on its socket instead of asking with a ``basic.get`` round trip per
        message. ``on_got`` is called from :meth:`pump` (and any other call that reads
        the socket). The consumer ends with its connection (see :attr:`generation`) or
        when RabbitMQ cancels it (its queue was deleted: :meth:`consuming` says so).
        """

        def start(channel: BlockingChannel) -> str:
            channel.basic_qos(prefetch_count=prefetch)
            return str(
                channel.basic_consume(
                    queue, lambda _ch, method, props, body: on_got(self._got(method, props, body))
                )
            )

        return self.call(start)

    def unsubscribe(self, tag: str) -> None:
        """Cancel consumer ``tag``; what it was pushed and did not dispatch goes back."""
        self.call(lambda channel: channel.basic_cancel(tag))

    def consuming(self, tag: str) -> bool:
        """Whether consumer ``tag`` of the current connection still runs."""
        with self.lock:
            return self._work is not None and tag in self._work.consumer_tags

    def _got(self, method: Any, props: Any, body: bytes) -> Got:
        frame = from_properties(props, body)
        return Got(frame, method.delivery_tag, self.generation, method.redelivered,
                   method.exchange)  # fmt: skip

    def settle(self, got: Got, *, requeue: bool | None = None) -> bool:
        """Ack ``got`` (``requeue`` None) or reject it; False if its connection is gone."""
        with self.lock:
            if got.generation != self.generation or self._work is None:
                return False
            try:
                if requeue is None and self._acks_deferred:
                    # pika's channel under the blocking one: queued, written by the flush
                    self._work._impl.basic_ack(got.tag)
                else:
                    if requeue is None:
                        self._work.basic_ack(got.tag)
                    else:
                        self._work.basic_nack(got.tag, requeue=requeue)
                    # The write went out at once (chard._amqp.writes); read what came, so
                    # a connection the server closed is noticed here, as a failed settle.
                    assert self._connection is not None
                    self._connection.process_data_events(0)
            except _CONNECTION_ERRORS:
                self._drop()
                return False
            return True

    @contextlib.contextmanager
    def acks_together(self) -> Iterator[None]:
        """Hold the lock; the acks made in the block go out in one write at its end.

        pika's blocking channel writes each ``basic.ack`` on its own (a poll and a send,
        and a TCP segment for RabbitMQ to read); a worker acks in batches. If the
        connection dies before the write, RabbitMQ requeues those messages, as it does
        for any unacked delivery of a dead connection.
        """
        with self.lock:
            self._acks_deferred = True
            writes = self._writes
            if writes is not None:
                writes.held = True
            try:
                yield
            finally:
                self._acks_deferred = False
                if writes is not None:
                    writes.release()  # sends them now
                self.pump()  # reads what came (a connection closed meanwhile is noticed)

    # -- admin channel -------------------------------------------------------------
    def declare_queue(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
    ) -> int:
        """Declare queue ``name`` (durable unless told); return how many messages wait in it.

        Raises:
            ImproperlyConfigured: it exists with other arguments (the message says which).
        """

        def declare(channel: BlockingChannel) -> int:
            ok = channel.queue_declare(
                name,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=dict(arguments or {}),
            )
            return int(ok.method.message_count)

        try:
            return self.call(declare, admin=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise ImproperlyConfigured(
                f"RabbitMQ refused to declare queue {name!r} with arguments "
                f"{dict(arguments or {})}: {exc.reply_text}; delete the queue or make task_queues, "
                "task_queue_max_priority and the queue type match how it was first declared"
            ) from exc

    def queue_size(self, name: str) -> int | None:
        """Return the ready messages of queue ``name``, or None if it does not exist."""

        def probe(channel: BlockingChannel) -> int:
            return int(channel.queue_declare(name, passive=True).method.message_count)

        try:
            return self.call(probe, admin=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return None
            raise

    def declare_exchange(
        self,
        name: str,
        kind: str,
        *,
        durable: bool = True,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare exchange ``name`` of type ``kind``.

        Raises:
            ImproperlyConfigured: it exists with another type or options.
        """
        args = dict(arguments) if arguments else None

        def declare(channel: BlockingChannel) -> None:
            channel.exchange_declare(
                name, kind, durable=durable, auto_delete=auto_delete, arguments=args
            )

        try:
            self.call(declare, admin=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise ImproperlyConfigured(
                f"RabbitMQ refused to declare exchange {name!r} as {kind!r} (durable="
                f"{durable}, auto_delete={auto_delete}): {exc.reply_text}; make task_queues "
                "declare it as it was first declared, or delete it"
            ) from exc

    def bind_queue(
        self, queue: str, exchange: str, key: str, arguments: Mapping[str, Any] | None = None
    ) -> None:
        args = dict(arguments) if arguments else None
        self.call(lambda ch: ch.queue_bind(queue, exchange, key, arguments=args), admin=True)

    def bind_exchange(self, destination: str, source: str, key: str) -> None:
        self.call(lambda ch: ch.exchange_bind(destination, source, key), admin=True)

    def purge(self, name: str) -> int:
        """Delete the ready messages of queue ``name`` (0 if it does not exist)."""
        if self.queue_size(name) is None:
            return 0
        return self.call(lambda ch: int(ch.queue_purge(name).method.message_count), admin=True)


def _nothing() -> None:
    """What a wake runs: nothing; its arrival is what ends the wait."""


def browse(client: AmqpClient, queue: str, limit: int) -> list[Frame]:
    """Return up to ``limit`` messages of ``queue`` without taking them.

    They are taken unacked on a channel of their own, which is closed after: RabbitMQ puts
    them back where they were.
    """

    def run(work: BlockingChannel) -> list[Frame]:
        channel = work.connection.channel()
        frames: list[Frame] = []
        try:
            while len(frames) < limit:
                method, props, body = channel.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                frames.append(from_properties(props, body))
        finally:
            if channel.is_open:
                channel.close()
        return frames

    return client.call(run)


#: What a stream consumer is called with: (offset, headers, body); True means "stop here".
StreamVisitor = Callable[[int, dict[str, Any], bytes], bool]


def consume_stream(
    client: AmqpClient,
    stream: str,
    start: int | str | datetime,
    visit: StreamVisitor,
    timeout: float,
) -> bool:
    """Read stream ``stream`` from ``start`` (an offset, ``"first"``, ``"last"`` or a time).

    Calls ``visit`` for each message in order until it returns True (then returns True) or
    ``timeout`` seconds pass (then False). Runs on a channel of its own, closed after.
    """

    def run(work: BlockingChannel) -> bool:
        connection = work.connection
        channel = connection.channel()
        done = False

        def on_message(ch: BlockingChannel, method: Any, props: Any, body: bytes) -> None:
            nonlocal done
            headers = decode_value(dict(props.headers or {}))
            if not done:
                done = visit(int(headers.get("x-stream-offset", -1)), headers, body)
            ch.basic_ack(method.delivery_tag)  # streams need acks only to keep credit

        try:
            channel.basic_qos(prefetch_count=1000)
            channel.basic_consume(stream, on_message, arguments={"x-stream-offset": start})
            deadline = time.monotonic() + timeout
            while not done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                connection.process_data_events(time_limit=remaining)  # returns on a delivery
        finally:
            if channel.is_open:
                channel.close()
        return done

    return client.call(run)
