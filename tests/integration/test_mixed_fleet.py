"""A mixed fleet: real Celery 5 workers and clients beside chard's on one Redis.

Each test has its own key prefix (kombu's and Celery's backend's ``global_keyprefix``,
chard's ``?global_keyprefix=``), so both sides share queues and result keys with each
other and with nothing else. Workers are real processes: ``chard -A mixedfleet.chardside
worker`` and ``python -m celery -A mixedfleet.celeryside worker -P solo``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import chard
from tests.helpers import RUN_ID, redis_url, wait_for
from tests.integration.workers import WorkerFactory, WorkerProcess, child_pythonpath

celery = pytest.importorskip("celery", reason="the mixed-fleet tests need Celery (dev extra)")

from mixedfleet import bodies, celeryside, chardside  # noqa: E402  (after the skip)

pytestmark = [
    pytest.mark.slow,
    # Celery's client (kombu's producer pool, its result consumer) leaves some Redis
    # sockets to the garbage collector even after app.close(); chard's own connections
    # are checked for leaks by its own suites.
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
    ),
]

#: The repository root, on the workers' path: the test apps import ``tests.helpers``.
ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class Fleet:
    """One test's prefix, a client of each kind, and a way to start workers of each kind."""

    prefix: str
    chard: Any  # chard.Celery
    celery: Any  # celery.Celery
    workers: WorkerFactory
    compat: bool

    def env(self, side: str) -> dict[str, str]:
        return {
            "MIXED_PREFIX": self.prefix,
            "MIXED_COMPAT": "1" if self.compat else "0",
            "MIXED_SIDE": side,
            "PYTHONPATH": ROOT,
        }

    def chard_worker(
        self, *args: str, env: dict[str, str] | None = None, pool: str = "solo"
    ) -> WorkerProcess:
        return self.workers.start(
            "-P",
            pool,
            *args,
            app="mixedfleet.chardside",
            extra_env={**self.env("chard"), **(env or {})},
        )

    def celery_worker(self, *args: str, pool: str = "solo") -> WorkerProcess:
        """Start ``celery worker -c 1`` and wait for its "ready." line."""
        tmp = self.workers.tmp_path
        log = tmp / f"celery-{len(self.workers.started)}.log"
        argv = [
            sys.executable, "-m", "celery", "-A", "mixedfleet.celeryside", "worker",
            "-P", pool, "-c", "1", "-l", "INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-n", f"celery-{uuid.uuid4().hex[:6]}@%h", *args,
        ]  # fmt: skip
        env = {**os.environ, **self.env("celery")}
        env["PYTHONPATH"] = child_pythonpath(ROOT)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        worker = WorkerProcess(proc, log, argv)
        self.workers.started.append(worker)
        worker.wait_for_log("ready.", timeout=30)
        return worker


def _fleet(tmp_path: Path, compat: bool) -> Iterator[Fleet]:
    prefix = f"chardtest-{RUN_ID}-mixed-{uuid.uuid4().hex[:6]}"
    redis_url(prefix)  # skips (or fails under CI) without Redis
    factory = WorkerFactory(tmp_path, {})
    fleet = Fleet(prefix, chardside.build(prefix, compat), celeryside.build(prefix), factory,
                  compat)  # fmt: skip
    yield fleet
    factory.cleanup()
    fleet.chard.close()
    _close_celery(fleet.celery)


def _close_celery(app: Any) -> None:
    """Close what Celery's client opened: its result listener's and backend's sockets too
    (``app.close()`` leaves them to the garbage collector, a ResourceWarning here)."""
    backend = app.backend
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None and getattr(consumer, "_pubsub", None) is not None:
        consumer.stop()
    backend.client.connection_pool.disconnect()
    app.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A mixed fleet with chard's default settings."""
    yield from _fleet(tmp_path, compat=False)


