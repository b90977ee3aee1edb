"""One pub/sub connection per process that hears every result a client waits for.

The Redis result backend stores a meta with ``SET`` and ``PUBLISH``\\es the same value
on the key's name. A waiter that read a task's key and found no result subscribes to
its channel (:meth:`Listener.watch`), and from then on takes the result from the
message itself instead of reading the key again. Nothing is subscribed when a task is
sent (Celery's ``on_task_call`` subscribes there): most results are read once stored,
and a ``delay()`` then costs its one broker command.

The waiter's rule that makes this exact: *confirm, then read, then wait*. A waiter
first waits for Redis to confirm each subscription (:meth:`Listener.confirm`), then
reads the keys it has no ready value for, and from then on every store is reported
by :meth:`Listener.wait`. A store that happened before the subscription took effect
is found by the read; one after it arrives as a message.

Threads share the connection. Writes happen under the lock; one thread at a time
reads the socket (outside the lock) and files each message for everyone, waking the
others. A lost connection is never papered over: it bumps the *generation*, and a
waiter that confirmed under an older one gets ``redis.ConnectionError`` and starts
again (re-subscribe, confirm, re-read), because messages published while the
connection was down are gone. After a ``fork()`` the child starts afresh.

Subscriptions are counted: :meth:`watch` adds one watcher per channel and
:meth:`release` (safe to call from a finalizer) drops it. A channel nobody watches is
unsubscribed with the next command written (or once 100 have piled up), and the
values heard on it are forgotten, so memory is bounded by what callers still hold.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from chard._redis.lane import pack

#: Unsubscribe at the latest once this many channels are no longer watched.
UNSUBSCRIBE_BATCH = 100


@dataclass
class Cursor:
    """Where one waiter is: the generation it confirmed under and the last value it saw."""

    generation: int
    seq: int = 0


class Listener:
    """The process's result subscriptions; thread-safe, fork-safe (see the module docstring)."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._cond = threading.Condition(threading.Lock())
        self._pid = os.getpid()
        self._conn: Any = None  # redis-py leaves its Connection methods unannotated
        self._generation = 0
        self._seq = 0
        #: channel -> how many watchers it has (absent: none).
        self._counts: dict[bytes, int] = {}
        #: Channels whose last command on this connection was SUBSCRIBE.
        self._subscribed: set[bytes] = set()
        #: channel -> replies (subscribe/unsubscribe) still to come on this connection.
        self._unanswered: dict[bytes, int] = {}
        #: channel -> (seq, value) of the last message, oldest first (watched channels only).
        self._values: dict[bytes, tuple[int, bytes]] = {}
        self._to_subscribe: list[bytes] = []
        self._to_unsubscribe: set[bytes] = set()
        #: Releases from finalizers that found the lock taken, applied by the next caller.
        self._released: collections.deque[bytes] = collections.deque()
        self._is_reading = False

    # -- watching ---------------------------------------------------------------
    def watch(self, channels: Iterable[bytes]) -> None:
        """Count one more watcher of each channel and send ``SUBSCRIBE`` for new ones.

        Does not wait for Redis: the replies are read by whoever reads next.

        Raises:
            redis.ConnectionError: the server cannot be reached (the state is reset).
        """
        with self._cond:
            self._check_fork()
            for channel in channels:
                count = self._counts.get(channel, 0)
                self._counts[channel] = count + 1
                if count == 0:
                    self._to_unsubscribe.discard(channel)
                    if channel not in self._subscribed:
                        self._to_subscribe.append(channel)
            self._apply_releases()
            if self._to_subscribe:
                self._write()  # the replies are read by confirm(), which follows

    def release(self, channels: Iterable[bytes]) -> None:
        """Drop one watcher of each channel; never blocks, never raises (finalizer-safe)."""
        self._released.extend(channels)
        if self._cond.acquire(blocking=False):
            try:
                self._apply_releases()
            except (redis.ConnectionError, redis.TimeoutError):
                pass  # the state was reset; the next waiter reconnects
            finally:
                self._cond.release()

    # -- waiting ----------------------------------------------------------------
    def confirm(self, channels: Iterable[bytes], deadline: float) -> Cursor:
        """Wait until Redis confirmed every channel's subscription; return a fresh cursor.

        The channels must be watched. Values already heard on them are reported by the
        first :meth:`wait` (the cursor starts before them).

        Raises:
            redis.ConnectionError: lost before every subscription was confirmed.
            redis.TimeoutError: not confirmed by ``deadline``.
        """
        with self._cond:
            self._check_fork()
            self._apply_releases()
            if self._conn is None:
                self._connect()
            self._write()
            cursor = Cursor(self._generation)
            # Replies come in the order of the commands: tick the channels off from the
            # front, so a large group costs one look per channel, not one per message.
            missing = collections.deque(c for c in channels if not self._is_confirmed(c))
            while True:
                self._check_generation(cursor)
                while missing and self._is_confirmed(missing[0]):
                    missing.popleft()
                if not missing:
                    return cursor
                if missing[0] not in self._counts:
                    raise ValueError(f"channel {missing[0]!r} is not watched; watch() it first")
                if not self._read_or_wait(deadline):
                    raise redis.TimeoutError("Redis did not confirm the subscriptions in time")

    def wait(self, cursor: Cursor, timeout: float) -> list[tuple[bytes, bytes]]:
        """Return the values heard since ``cursor`` (oldest first), waiting up to ``timeout``.

        An empty list means the time ran out. Values of every watched channel are
        returned, not only the caller's: filter them.

        Raises:
            redis.ConnectionError: the connection was lost since ``cursor`` was confirmed.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._check_generation(cursor)
                if self._seq > cursor.seq:
                    fresh = []
                    for channel, (seq, value) in reversed(self._values.items()):
                        if seq <= cursor.seq:
                            break
                        fresh.append((channel, value))
                    cursor.seq = self._seq
                    if fresh:
                        return fresh[::-1]
                if not self._read_or_wait(deadline):
                    return []

    # -- internals (call with the lock held) ------------------------------------
    def _read_or_wait(self, deadline: float) -> bool:
        """Read one message (or wait for the thread that reads); False once ``deadline`` passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if self._is_reading:
            self._cond.wait(remaining)
            return True
        conn, generation = self._conn, self._generation
        self._is_reading = True
        self._cond.release()
        messages = []
        try:
            if conn.can_read(timeout=remaining):
                messages.append(conn.read_response(disconnect_on_error=False, push_request=True))
                while conn.can_read(timeout=0):  # the rest of what has arrived
                    messages.append(
                        conn.read_response(disconnect_on_error=False, push_request=True)
                    )
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._cond.acquire()
            self._is_reading = False
            if generation == self._generation:
                self._reset()
            self._cond.notify_all()
            if isinstance(exc, redis.RedisError):
                raise
            raise redis.ConnectionError(f"pub/sub connection failed: {exc}") from exc
        except BaseException:
            self._cond.acquire()
            self._is_reading = False
            self._reset()  # a read cut short leaves half a reply on the socket
            self._cond.notify_all()
            raise
        self._cond.acquire()
        self._is_reading = False
        if generation == self._generation:
            for message in messages:
                self._file(message)
        self._cond.notify_all()
        return True

    def _drain(self) -> None:
        """File what has already arrived, without blocking (unless another thread reads)."""
        conn = self._conn
        if self._is_reading or conn is None:
            return
        try:
            while conn.can_read(timeout=0):
                self._file(conn.read_response(disconnect_on_error=False, push_request=True))
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._reset()
            raise

    def _file(self, message: Any) -> None:
        kind, channel = message[0], message[1]
        if kind == b"message":
            if channel in self._counts:
                self._seq += 1
                self._values.pop(channel, None)  # re-insert: the dict stays oldest first
                self._values[channel] = (self._seq, message[2])
        elif kind in (b"subscribe", b"unsubscribe"):
            left = self._unanswered.get(channel, 0) - 1
            if left > 0:
                self._unanswered[channel] = left
            else:
                self._unanswered.pop(channel, None)

    def _apply_releases(self) -> None:
        released = self._released
        while released:
            channel = released.popleft()
            count = self._counts.get(channel, 0) - 1
            if count > 0:
                self._counts[channel] = count
                continue
            if count == 0:  # below zero: a watch from before a fork or reset; ignore
                del self._counts[channel]
                self._values.pop(channel, None)
                if channel in self._subscribed:
                    self._to_unsubscribe.add(channel)
        if len(self._to_unsubscribe) >= UNSUBSCRIBE_BATCH:
            self._write()

    def _is_confirmed(self, channel: bytes) -> bool:
        return channel in self._subscribed and channel not in self._unanswered

    def _write(self) -> None:
        """Send pending SUBSCRIBEs, with the UNSUBSCRIBEs piled up so far (alone past a batch)."""
        subscribe = [
            c for c in self._to_subscribe if c in self._counts and c not in self._subscribed
        ]
        self._to_subscribe.clear()
        if not subscribe and len(self._to_unsubscribe) < UNSUBSCRIBE_BATCH:
            return
        if self._conn is None:
            if subscribe:
                self._connect()  # subscribes every watched channel
            return
        unsubscribe = [
            c for c in self._to_unsubscribe if c not in self._counts and c in self._subscribed
        ]
        self._to_unsubscribe.clear()
        packed: list[bytes] = []
        if unsubscribe:
            command = ("UNSUBSCRIBE", *unsubscribe)
            packed += pack(command) or self._conn.pack_command(*command)
            self._subscribed.difference_update(unsubscribe)
        if subscribe:
            command = ("SUBSCRIBE", *subscribe)
            packed += pack(command) or self._conn.pack_command(*command)
            self._subscribed.update(subscribe)
        if not packed:
            return
        for channel in (*unsubscribe, *subscribe):
            self._unanswered[channel] = self._unanswered.get(channel, 0) + 1
        try:
            self._conn.send_packed_command([b"".join(packed)], check_health=False)
        except (redis.ConnectionError, redis.TimeoutError):
            self._reset()
            raise

    def _connect(self) -> None:
        # RESP2: subscription replies and messages come as plain replies (RESP3 pushes
        # go through redis-py's push handler, which formats each one for a debug log).
        kwargs = {**self._pool.connection_kwargs, "protocol": 2}
        conn = self._pool.connection_class(**kwargs)
        try:
            conn.connect()
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            raise
        self._conn = conn
        self._to_subscribe = list(self._counts)
        self._to_unsubscribe.clear()
        self._write()

    def _reset(self) -> None:
        """Drop the connection: its subscriptions and unread messages are gone."""
        if self._conn is not None:
            self._conn.disconnect()
        self._conn = None
        self._generation += 1
        self._subscribed.clear()
        self._unanswered.clear()
        self._values.clear()
        self._to_subscribe.clear()
        self._to_unsubscribe.clear()
        self._cond.notify_all()

    def _check_generation(self, cursor: Cursor) -> None:
        if cursor.generation != self._generation:
            raise redis.ConnectionError("the result backend's pub/sub connection was lost")

    def _check_fork(self) -> None:
        if self._pid == os.getpid():
            return
        # The parent's socket and watchers are not ours: forget them (closing our copy
        # of the socket does not disturb the parent's connection).
        self._pid = os.getpid()
        self._counts.clear()
        self._released.clear()
        self._is_reading = False
        self._reset()

    def close(self) -> None:
        """Close the connection; waiters get ``redis.ConnectionError``."""
        with self._cond:
            self._reset()
