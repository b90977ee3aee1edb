"""The ``rpc://`` result backend: states sent as messages to the client's own reply queue.

As Celery's RPC backend does it: a client sends its tasks with ``reply_to`` naming a queue
of its own (``chard.reply.<id>``, declared before the first send, non-durable, deleted
after ``result_expires`` unused), and the worker publishes each state of the task (STARTED,
progress, the result) to the default exchange with that routing key and
``correlation_id`` = the task id, as JSON metas. The client reads its queue, keeping the
newest state of each task in memory: a result is read once, by the process that sent the
task. Another process cannot read it, and nothing is stored anywhere else.

It rides on the broker's RabbitMQ (``rpc://`` names no server), and reads its replies on
the app's broker connection: the one ``delay()`` publishes on. A reply that comes while
``delay()`` waits for RabbitMQ's confirm (a persistent message waits for an fsync, often
longer than a quick task takes) is then read in that same wait, and ``get()`` finds it
without another read of the socket. A worker publishes its replies on its broker
connection too, without waiting for a confirm: the task's ack follows on the same
channel, and RabbitMQ handles a channel's methods in order, so the reply is in its queue
before the ack counts (:mod:`chard._amqp.confirms`). Without the broker's connection to
share, replies go out confirmed on a connection of their own. Chords and saved groups
need a store that counts and that any process reads: they fail at send, naming the
backends that have one.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from chard._amqp.client import AmqpClient, UnroutableMessage
from chard._amqp.frames import Frame
from chard._amqp.url import AMQP_SCHEMES, parse_amqp_url
from chard._utils.log import redact_url
from chard.backends.base import Meta, ResultBackend
from chard.exceptions import BackendConnectionError, BrokerConnectionError, ImproperlyConfigured
from chard.protocol import serializers

NO_CHORDS = (
    "the rpc:// result backend cannot run chords or save groups: only the sending process "
    "reads its results; use result_backend='redis://...' or 'sqlite:///...'"
)
#: Requests whose reply_to a worker process remembers at most.
_MAX_NOTED = 100_000
#: How long an unused reply queue lives without ``result_expires`` (Celery's default).
DEFAULT_EXPIRES = 86400.0


class RPCResultBackend(ResultBackend):
    """Results as messages to the sender's reply queue (see the module docstring)."""

    #: A consumer on the reply queue: a wait returns as soon as a state arrives.
    has_native_wait = True

    def __init__(
        self,
        url: str,
        *,
        expires: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(url, expires=expires, options=options)
        broker_url = str(self.options.get("broker_url") or "")
        if broker_url.partition("://")[0].lower() not in AMQP_SCHEMES:
            raise ImproperlyConfigured(
                f"result backend 'rpc://' needs a RabbitMQ broker (amqp://), not "
                f"{redact_url(broker_url) or 'none'!r}; use result_backend='redis://...' there"
            )
        self.target = parse_amqp_url(broker_url, self.options)
        #: Publishes and reads the replies when there is no broker connection to share.
        self.publisher = AmqpClient(self.target)
        self._broker: Callable[[], object] | None = None
        self._reader: AmqpClient | None = None
        self._reply_queue: str | None = None
        #: The connection generation the reply consumer runs on (0: none yet).
        self._consuming = 0
        self._lock = threading.Lock()
        #: The newest meta (JSON) of each task seen on the reply queue, by task key.
        self._seen: dict[str, bytes] = {}
        #: reply_to of the tasks this (worker) process received, and whether each was acked
        #: as it started, by task id; bounded, as a task that stores nothing never pops it.
        self._reply_to: OrderedDict[str, tuple[str, bool]] = OrderedDict()

    # -- the sending side ---------------------------------------------------------------
    def share_broker(self, broker: Callable[[], object]) -> None:
        self._broker = broker

    @property
    def client(self) -> AmqpClient:
        """The connection the reply queue is read on: the app's broker's, if it is ours."""
        reader = self._reader
        if reader is None:
            shared = getattr(self._broker(), "client", None) if self._broker else None
            if isinstance(shared, AmqpClient) and shared.target == self.target:
                reader = shared
            else:
                reader = self.publisher
            self._reader = reader
        return reader

    @property
    def reply_queue(self) -> str:  # the base's "" is a plain attribute-like property
        """This process's reply queue, declared on first use (before a task is sent)."""
        with self._lock:
            if self._reply_queue is None:
                name = f"chard.reply.{uuid.uuid4().hex}"
                expires = int((self.expires or DEFAULT_EXPIRES) * 1000)
                self.client.declare_queue(name, {"x-expires": expires}, durable=False)
                self._reply_queue = name
            return self._reply_queue

    def _drain(self, timeout: float = 0) -> None:
        """Take in the states that arrived on the reply queue (waiting up to ``timeout``)."""
        if self._reply_queue is None:
            return
        with self.client.lock:
            # First, after a reconnect, or after pump dropped a broken connection (which
            # leaves the generation as it was): without a consumer no reply ever comes in.
            if self._consuming != self.client.generation or not self.client.is_open:
                try:
                    self._consuming = self.client.consume(self._reply_queue, self._on_reply)
                except BrokerConnectionError as exc:  # the waiter rides it out to its deadline
                    raise BackendConnectionError(str(exc)) from exc
            self.client.pump(timeout)  # another thread wanting the lock ends the wait

    def _on_reply(self, body: bytes) -> None:
        """Keep ``body`` as its task's state unless a ready one is already kept."""
        meta = self._load(body)
        if meta is None or "task_id" not in meta:
            return
        key = self.task_key(str(meta["task_id"]))
        current = self._load(self._seen.get(key))
        if current is None or not self._is_final_over(current.get("status"), str(meta["status"])):
            self._seen[key] = body

    def _wait_for_change(self, keys: Sequence[str], timeout: float) -> None:
        self._drain(timeout)

    def _wait_for_values(self, keys: Collection[str], timeout: float) -> Mapping[str, bytes]:
        """Wait up to ``timeout`` for replies; return the states kept for ``keys``.

        The wait itself took in what arrived: no second read of the socket (the base
        class would read every key again).
        """
        self._drain(timeout)
        seen = self._seen
        found = {key: seen.get(key) for key in keys}  # (one read each: forget() may pop)
        return {key: value for key, value in found.items() if value is not None}

    def _get(self, key: str) -> bytes | None:
        self._drain()
        return self._seen.get(key)

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        self._drain()
        return [self._seen.get(key) for key in keys]

    def _delete(self, key: str) -> None:
        self._seen.pop(key, None)

    # -- the worker side ------------------------------------------------------------------
    def note_request(self, task_id: str, reply_to: str, *, acked_first: bool = False) -> None:
        if reply_to:
            self._reply_to[task_id] = (reply_to, acked_first)
            while len(self._reply_to) > _MAX_NOTED:
                self._reply_to.popitem(last=False)

    def _store_metas(self, metas: Sequence[tuple[Meta, bytes]]) -> list[Meta]:
        """Publish each meta to its task's reply queue; a task without one has no reader.

        On the broker's connection a reply is not waited for: the task's ack follows it on
        the same channel (see the module docstring). On a connection of its own it is, and
        so is one for a task acked as it started (no ack follows it).
        """
        client = self.client
        shared = client is not self.publisher
        for meta, _ in metas:
            task_id = str(meta["task_id"])
            noted = self._reply_to.get(task_id)
            if noted is None:
                continue
            reply_to, acked_first = noted
            if meta.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
                self._reply_to.pop(task_id, None)
            frame = Frame(
                serializers.json_dumps(meta),
                content_type="application/json",
                content_encoding="utf-8",
                correlation_id=task_id,
            )
            # UnroutableMessage: the client and its queue are gone; nobody is left to read it.
            with contextlib.suppress(UnroutableMessage):
                confirmed = not shared or acked_first
                client.publish("", reply_to, frame, persistent=False, confirmed=confirmed)
        return [meta for meta, _ in metas]

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        raise NotImplementedError(NO_CHORDS)

    def _incr(self, key: str, ttl: float | None) -> int:
        raise NotImplementedError(NO_CHORDS)

    def save_group(self, group_id: str, task_ids: Sequence[str]) -> None:
        raise NotImplementedError(NO_CHORDS)

    def close(self) -> None:
        self.publisher.close()  # (a shared reader is the broker's to close)