@pytest.fixture
def compat_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A mixed fleet whose chard side sets ``chard_celery_compat = True``."""
    yield from _fleet(tmp_path, compat=True)


def test_celery_client_to_chard_worker_basics(fleet: Fleet) -> None:
    fleet.chard_worker()
    celery = fleet.celery
    add = celery.tasks["mixed.add"]
    assert add.delay(2, 3).get(timeout=15) == 5
    assert celery.send_task("mixed.add", (4, 4)).get(timeout=15) == 8
    assert add.apply_async((1, 1), priority=9).get(timeout=15) == 2
    # the result is Celery's meta: chard's AsyncResult reads it too
    result = add.delay(5, 5)
    assert result.get(timeout=15) == 10
    assert fleet.chard.AsyncResult(result.id).get(timeout=5) == 10


def test_chard_client_to_celery_worker_basics(fleet: Fleet) -> None:
    fleet.celery_worker()
    chard = fleet.chard
    add = chard.tasks["mixed.add"]
    assert add.delay(2, 3).get(timeout=15) == 5
    assert chard.send_task("mixed.add", (4, 4)).get(timeout=15) == 8
    assert add.apply_async((1, 1), priority=9).get(timeout=15) == 2
    result = add.delay(5, 5)
    assert result.get(timeout=15) == 10
    assert fleet.celery.AsyncResult(result.id).get(timeout=5) == 10


# -- both directions ------------------------------------------------------------
#: "client->worker": which side sends, which side runs.
DIRECTIONS = ["celery->chard", "chard->celery"]


@dataclass
class Side:
    """The sending side's app and canvas classes, and the other side's app."""

    app: Any
    other: Any
    chain: Any
    group: Any
    chord: Any
    worker: WorkerProcess

    def task(self, name: str) -> Any:
        return self.app.tasks[f"mixed.{name}"]


def start(fleet: Fleet, direction: str, *worker_args: str) -> Side:
    """Start the worker side of ``direction``; return the client side."""
    client, _ = direction.split("->")
    if client == "celery":
        worker = fleet.chard_worker(*worker_args)
        return Side(fleet.celery, fleet.chard, celery.chain, celery.group, celery.chord, worker)
    worker = fleet.celery_worker(*worker_args)
    return Side(fleet.chard, fleet.celery, chard.chain, chard.group, chard.chord, worker)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_errors_are_reraised_with_their_type_by_either_side(fleet: Fleet, direction: str) -> None:
    side = start(fleet, direction)
    result = side.task("boom").delay("no luck")
    with pytest.raises(bodies.MixedError, match="no luck"):
        result.get(timeout=15)
    with pytest.raises(bodies.MixedError, match="no luck"):
        side.other.AsyncResult(result.id).get(timeout=5)
    with pytest.raises(ValueError, match="bad"):
        side.task("bad_value").delay("bad").get(timeout=15)
    assert side.other.AsyncResult(result.id).state == "FAILURE"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_queue_priority_and_expires(fleet: Fleet, direction: str) -> None:
    side = start(fleet, direction, "-Q", "celery,mixed_other")
    assert side.task("add").apply_async((1, 2), queue="mixed_other").get(timeout=15) == 3
    seen = side.task("whoami").apply_async(priority=6).get(timeout=15)
    assert seen["side"] == direction.split("->")[1]
    expired = side.task("add").apply_async((1, 1), expires=datetime.now(UTC) - timedelta(1))
    wait_for(lambda: side.other.AsyncResult(expired.id).state == "REVOKED", timeout=15)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_countdown_and_eta_run_when_due(compat_fleet: Fleet, direction: str) -> None:
    side = start(compat_fleet, direction)
    whoami = side.task("whoami")
    sent = time.time()
    by_countdown = whoami.apply_async(countdown=2)
    by_eta = whoami.apply_async(eta=datetime.now(UTC) + timedelta(seconds=2))
    for result in (by_countdown, by_eta):
        seen = result.get(timeout=20)
        assert seen["side"] == direction.split("->")[1]
        assert seen["eta"] is not None
    # Not before it was due: the worker's stored date_done is past the ETA.
    done = side.other.AsyncResult(by_eta.id).date_done
    assert done is not None
    assert done.timestamp() >= sent + 1.9


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_retries_with_countdown(compat_fleet: Fleet, direction: str) -> None:
    side = start(compat_fleet, direction)
    result = side.task("flaky").delay(2)
    assert result.get(timeout=30) == 2
    assert side.other.AsyncResult(result.id).get(timeout=5) == 2


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_link_and_link_error(fleet: Fleet, direction: str) -> None:
    side = start(fleet, direction)
    callback = side.task("add").s(10)
    callback_id = callback.freeze().id
    assert side.task("add").apply_async((1, 1), link=callback).get(timeout=15) == 2
    assert side.app.AsyncResult(callback_id).get(timeout=15) == 12
    errback = side.task("on_error").s()
    errback_id = errback.freeze().id
    failed = side.task("boom").apply_async(("x",), link_error=errback)
    assert side.app.AsyncResult(errback_id).get(timeout=15) == f"errback:{failed.id}"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_chains_and_groups(fleet: Fleet, direction: str) -> None:
    side = start(fleet, direction)
    add = side.task("add")
    assert side.chain(add.s(1, 1), add.s(2), add.s(3))().get(timeout=20) == 7
    assert side.group(add.s(i, i) for i in range(5))().get(timeout=20) == [0, 2, 4, 6, 8]


def _fleet_for(direction: str, fleet: Fleet, compat_fleet: Fleet) -> Fleet:
    """A Celery client needs nothing of chard's workers; a chard client needs the setting."""
    return fleet if direction.startswith("celery") else compat_fleet


