"""A lean command path to Redis: one connection per thread, no pool checkout per command.

redis-py's ``Redis.execute_command`` checks a connection out of its pool for every
command (a lock, a fork check, a ``poll()`` for stray data, metrics) and returns it
afterwards: about half of a client's CPU time for a one-command ``delay()``. A
:class:`Lane` keeps one connection per thread instead and sends pre-packed commands
on it, with the client's own retry policy.

Why it stays correct:

* **Threads.** A thread only ever touches its own connection, so nothing is shared
  and nothing is locked.
* **Fork.** A connection remembers the process that opened it; a child that inherits
  the lane opens its own (redis-py does not shut a socket down from another process,
  so closing the parent's copy leaves the parent's connection intact).
* **Finished threads.** A connection is closed explicitly, never left to the garbage
  collector: redis-py's connections sit in reference cycles, so a dropped one waits for
  a gc pass that may finalize its socket first (an "unclosed socket" ResourceWarning,
  and a socket held open until then). A small token in the thread's local storage
  closes its connection when the thread (or, under gevent, the greenlet) ends.
* **No stray replies.** redis-py drops the connection on any error or interrupt
  while sending or reading, so the next command never reads an earlier reply; that
  is what the pool's per-checkout ``poll()`` guards against, and it is not needed here.
* **Lost connection.** A ``ConnectionError``/``TimeoutError`` drops the connection and
  retries per the client's ``Retry`` (a command sent again after a lost reply may run
  twice, as with redis-py's own retries); the last error is raised to the caller.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.commands.core import Script
from redis.connection import AbstractConnection

from chard._utils.perprocess import current_pid

_c_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # hiredis >= 2.1 packs a command in C (the redis extra asks for hiredis >= 2.0)
    from hiredis import pack_command as _c_pack
except ImportError:  # pragma: no cover - an older or missing hiredis: pack in Python
    _c_pack = None


class Lane:
    """Run commands on this thread's own connection to the server of ``client``.

    Thread-safe and fork-safe (see the module docstring). Only plain request/reply
    commands belong here: no pub/sub, no blocking commands, no MULTI.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._local = threading.local()
        # Reentrant: a thread's finalizer may run wherever that thread's storage is freed.
        self._lock = threading.RLock()
        #: Every connection whose thread is still there (closed and dropped when it ends).
        self._opened: set[AbstractConnection] = set()

    def connection(self) -> AbstractConnection:
        """Return this thread's connection in this process, creating it on first use."""
        local = self._local
        conn: AbstractConnection | None = getattr(local, "conn", None)
        if conn is not None and local.pid == current_pid():
            return conn
        pool = self._pool
        conn = pool.connection_class(**pool.connection_kwargs)
        with self._lock:
            self._opened.add(conn)
        owner = _Owner()
        weakref.finalize(owner, _close_finished, conn, self._opened, self._lock)
        # Replacing a forked parent's owner here closes our copy of its connection.
        local.conn, local.pid, local.owner = conn, current_pid(), owner
        return conn

    def execute(self, *args: Any) -> Any:
        """Send one command and return its reply (redis-py's raw reply, not post-processed).

        Raises:
            redis.ConnectionError, redis.TimeoutError: still failing after the retries.
            redis.ResponseError: the server refused the command.
        """
        packed = pack(args)
        if packed is None:
            conn: Any = self.connection()  # Any: redis-py leaves pack_command unannotated
            packed = conn.pack_command(*args)
        return self.execute_packed(packed)

    def execute_packed(self, packed: list[bytes]) -> Any:
        """Send one command packed in Redis's protocol (:func:`pack`); return its reply.

        Raises:
            redis.ConnectionError, redis.TimeoutError: still failing after the retries.
            redis.ResponseError: the server refused the command.
        """
        # Any: redis-py leaves these Connection methods unannotated.
        conn: Any = self.connection()
        # The first try outside redis-py's Retry: no closure and no extra frames on a
        # delay()'s one command. A lost connection then takes the Retry's path as before.
        try:
            conn.send_packed_command(packed, check_health=False)
            return conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()

        def run() -> Any:
            conn.send_packed_command(packed, check_health=False)
            return conn.read_response()

        return conn.retry.call_with_retry(run, lambda _error: conn.disconnect())

    def execute_many(self, *commands: Sequence[Any]) -> list[Any]:
        """Send several commands in one round trip (a pipeline, not a transaction).

        Every reply is read before an error reply is raised, so the connection stays in step.

        Raises:
            redis.ConnectionError, redis.TimeoutError: still failing after the retries (the
                whole batch is sent again on a retry: each command must be safe to repeat).
            redis.ResponseError: the first command the server refused.
        """
        conn: Any = self.connection()
        parts = [pack(command) for command in commands]
        if all(parts):  # one buffer, one send, as redis-py's packer joins them
            packed = [b"".join(part[0] for part in parts if part)]
        else:
            packed = conn.pack_commands(commands)

        def run() -> list[Any]:
            conn.send_packed_command(packed, check_health=False)
            replies = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as error:
                    replies.append(error)
            for reply in replies:
                if isinstance(reply, redis.ResponseError):
                    raise reply
            return replies

        replies: list[Any] = conn.retry.call_with_retry(run, lambda _error: conn.disconnect())
        return replies

    def run_script(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a registered ``script`` by its digest, loading it first if Redis lost it.

        A restarted Redis has forgotten its scripts: ``NOSCRIPT`` loads it and runs it
        once more (the failed call did nothing).
        """
        try:
            return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            sha = self.execute("SCRIPT", "LOAD", script.script)
            script.sha = sha.decode() if isinstance(sha, bytes) else sha  # as redis-py does
            return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    def close(self) -> None:
        """Close every thread's connection (each reconnects if it is used again)."""
        with self._lock:
            opened = list(self._opened)
        for conn in opened:
            conn.disconnect()  # type: ignore[no-untyped-call]  # unannotated upstream


class LastArgumentCommand:
    """A command run on a lane, packed once but for its last argument, which each call brings.

    A task's plain sends push to one list: ``LastArgumentCommand(lane, "LPUSH", key)(body)``
    runs ``lane.execute("LPUSH", key, body)`` (the same bytes, the same retries) with only
    the body packed per send.
    """

    __slots__ = ("_head", "_lane")

    def __init__(self, lane: Lane, *head: str | bytes) -> None:
        packed = pack((*head, b""))
        if packed is None:
            raise TypeError(f"cannot pack command {head!r}; its parts must be str or bytes")
        self._lane = lane
        # The empty last argument's "$0\r\n\r\n" off; the count already includes it.
        self._head = packed[0][: -len(b"$0\r\n\r\n")]

    def __call__(self, last: bytes) -> Any:
        """Run the command with ``last`` as its last argument; return the reply (as ``execute``)."""
        return self._lane.execute_packed([b"%b$%d\r\n%b\r\n" % (self._head, len(last), last)])


class _Owner:
    """Kept in one thread's local storage only: it goes when the thread ends."""

    __slots__ = ("__weakref__",)


def _close_finished(
    conn: AbstractConnection, opened: set[AbstractConnection], lock: threading.RLock
) -> None:
    """Close the connection of a thread that ended (only our copy, after a fork)."""
    with lock:
        opened.discard(conn)
    conn.disconnect()  # type: ignore[no-untyped-call]  # unannotated upstream


def pack(args: Sequence[Any]) -> list[bytes] | None:
    """The command in Redis's protocol when every part is ``str``/``bytes``/``int``/``float``.

    What redis-py's packer writes for such a command (a ``str`` as UTF-8, its default
    encoding; a number as its ``repr``), without its per-argument checks: a ``delay()``
    sends one command, a waiter one ``SUBSCRIBE`` of many channels, a worker's fetch a
    script call with a dozen or more arguments. None for anything else (its packer then
    decides, or refuses). hiredis's packer writes the same bytes for exactly these
    types, in half the time of the loop below (2.4 against 4.6 µs for a fetch's script
    call); a subclass (a bool, an enum) or any other type is looked at by neither.
    """
    if type(args[0]) is not str or " " in args[0]:  # "CLIENT LIST": redis-py splits it
        return None
    if _c_pack is not None:
        if not _PLAIN.issuperset(map(type, args)):
            return None
        return [_c_pack(args if type(args) is tuple else tuple(args))]
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is str:
            arg = arg.encode()
        elif kind is int or kind is float:  # (not bool, nor an int subclass: their own repr)
            arg = repr(arg).encode()
        elif kind is not bytes:
            return None
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return [b"".join(parts)]  # a list, as send_packed_command takes


#: The argument types :func:`pack` writes (exactly these: not a subclass).
_PLAIN = frozenset({str, bytes, int, float})
