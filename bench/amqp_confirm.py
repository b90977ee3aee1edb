"""Micro-measure: microseconds per confirmed publish on RabbitMQ, transient and persistent.

``python -m bench.amqp_confirm [-n 300] [--url amqp://guest:guest@127.0.0.1:5672/]``
publishes ``n`` 300-byte messages to a durable queue of its own, one at a time, each
waiting for its publisher confirm, with:

- ``raw``: a minimal AMQP 0-9-1 client on a plain socket (below: handshake, one channel,
  ``confirm.select``, then ``basic.publish`` + header + body in one ``sendall`` and a
  blocking ``recv`` of the ``basic.ack``): the floor, what the server allows;
- ``py-amqp``: Celery's client with ``confirm_publish=True``;
- ``pika``: a pika ``BlockingChannel`` in confirm mode;
- ``chard``: chard's broker ``publish`` (what ``delay()`` does after encoding);

and prints the median and mean µs per publish of each. A persistent message is confirmed
once RabbitMQ has fsynced it, a transient one once its queue has it: the gap between the
two rows is the server's disk, not the client.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import time
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

QUEUE = "bench.confirm"
BODY = b"x" * 300


def _method(channel: int, class_id: int, method_id: int, args: bytes) -> bytes:
    payload = struct.pack(">HH", class_id, method_id) + args
    return struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"


def _short(text: str) -> bytes:
    return bytes([len(text)]) + text.encode()


def _long(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class RawClient:
    """Just enough AMQP for a confirmed publish: no heartbeats, no errors handled."""

    def __init__(self, host: str, port: int, user: str, password: str, vhost: str) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self._read_frame()  # connection.start
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        self.sock.sendall(
            _method(0, 10, 11, _long(b"") + _short("PLAIN") + _long(response) + _short("en_US"))
        )
        _, _, tune = self._read_frame()  # connection.tune
        channel_max, frame_max, _ = struct.unpack(">HIH", tune[4:12])
        self.sock.sendall(_method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0)))
        self.sock.sendall(_method(0, 10, 40, _short(vhost) + _short("") + b"\x00"))
        self._read_frame()  # connection.open-ok
        self.sock.sendall(_method(1, 20, 10, _short("")))
        self._read_frame()  # channel.open-ok
        self.sock.sendall(_method(1, 50, 10, b"\x00\x00" + _short(QUEUE) + b"\x02" + _long(b"")))
        self._read_frame()  # queue.declare-ok (durable)
        self.sock.sendall(_method(1, 85, 10, b"\x00"))
        self._read_frame()  # confirm.select-ok

    def _read_frame(self) -> tuple[int, int, bytes]:
        while True:
            if len(self.buffer) >= 7:
                kind, channel, size = struct.unpack(">BHI", self.buffer[:7])
                if len(self.buffer) >= size + 8:
                    payload = self.buffer[7 : 7 + size]
                    self.buffer = self.buffer[size + 8 :]
                    return kind, channel, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("RabbitMQ closed the connection")
            self.buffer += chunk

    def publish(self, persistent: bool) -> None:
        """One ``basic.publish`` (mandatory) in one write, then wait for its ``basic.ack``."""
        publish = _method(1, 60, 40, b"\x00\x00" + _short("") + _short(QUEUE) + b"\x01")
        # Content header: class 60, weight 0, body size, property flags (delivery-mode only).
        props = struct.pack(">HHQHB", 60, 0, len(BODY), 0x1000, 2 if persistent else 1)
        header = struct.pack(">BHI", 2, 1, len(props)) + props + b"\xce"
        body = struct.pack(">BHI", 3, 1, len(BODY)) + BODY + b"\xce"
        self.sock.sendall(publish + header + body)
        while True:
            kind, _, payload = self._read_frame()
            if kind == 1 and payload[:4] == struct.pack(">HH", 60, 80):  # basic.ack
                return

    def close(self) -> None:
        self.sock.sendall(_method(1, 50, 40, b"\x00\x00" + _short(QUEUE) + b"\x00"))
        self._read_frame()  # queue.delete-ok
        self.sock.close()


def _time(publish: Callable[[], None], n: int) -> tuple[float, float]:
    publish()  # warm-up
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        publish()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6, statistics.fmean(samples) * 1e6


def _raw(url: SplitResult, persistent: bool, n: int) -> tuple[float, float]:
    client = RawClient(
        url.hostname or "127.0.0.1", url.port or 5672, url.username or "guest",
        url.password or "guest", url.path[1:] or "/",
    )  # fmt: skip
    try:
        return _time(lambda: client.publish(persistent), n)
    finally:
        client.close()


def _py_amqp(url: SplitResult, persistent: bool, n: int) -> tuple[float, float]:
    import amqp

    conn = amqp.Connection(
        f"{url.hostname}:{url.port or 5672}", userid=url.username or "guest",
        password=url.password or "guest", virtual_host=url.path[1:] or "/",
        confirm_publish=True,
    )  # fmt: skip
    conn.connect()
    channel = conn.channel()
    channel.queue_declare(QUEUE, durable=True, auto_delete=False)
    mode = 2 if persistent else 1
    try:
        return _time(
            lambda: channel.basic_publish(
                amqp.Message(BODY, delivery_mode=mode), "", QUEUE, mandatory=True
            ),
            n,
        )
    finally:
        channel.queue_delete(QUEUE)
        conn.close()


def _pika(url: SplitResult, persistent: bool, n: int) -> tuple[float, float]:
    import pika

    credentials = pika.PlainCredentials(url.username or "guest", url.password or "guest")
    params = pika.ConnectionParameters(
        url.hostname, url.port or 5672, url.path[1:] or "/", credentials
    )
    conn = pika.BlockingConnection(params)
    channel = conn.channel()
    channel.queue_declare(QUEUE, durable=True)
    channel.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2 if persistent else 1)
    try:
        return _time(lambda: channel.basic_publish("", QUEUE, BODY, props, mandatory=True), n)
    finally:
        channel.queue_delete(QUEUE)
        conn.close()


def _chard(url: SplitResult, persistent: bool, n: int) -> tuple[float, float]:
    from chard._amqp.frames import Frame
    from chard.brokers.amqp import AmqpBroker

    broker = AmqpBroker(url.geturl())
    broker.client.declare_queue(QUEUE)
    frame = Frame(BODY, {"task": "bench"}, "application/json", "utf-8")
    try:
        return _time(lambda: broker.client.publish("", QUEUE, frame, persistent=persistent), n)
    finally:
        broker.client.call(lambda channel: channel.queue_delete(QUEUE), admin=True)
        broker.close()


def threads(url: SplitResult, persistent: bool, n: int, count: int, spares: int) -> float:
    """Confirmed publishes per second of ``count`` threads sharing one chard broker."""
    import threading

    from chard._amqp.frames import Frame
    from chard.brokers import _amqp_publishers
    from chard.brokers.amqp import AmqpBroker

    _amqp_publishers.SPARES = spares
    broker = AmqpBroker(url.geturl())
    broker.client.declare_queue(QUEUE)
    frame = Frame(BODY, {"task": "bench"}, "application/json", "utf-8")

    def run() -> None:
        for _ in range(n):  # what AmqpBroker._send does, with the persistence asked for
            with broker._publishers.lease() as client:
                client.publish("", QUEUE, frame, persistent=persistent)

    workers = [threading.Thread(target=run) for _ in range(count)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    rate = n * count / (time.perf_counter() - started)
    broker.client.call(lambda channel: channel.queue_delete(QUEUE), admin=True)
    broker.close()
    return rate


CLIENTS = {"raw socket": _raw, "py-amqp": _py_amqp, "pika": _pika, "chard client": _chard}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--threads", type=int, default=4, help="threads of the shared-broker run")
    args = parser.parse_args()
    url = urlsplit(args.url)
    print(f"chard broker shared by {args.threads} threads, confirmed publishes/s:")
    for persistent in (False, True):
        kind = "persistent" if persistent else "transient"
        one = threads(url, persistent, args.n, args.threads, spares=0)
        spread = threads(url, persistent, args.n, args.threads, spares=args.threads)
        print(f"  {kind:<12} one connection {one:>7.0f}   with spares {spread:>7.0f}", flush=True)
    print(f"{'client':<14}{'message':<12}{'p50 µs':>10}{'mean µs':>10}")
    for persistent in (False, True):
        kind = "persistent" if persistent else "transient"
        for name, measure in CLIENTS.items():
            p50, mean = measure(url, persistent, args.n)
            print(f"{name:<14}{kind:<12}{p50:>10.0f}{mean:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
