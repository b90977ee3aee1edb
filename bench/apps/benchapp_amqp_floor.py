"""The raw pika floor on RabbitMQ: the least a queue that keeps issue 15's promises can do.

What the RabbitMQ rows ask of chard (a ``delay()`` returns once RabbitMQ has the message;
a worker acks after the task) has a price on the server that no client can skip. This app
pays that price and nothing else, through pika (the client chard uses), so the rows show
how far each target is from what the server and the client library allow:

- send: ``basic.publish`` of a persistent message to the durable queue ``celery`` on a
  channel in confirm mode, returning when RabbitMQ confirms it (after its fsync).
- send of N: one transaction (``tx.select`` … ``tx.commit``), one fsync for the batch.
- call: the same publish with ``reply_to`` (an exclusive, auto-delete queue of the
  caller's, consumed with auto-ack) and ``correlation_id``.
- worker (``python -m benchapp_amqp_floor``: a parent and 2 forked processes, like a
  prefork pool): ``basic.consume`` with a prefetch of 64; per message the task's ``INCR``
  (as in every system), then, if it has a ``reply_to``, a transient reply without a
  confirm (as Celery's rpc:// sends it), then ``basic.ack``.

No envelope, no retries, no redelivery handling, no events: what it skips is what a real
queue pays for.
"""

import os
import time
import uuid
from typing import Any

import pika
from _counter import incr
from _prefork import run_forked

URL = os.environ["BENCH_BROKER_URL"]
QUEUE = "celery"  # the name the bench's reset purges
PERSISTENT = pika.BasicProperties(delivery_mode=2)
PREFETCH = 64


class _Client:
    """One connection: a confirm channel for sends, a tx channel for batches, replies."""

    def __init__(self) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(URL))
        self.channel = self.connection.channel()
        self.channel.queue_declare(QUEUE, durable=True)
        self.channel.confirm_delivery()
        self.batch = self.connection.channel()
        self.batch.tx_select()
        self.replies: set[str] = set()
        self.reply_queue = ""

    def reply_to(self) -> str:
        if not self.reply_queue:
            declared = self.channel.queue_declare("", exclusive=True, auto_delete=True)
            self.reply_queue = declared.method.queue
            self.channel.basic_consume(self.reply_queue, self._on_reply, auto_ack=True)
        return self.reply_queue

    def _on_reply(self, _ch: Any, _method: Any, props: Any, _body: bytes) -> None:
        self.replies.add(props.correlation_id)

    def wait(self, task_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while task_id not in self.replies:
            if time.monotonic() > deadline:
                raise TimeoutError(task_id)
            self.connection.process_data_events(time_limit=0.1)
        self.replies.discard(task_id)


_client: _Client | None = None


def _get() -> _Client:
    global _client
    if _client is None:
        _client = _Client()
    return _client


def send() -> None:
    _get().channel.basic_publish("", QUEUE, b"0", PERSISTENT)


def send_many(n: int) -> None:
    client = _get()
    for _ in range(n):
        client.batch.basic_publish("", QUEUE, b"0", PERSISTENT)
    client.batch.tx_commit()


def call() -> Any:
    client = _get()
    task_id = uuid.uuid4().hex
    props = pika.BasicProperties(
        delivery_mode=2, reply_to=client.reply_to(), correlation_id=task_id
    )
    client.channel.basic_publish("", QUEUE, b"1", props)
    return task_id


def wait(handle: Any) -> None:
    _get().wait(handle, 30)


def wait_all(handles: list[Any]) -> None:
    for handle in handles:
        _get().wait(handle, 300)


def work() -> None:
    """One worker process: take, count, answer, ack; until SIGTERM."""
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.queue_declare(QUEUE, durable=True)
    channel.basic_qos(prefetch_count=PREFETCH)

    def on_message(ch: Any, method: Any, props: Any, _body: bytes) -> None:
        incr()
        if props.reply_to:
            reply = pika.BasicProperties(correlation_id=props.correlation_id)
            ch.basic_publish("", props.reply_to, b"", reply)
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(QUEUE, on_message)
    channel.start_consuming()


if __name__ == "__main__":
    run_forked(work)
