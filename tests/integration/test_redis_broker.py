"""Redis-specific broker behaviour: kombu's key layout, leases across processes, idle cost."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from chard import Celery
from chard._redis.url import parse_redis_url
from chard.brokers.base import OutgoingMessage
from chard.brokers.redis import RedisBroker
from chard.exceptions import BrokerConnectionError, BrokerError
from chard.protocol.message import TaskMessage
from tests.helpers import REDIS_DB, REDIS_HOST, REDIS_PORT, redis_url, wait_for

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
JSON = frozenset({"application/json"})

#: The value of ``LPUSH celery`` captured from celery 5.7.0 (celery-protocol.md §a.2).
CELERY_ENVELOPE = (
    b'{"body": "W1syLCAyXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWl'
    b'uIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": '
    b'"application/json", "headers": {"lang": "py", "task": "tasks.add", "id": '
    b'"11111111-2222-3333-4444-555555555555", "shadow": null, "eta": null, "expires": null, '
    b'"group": null, "group_index": null, "retries": 0, "timelimit": [null, null], '
    b'"root_id": "11111111-2222-3333-4444-555555555555", "parent_id": null, "argsrepr": '
    b'"(2, 2)", "kwargsrepr": "{}", "origin": "gen11813@vm", "ignore_result": false, '
    b'"replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": '
    b'{"correlation_id": "11111111-2222-3333-4444-555555555555", "reply_to": '
    b'"e15221c2-9982-32e4-93cd-af290632420f", "delivery_mode": 2, "delivery_info": '
    b'{"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", '
    b'"delivery_tag": "bc7e1934-13b7-4b18-9552-703afc87dcbf"}}'
)


@pytest.fixture
def url() -> str:
    return redis_url()


@pytest.fixture
def raw(url: str) -> Iterator[redis.Redis]:
    """A plain client on the test's db; deletes the test's prefix keys afterwards."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    yield client
    prefix = url.split("global_keyprefix=", 1)[1]
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def prefix(url: str) -> bytes:
    return url.split("global_keyprefix=", 1)[1].encode()


@pytest.fixture
def make_broker(url: str, raw: redis.Redis) -> Iterator[Callable[..., RedisBroker]]:
    opened: list[RedisBroker] = []

    def factory(**options: Any) -> RedisBroker:
        broker = RedisBroker(url, options)
        opened.append(broker)
        return broker

    yield factory
    for broker in opened:
        broker.close()


def test_a_celery_message_pushed_raw_is_fetched_and_decodes(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, prefix: bytes
) -> None:
    # Given a Celery client's envelope, pushed exactly as kombu does
    raw.lpush(prefix + b"celery", CELERY_ENVELOPE)

    # When a chard consumer fetches the celery queue
    [delivery] = make_broker().fetch(["celery"], 10, timeout=1)

    # Then it gets the bytes untouched, and they decode as the task Celery sent
    assert delivery.body == CELERY_ENVELOPE
    assert delivery.delivery_count == 1
    message = TaskMessage.from_wire(delivery.body, JSON)
    assert (message.task, message.id, message.args) == (
        "tasks.add",
        "11111111-2222-3333-4444-555555555555",
        (2, 2),
    )
    delivery.ack()
    assert raw.hlen(prefix + b"chard.held") == 0