@pytest.fixture
def any_fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    """For a direction: chard's defaults if Celery sends, ``chard_celery_compat`` if chard does."""
    direction = request.node.callspec.params["direction"]
    yield from _fleet(tmp_path, compat=direction.startswith("chard"))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_chords(any_fleet: Fleet, direction: str) -> None:
    side = start(any_fleet, direction)
    add, tsum = side.task("add"), side.task("tsum")
    result = side.chord(add.s(i, i) for i in range(4))(tsum.s())
    assert result.get(timeout=20) == 12
    assert side.other.AsyncResult(result.id).get(timeout=5) == 12
    # nested: a group and a chain in the header, a chord as a chain's next step (sent by
    # the other side's worker, from the chain the client sent)
    header = [side.group(add.s(1, 1), add.s(2, 2)), side.chain(add.s(1, 1), add.s(1))]
    assert side.chord(header, tsum.s())().get(timeout=20) == 9
    then_chord = side.chain(add.s(1, 1), side.chord([add.s(i) for i in range(3)], tsum.s()))
    assert then_chord().get(timeout=20) == 9


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_failed_chord_member_fails_the_body(any_fleet: Fleet, direction: str) -> None:
    side = start(any_fleet, direction)
    add, boom, tsum = side.task("add"), side.task("boom"), side.task("tsum")
    result = side.chord([add.s(1, 1), boom.s("member failed"), add.s(2, 2)])(tsum.s())
    with pytest.raises(Exception, match="member failed"):
        result.get(timeout=20)
    # Celery's get() raises as soon as a parent (the header) failed: wait for the body.
    wait_for(lambda: side.other.AsyncResult(result.id).state == "FAILURE", timeout=20)
    with pytest.raises(Exception, match="member failed"):
        side.other.AsyncResult(result.id).get(timeout=5)


def test_chords_joined_by_both_kinds_of_worker(compat_fleet: Fleet) -> None:
    """Half the header runs on a chard worker, half on a Celery one; the body sees both
    (both with their prefork pools)."""
    compat_fleet.chard_worker("-Q", "on_chard", "-c", "2", pool="prefork")
    compat_fleet.celery_worker("-Q", "on_celery", pool="prefork")
    for app, chord in ((compat_fleet.chard, chard.chord), (compat_fleet.celery, celery.chord)):
        whoami, sides = app.tasks["mixed.whoami"], app.tasks["mixed.sides"]
        header = [whoami.si().set(queue=f"on_{side}") for side in ("chard", "celery") * 5]
        for queue in ("on_chard", "on_celery"):  # the body runs on either kind of worker
            result = chord(header)(sides.s().set(queue=queue))
            assert result.get(timeout=30) == ["celery", "chard"]