def test_a_chard_message_lands_in_the_celery_list_in_kombus_format(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, prefix: bytes
) -> None:
    body = TaskMessage(task="tasks.add", id="abc", args=(2, 2)).to_wire("celery")

    make_broker().publish(OutgoingMessage("celery", body))

    assert raw.lrange(prefix + b"celery", 0, -1) == [body]
    envelope = json.loads(body)
    assert envelope["properties"]["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert envelope["properties"]["body_encoding"] == "base64"
    assert json.loads(base64.b64decode(envelope["body"]))[:2] == [[2, 2], {}]


def test_priorities_use_kombus_bucket_lists(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, prefix: bytes
) -> None:
    broker = make_broker()
    priorities = [9, 6, 3, 0, 2, 5, 8]
    broker.publish([OutgoingMessage("q", f"p{p}".encode(), priority=p) for p in priorities])

    buckets = {
        key: raw.lrange(prefix + key, 0, -1)
        for key in (b"q", b"q\x06\x163", b"q\x06\x166", b"q\x06\x169")
    }
    # LPUSH: the newest is on the left, the next to pop on the right.
    assert buckets == {
        b"q": [b"p2", b"p0"],
        b"q\x06\x163": [b"p5", b"p3"],
        b"q\x06\x166": [b"p8", b"p6"],
        b"q\x06\x169": [b"p9"],
    }
    assert broker.queue_size("q") == 7
    assert [d.body for d in broker.fetch(["q"], 10, timeout=0)] == [
        b"p0",
        b"p2",
        b"p3",
        b"p5",
        b"p6",
        b"p8",
        b"p9",
    ]


def test_delayed_message_waits_in_the_zset_and_wakes_a_blocked_consumer(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, prefix: bytes
) -> None:
    broker = make_broker()
    eta = time.time() + 0.6
    broker.publish(OutgoingMessage("q", b"later", eta=eta))
    assert raw.zcard(prefix + b"chard.delayed") == 1
    assert raw.llen(prefix + b"q") == 0
    assert broker.queue_size("q") == 1
    assert broker.fetch(["q"], 1, timeout=0) == []

    # A consumer blocking longer than the delay gets it when due, not at its timeout.
    [delivery] = broker.fetch(["q"], 1, timeout=5)

    arrived = time.time()
    assert delivery.body == b"later"
    assert eta - 0.05 <= arrived < eta + 0.5
    assert raw.zcard(prefix + b"chard.delayed") == 0
    assert broker.queue_size("q") == 0


def test_a_publish_wakes_a_blocked_consumer_at_once(
    make_broker: Callable[..., RedisBroker],
) -> None:
    # Regression: the blocking wait named the wrong list, so a publish was only seen at
    # the next poll (1 s later): every round-trip on an idle worker took a second.
    consumer, producer = make_broker(poll_interval=5.0), make_broker()
    timer = threading.Timer(0.3, lambda: producer.publish(OutgoingMessage("q", b"now")))
    timer.start()
    started = time.monotonic()
    [delivery] = consumer.fetch(["q"], 1, timeout=5)
    waited = time.monotonic() - started
    timer.join()
    assert delivery.body == b"now"
    assert waited < 1.0


def test_a_killed_consumers_lease_lapses_and_is_redelivered(
    make_broker: Callable[..., RedisBroker], url: str
) -> None:
    # Given a consumer process that fetched a message and then died with SIGKILL
    lease_timeout = 1.0
    make_broker().publish(OutgoingMessage("q", b"work"))
    code = (
        "import sys\n"
        "from chard.brokers.redis import RedisBroker\n"
        f"b = RedisBroker(sys.argv[1], {{'lease_timeout': {lease_timeout}}})\n"
        "[d] = b.fetch(['q'], 1, 5)\n"
        "print(d.delivery_count, flush=True)\n"
        "sys.stdin.read()\n"  # hold the lease until killed
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", code, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"1"
        killed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        if child.stdin:
            child.stdin.close()
        if child.stdout:
            child.stdout.close()

    # When a live consumer keeps fetching
    survivor = make_broker(lease_timeout=lease_timeout)
    [delivery] = wait_for(lambda: survivor.fetch(["q"], 1, timeout=0.2), timeout=5)

    # Then the message comes back, counted, soon after the lease ran out
    assert delivery.body == b"work"
    assert delivery.delivery_count == 2
    assert time.monotonic() - killed_at < lease_timeout + 1.0
    delivery.ack()


def test_a_lapsed_lease_an_older_chard_took_goes_back_to_its_queue_counted(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, prefix: bytes
) -> None:
    # Given a lease in the layout chard used before tags carried queue, priority and
    # count (chard.leases, chard.inflight, chard.inflight.meta), lapsed: its worker,
    # of the older version, died before the upgrade
    tag = b"0123abcd.1.2.3.1"
    raw.zadd(prefix + b"chard.leases", {tag: time.time() - 60})
    raw.hset(prefix + b"chard.inflight", tag, b"old work")
    meta = {"q": "q", "p": "6", "n": 2, "c": "0123abcd"}
    raw.hset(prefix + b"chard.inflight.meta", tag, json.dumps(meta))

    # When a consumer of this version heartbeats, then fetches
    broker = make_broker()
    broker.heartbeat()
    [delivery] = broker.fetch(["q"], 1, timeout=1)

    # Then the message is back on its priority list and delivered with its count kept
    assert (delivery.body, delivery.queue, delivery.delivery_count) == (b"old work", "q", 3)
    for key in (b"chard.leases", b"chard.inflight", b"chard.inflight.meta"):
        assert not raw.exists(prefix + key)
    delivery.ack()


def test_a_lease_touches_two_keys_and_its_tag_says_queue_priority_and_count(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, prefix: bytes
) -> None:
    broker = make_broker()
    broker.publish(OutgoingMessage("a|b", b"work", priority=3))
    [delivery] = broker.fetch(["a|b"], 1, timeout=1)
    delivery.reject(requeue=True)  # (returned uncounted: the next delivery is the first again)
    [delivery] = broker.fetch(["a|b"], 1, timeout=1)

    assert delivery.queue == "a|b"
    [tag] = raw.zrange(prefix + b"chard.held.expiry", 0, -1)
    assert tag.decode() == delivery.tag
    assert tag.startswith(broker.consumer_id.encode() + b".")
    assert tag.endswith(b"|31|a|b")
    assert raw.hgetall(prefix + b"chard.held") == {tag: b"work"}
    assert not raw.exists(prefix + b"chard.inflight.meta")
    delivery.ack()
    assert not raw.exists(prefix + b"chard.held", prefix + b"chard.held.expiry")


def test_a_long_held_message_with_heartbeats_is_not_redelivered(
    make_broker: Callable[..., RedisBroker],
) -> None:
    holder = make_broker(lease_timeout=0.6)
    thief = make_broker(lease_timeout=0.6)
    holder.publish(OutgoingMessage("q", b"slow"))
    [held] = holder.fetch(["q"], 1, timeout=1)

    # For five lease periods, the holder heartbeats while another consumer keeps asking;
    # the other consumer's blocking fetches pace the loop.
    until = time.monotonic() + 3.0
    while time.monotonic() < until:
        holder.heartbeat()
        assert thief.fetch(["q"], 1, timeout=0.15) == []

    held.ack()
    assert thief.fetch(["q"], 1, timeout=0) == []
    assert holder.queue_size("q") == 0


def test_an_idle_consumer_sends_few_commands(
    make_broker: Callable[..., RedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Count the commands the consumer's client sends while it blocks on an empty queue.

    Counted client-side: the server's total_commands_processed is shared with whoever
    else uses this Redis. Scripts and BLMOVE both go through ``execute_command``.
    """
    broker = make_broker()
    broker.fetch(["q"], 1, timeout=0)  # warm up: connect and load the script
    sent: list[str] = []
    execute: Callable[..., Any] = broker._client.execute_command

    def counting(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return execute(*args, **options)

    monkeypatch.setattr(broker._client, "execute_command", counting)

    started = time.monotonic()
    fetches = 0
    while time.monotonic() - started < 2.0:
        assert broker.fetch(["q"], 10, timeout=1) == []
        fetches += 1
    elapsed = time.monotonic() - started

    assert fetches <= 3  # each fetch really blocked for its timeout
    assert len(sent) / elapsed <= 3.0, sent
    assert set(sent) <= {"EVALSHA", "BLMOVE"}


def test_a_message_blocked_on_is_not_lost_when_the_consumer_dies_before_leasing(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, prefix: bytes
) -> None:
    # Given a consumer whose blocking wait moved a message into its landing list and
    # which then died (simulated: we move it ourselves after its last fetch)
    dead = make_broker(lease_timeout=0.5)
    assert dead.fetch(["q"], 1, timeout=0) == []
    landing = f"{prefix.decode()}chard.landing.{dead.consumer_id}"
    raw.lpush(prefix + b"q", b"caught")
    raw.lmove(f"{prefix.decode()}q", landing, "RIGHT", "LEFT")

    # When another consumer fetches after the dead one's registration lapsed
    live = make_broker(lease_timeout=0.5)
    [delivery] = wait_for(lambda: live.fetch(["q"], 1, timeout=0.2), timeout=5)

    # Then the message went back to its queue, never having been leased
    assert delivery.body == b"caught"
    assert delivery.delivery_count == 1
    assert raw.exists(landing) == 0


def test_take_over_returns_a_dead_consumers_landing_list_uncounted(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, prefix: bytes
) -> None:
    # Given a dead consumer holding one lease, whose blocking wait had also moved a message
    # into its landing list (simulated: we move it ourselves after its last fetch)
    dead = make_broker()
    dead.publish(OutgoingMessage("q", b"held", priority=9))
    [_] = dead.fetch(["q"], 1, timeout=1)
    landing = f"{prefix.decode()}chard.landing.{dead.consumer_id}"
    raw.lpush(prefix + b"q", b"caught")
    raw.lmove(f"{prefix.decode()}q", landing, "RIGHT", "LEFT")

    # When another consumer takes it over, long before its 10 s registration would lapse
    heir = make_broker()
    [taken] = heir.take_over(dead.consumer_id)

    # Then the landed message is back on its queue, uncounted, and the consumer is forgotten
    assert taken.body == b"held"
    assert raw.lrange(prefix + b"q", 0, -1) == [b"caught"]
    assert raw.exists(landing) == 0
    # Still registered until it lapses, so a wait Redis serves late is recovered then
    assert raw.zscore(prefix + b"chard.consumers", dead.consumer_id) is not None
    [caught] = heir.fetch(["q"], 1, timeout=0)
    assert (caught.body, caught.delivery_count) == (b"caught", 1)

    # And the taken lease kept its priority: a requeue puts it back in kombu's list for 9
    taken.reject(requeue=True)
    assert raw.lrange(prefix + b"q\x06\x169", 0, -1) == [b"held"]
    caught.ack()


def test_scripts_reload_after_the_server_forgets_them(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis
) -> None:
    # Given a broker whose connection dropped and whose script cache is gone (as after a
    # Redis restart; simulated per broker so other users of the server are unaffected)
    broker = make_broker()
    broker.publish(OutgoingMessage("q", b"m"))
    raw.client_kill_filter(_id=str(broker._client.client_id()))
    broker._fetch_script.sha = "0" * 40

    [delivery] = broker.fetch(["q"], 1, timeout=1)

    assert delivery.body == b"m"
    delivery.ack()


def test_an_unreachable_server_names_the_url_and_the_fix() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    broker = RedisBroker(f"redis://:s3cret@127.0.0.1:{port}/9")

    started = time.monotonic()
    with pytest.raises(BrokerConnectionError) as caught:
        broker.publish(OutgoingMessage("q", b"m"))

    message = str(caught.value)
    assert f"redis://:**@127.0.0.1:{port}/9" in message
    assert "s3cret" not in message
    assert "is redis-server running" in message
    assert time.monotonic() - started < 5
    with pytest.raises(BrokerConnectionError):
        broker.fetch(["q"], 1, timeout=0)
    broker.close()


@pytest.mark.parametrize("where", ["a command", "a script"])
def test_a_command_the_server_lacks_names_the_redis_version_chard_needs(
    make_broker: Callable[..., RedisBroker], where: str
) -> None:
    # Given a server without a command chard sends (as Redis < 6.2 lacks BLMOVE, ZMSCORE),
    # called straight or from a script: this server's own error text
    broker = make_broker()

    def call() -> None:
        with broker._errors():
            if where == "a command":
                broker._client.execute_command("BLMOVEX", "a", "b")
            else:
                broker._client.eval("return redis.call('BLMOVEX', 'a', 'b')", 0)

    with pytest.raises(BrokerError) as caught:
        call()

    # Then the error says which Redis chard needs, beside what the server said
    assert "chard needs Redis 6.2 or newer" in str(caught.value)
    assert "failed: unknown" in str(caught.value).lower()  # the server's words, kept


def test_dead_letters_keep_reason_count_and_time(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, prefix: bytes
) -> None:
    broker = make_broker()
    broker.publish(OutgoingMessage("q", b"poison", priority=6))
    [delivery] = broker.fetch(["q"], 1, timeout=1)
    before = time.time()

    delivery.dead_letter("too many deliveries")

    [letter] = broker.dead_letters()
    assert (letter.queue, letter.body, letter.reason, letter.delivery_count) == (
        "q",
        b"poison",
        "too many deliveries",
        1,
    )
    assert abs(letter.failed_at - before) < 5
    assert broker.redrive(letter.id)
    assert raw.lrange(prefix + b"q\x06\x166", 0, -1) == [b"poison"]
    assert broker.dead_letters() == []


@pytest.mark.parametrize(
    ("url", "options", "separate", "client_url", "keyprefix"),
    [
        ("unix:///tmp/r.sock?db=3&global_keyprefix=p", None, False, "unix:///tmp/r.sock?db=3", "p"),
        (
            "rediss://:pw@h:6380/1?ssl_cert_reqs=CERT_NONE",
            {"global_keyprefix": "app:"},
            False,
            "rediss://:pw@h:6380/1?ssl_cert_reqs=none",
            "app:",
        ),
        ("redis://h/0?global_keyprefix=p", None, True, "redis://h/0", "p_"),  # Celery's backend
        ("redis://h/0?global_keyprefix=p-", None, True, "redis://h/0", "p-"),
    ],
)
def test_urls_are_split_into_client_url_and_key_prefix(
    url: str, options: dict[str, str] | None, separate: bool, client_url: str, keyprefix: str
) -> None:
    target = parse_redis_url(url, options, separate_prefix=separate)

    assert (target.client_url, target.keyprefix) == (client_url, keyprefix)
    assert "pw" not in target.redacted


# -- the publishing lane: one connection per thread, fork- and error-safe ------------------


def lane_client_id(broker: RedisBroker) -> int:
    """The server's id of this thread's publishing connection (changes if it reconnects)."""
    return int(broker._lane.execute("CLIENT", "ID"))


def test_delays_from_many_threads_are_each_stored_once_in_each_threads_order(
    url: str, raw: redis.Redis, prefix: bytes
) -> None:
    # Given one app shared by 8 threads, each sending 150 tasks as fast as it can
    app = Celery("lanes", broker=url, set_as_current=False)
    task = app.task(name="lanes.work")(lambda thread, i: None)
    barrier = threading.Barrier(8)
    sent: dict[int, list[str]] = {}

    def send(thread: int) -> None:
        barrier.wait()
        sent[thread] = [task.delay(thread, i).id for i in range(150)]

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    app.close()

    # Then every message is stored exactly once, intact, and each thread's in its order
    bodies = raw.lrange(prefix + b"celery", 0, -1)[::-1]  # LPUSH: the oldest is at the right
    messages = [TaskMessage.from_wire(body, JSON) for body in bodies]
    assert len(messages) == 8 * 150
    assert sorted(m.id for m in messages) == sorted(i for ids in sent.values() for i in ids)
    for n in range(8):
        mine = [m for m in messages if m.args[0] == n]
        assert [m.args[1] for m in mine] == list(range(150))
        assert [m.id for m in mine] == sent[n]


def test_each_thread_publishes_on_a_connection_of_its_own(
    make_broker: Callable[..., RedisBroker],
) -> None:
    broker = make_broker()
    seen: list[int] = []
    other = threading.Thread(
        target=lambda: seen.extend([lane_client_id(broker), lane_client_id(broker)])
    )
    other.start()
    other.join(timeout=10)

    mine = [lane_client_id(broker), lane_client_id(broker)]

    assert mine[0] == mine[1]  # kept, not checked out of a pool anew
    assert seen[0] == seen[1]
    assert mine[0] != seen[0]


def test_a_forked_child_publishes_on_its_own_connection_and_the_parents_survives(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, prefix: bytes
) -> None:
    # Given a broker whose publishing connection is open in the parent
    broker = make_broker()
    broker.publish(OutgoingMessage("q", b"parent-1"))
    before = lane_client_id(broker)

    # When a forked child publishes through the very same broker object and exits
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            broker.publish(OutgoingMessage("q", b"child"))
            code = 0 if lane_client_id(broker) != before else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    # Then the child used a connection of its own, and the parent's is still the same one
    assert os.waitstatus_to_exitcode(status) == 0
    broker.publish(OutgoingMessage("q", b"parent-2"))
    assert lane_client_id(broker) == before
    assert raw.lrange(prefix + b"q", 0, -1) == [b"parent-2", b"child", b"parent-1"]


def test_a_publishing_connection_killed_by_the_server_is_reopened(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, prefix: bytes
) -> None:
    broker = make_broker()
    broker.publish(OutgoingMessage("q", b"1"))
    first = lane_client_id(broker)

    raw.client_kill_filter(_id=str(first))
    broker.publish(OutgoingMessage("q", b"2"))

    assert raw.lrange(prefix + b"q", 0, -1) == [b"2", b"1"]
    assert lane_client_id(broker) != first


def test_a_reply_abandoned_after_a_timeout_is_never_read_as_a_later_ones(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, prefix: bytes
) -> None:
    # Given a lane whose reads time out after 50 ms
    broker = make_broker()
    broker._client.connection_pool.connection_kwargs["socket_timeout"] = 0.05

    # When a command's reply comes only after the timeout (every retry times out too)
    with pytest.raises(redis.TimeoutError):
        broker._lane.execute("BLPOP", prefix + b"empty", "0.2")

    # Then the next commands read their own replies, not the late one
    assert broker._lane.execute("PING") == b"PONG"
    broker.publish(OutgoingMessage("q", b"after"))
    assert raw.lrange(prefix + b"q", 0, -1) == [b"after"]


def test_close_closes_every_threads_publishing_connection(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis
) -> None:
    broker = make_broker()
    ids = [lane_client_id(broker)]
    other = threading.Thread(target=lambda: ids.append(lane_client_id(broker)))
    other.start()
    other.join(timeout=10)

    broker.close()

    assert not {int(c["id"]) for c in raw.client_list()} & set(ids)


def test_a_last_argument_command_runs_what_the_lane_would_run_whole() -> None:
    from chard._redis.lane import Lane, LastArgumentCommand

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    key = f"test-lane-{os.getpid()}-{time.monotonic_ns()}"
    lane = Lane(client)
    try:
        # Given an LPUSH packed once but for its last argument
        push = LastArgumentCommand(lane, "LPUSH", key)

        # When it runs with bodies of several sizes, Then each reply is the list's length
        replies = [push(body) for body in (b"", b"one", b"\r\n$3\r\n", b"x" * 9000)]
        assert replies == [1, 2, 3, 4]
        assert client.lrange(key, 0, -1) == [b"x" * 9000, b"\r\n$3\r\n", b"one", b""]
    finally:
        client.delete(key)
        lane.close()
        client.close()