def test_a_chard_worker_holds_celerys_early_eta_messages_in_the_broker(fleet: Fleet) -> None:
    """A Celery countdown reaches the ready queue at once; chard moves it to its delayed
    set (held by Redis, not in the worker's memory), and runs it when due."""
    fleet.chard_worker()
    result = fleet.celery.tasks["mixed.add"].apply_async((20, 22), countdown=6)
    held = wait_for(lambda: fleet.chard.broker.delayed(["celery"]), timeout=10)
    assert [m.queue for m in held] == ["celery"]
    assert result.get(timeout=20) == 42
    assert fleet.chard.broker.delayed(["celery"]) == []


def test_without_the_setting_chards_countdowns_wait_in_chards_delayed_set(fleet: Fleet) -> None:
    """Why ``chard_celery_compat`` exists: by default chard's broker holds a countdown
    message itself, where a Celery worker never looks."""
    fleet.celery_worker()
    result = fleet.chard.tasks["mixed.add"].apply_async((1, 1), countdown=0.5)
    assert [m.queue for m in fleet.chard.broker.delayed(["celery"])] == ["celery"]
    # Due later than chard's, and run by the Celery worker: by then chard's was due too.
    later = fleet.celery.tasks["mixed.add"].apply_async((2, 2), countdown=1.5)
    assert later.get(timeout=15) == 4
    assert result.state == "PENDING"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_revoke_reaches_the_other_kind_of_worker(compat_fleet: Fleet, direction: str) -> None:
    """``app.control.revoke(id)`` from either client: the other side's worker discards the
    task when its countdown is due (Celery's pidbox cast; chard's durable revoke log)."""
    side = start(compat_fleet, direction)
    add = side.task("add")
    # due in 5 s: the revocation has that long to cross (well under a second unloaded)
    doomed = add.apply_async((1, 1), countdown=5)
    spared = add.apply_async((2, 2), countdown=5)
    side.app.control.revoke(doomed.id)
    assert spared.get(timeout=20) == 4
    wait_for(lambda: side.other.AsyncResult(doomed.id).state == "REVOKED", timeout=20)


def test_a_dead_celery_workers_unacked_messages_are_restored_by_chard(compat_fleet: Fleet) -> None:
    """A Celery worker killed while holding a countdown task (in kombu's ``unacked``): a
    chard node restores it after the visibility timeout, and runs it when due."""
    import redis

    celery_worker = compat_fleet.celery_worker()
    result = compat_fleet.celery.tasks["mixed.add"].apply_async((3, 4), countdown=3)
    client = redis.Redis.from_url(bodies.REDIS_BASE)
    unacked = f"{compat_fleet.prefix}unacked"
    try:
        wait_for(lambda: client.hlen(unacked) == 1, timeout=15)
        celery_worker.kill_group()
        compat_fleet.chard_worker(env={"MIXED_VISIBILITY": "1"})
        assert result.get(timeout=30) == 7
        assert client.hlen(unacked) == 0
        assert client.zcard(f"{compat_fleet.prefix}unacked_index") == 0
    finally:
        client.close()


def test_one_ping_reaches_both_kinds_of_worker(compat_fleet: Fleet) -> None:
    """Celery's remote control on Redis (kombu's pub/sub ``celery.pidbox``, replies pushed
    to the client's list through kombu's binding table): each client's ping and inspect
    get one reply from each kind of worker."""
    compat_fleet.chard_worker("-n", f"chard-{RUN_ID}@%h")
    celery_worker = compat_fleet.celery_worker()
    celery_node = celery_worker.args[celery_worker.args.index("-n") + 1].replace("%h", _host())
    chard_node = f"chard-{RUN_ID}@{_host()}"
    for app in compat_fleet.chard, compat_fleet.celery:
        replies = app.control.ping(timeout=2)
        assert sorted(node for reply in replies for node in reply) == sorted(
            [chard_node, celery_node]
        )
        assert all(reply == {"ok": "pong"} for item in replies for reply in item.values())
    stats = compat_fleet.celery.control.inspect(destination=[chard_node], timeout=2).stats()
    assert stats[chard_node]["pool"]["implementation"] == "solo"
    registered = compat_fleet.chard.control.inspect(destination=[celery_node]).registered()
    assert "mixed.add" in registered[celery_node]


def _host() -> str:
    import socket

    return socket.gethostname()
