"""LISTEN/NOTIFY for one process: a thread that hears notifications and wakes waiters.

Publishers send ``pg_notify(channel, payload)`` inside their transaction, so a
notification is delivered exactly when what it announces becomes visible. A
:class:`Listener` holds one connection that LISTENs on a few channels and a thread that
sleeps in ``poll()`` on it (no query, no timer: an idle process costs the server
nothing) and records each notification under a growing sequence number. Waiters note the
number, look at the tables, and then wait for a notification after that number that
concerns them: nothing committed between their look and their wait is missed.

A lost connection (a database restart) is reopened with back-off; the gap is recorded as
a *wildcard* event, which concerns every waiter (they look again, since notifications sent
meanwhile are lost). While the connection is down, waits return after at most
:data:`DOWN_POLL_INTERVAL`, so waiters fall back to polling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from chard._postgres.database import Database

logger = logging.getLogger(__name__)

#: Longest wait while the listening connection is down (waiters poll meanwhile).
DOWN_POLL_INTERVAL = 0.5
#: Notifications remembered; a waiter further behind treats itself as woken.
HISTORY = 4096
#: Back-off between two attempts to reopen a lost listening connection (seconds).
RECONNECT_MIN, RECONNECT_MAX = 0.1, 5.0

#: ``wanted(channel, payload)``; channel None is the wildcard (a reconnect).
Wanted = Callable[[str, str], bool]


class Listener:
    """LISTEN on ``channels`` in a background thread; let threads wait for notifications.

    Thread-safe. Not inherited across ``fork()``: the owner makes a new one in the child
    (see :meth:`is_mine`).
    """

    def __init__(self, db: Database, channels: Sequence[str], *, purpose: str) -> None:
        self._db = db
        self._channels = list(channels)
        self._purpose = purpose
        self._cond = threading.Condition()
        self._seq = 0
        #: (seq, channel or None for the wildcard, payload)
        self._events: deque[tuple[int, str | None, str]] = deque(maxlen=HISTORY)
        self._is_up = False
        self._is_closing = False
        self._pid = os.getpid()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(
            target=self._run, name=f"chard-pg-listener-{purpose}", daemon=True
        )
        self._thread.start()

    # -- waiters ------------------------------------------------------------------
    def is_mine(self) -> bool:
        """Return whether this listener runs in this process (False in a forked child)."""
        return self._pid == os.getpid()

    def wait_ready(self, timeout: float) -> bool:
        """Block until the channels are listened to (or ``timeout``); return whether they are."""
        with self._cond:
            return self._cond.wait_for(lambda: self._is_up or self._is_closing, timeout) and (
                self._is_up
            )

    @property
    def seq(self) -> int:
        """The number of the newest notification heard; note it before looking at tables."""
        with self._cond:
            return self._seq

    @property
    def is_up(self) -> bool:
        with self._cond:
            return self._is_up

    def has_news(self, since: int, wanted: Wanted) -> bool:
        """Return whether a notification after ``since`` concerns the caller."""
        with self._cond:
            return self._has_news(since, wanted)

    def wait(self, since: int, timeout: float, wanted: Wanted) -> bool:
        """Block until a notification after ``since`` concerns the caller, or ``timeout``.

        Returns True when woken by one (or when the connection is down and the caller
        should look again), False on timeout.
        """
        with self._cond:
            if not self._is_up:
                self._cond.wait(min(timeout, DOWN_POLL_INTERVAL))
                return True
            return self._cond.wait_for(lambda: self._has_news(since, wanted), max(timeout, 0.0))

    def _has_news(self, since: int, wanted: Wanted) -> bool:
        if self._seq <= since:
            return False
        if not self._is_up or (self._events and self._events[0][0] > since + 1):
            return True  # down, or fell behind the history: look again
        for seq, channel, payload in reversed(self._events):
            if seq <= since:
                break
            if channel is None or wanted(channel, payload):
                return True
        return False

    def close(self) -> None:
        """Stop the thread and close its connection (in the process that made it)."""
        if not self.is_mine():
            return  # a forked child: the thread is not here, the pipe and socket are the parent's
        with self._cond:
            if self._is_closing:
                return
            self._is_closing = True
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout=5.0)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the thread -----------------------------------------------------------------
    def _record(self, channel: str | None, payload: str) -> None:
        with self._cond:
            self._seq += 1
            self._events.append((self._seq, channel, payload))
            self._cond.notify_all()

    def _run(self) -> None:
        pause = RECONNECT_MIN
        has_been_up = False
        while not self._is_closing:
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = self._db.connect(purpose=self._purpose)
                conn.add_notify_handler(lambda n: self._record(n.channel, n.payload))
                for channel in self._channels:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                with self._cond:
                    self._is_up = True
                    self._cond.notify_all()
                if has_been_up:
                    logger.warning("PostgreSQL notifications (%s) heard again", self._purpose)
                    self._record(None, "")  # notifications sent while down are lost: look again
                has_been_up, pause = True, RECONNECT_MIN
                self._listen(conn)
            except Exception as exc:  # any failure: the connection is gone, reopen it
                if self._should_stop():
                    break
                logger.warning(
                    "PostgreSQL notifications (%s) lost: %s; reconnecting in %.1fs",
                    self._purpose,
                    exc,
                    pause,
                )
            finally:
                with self._cond:
                    self._is_up = False
                    self._cond.notify_all()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            if not self._is_closing:
                self._pause(pause)
                pause = min(pause * 2, RECONNECT_MAX)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        """Sleep in poll() until the server sends something or close() writes the pipe."""
        pgconn = conn.pgconn
        while not self._is_closing:
            # poll(), not select(): a process may hold descriptors past select's 1024
            poller = select.poll()
            poller.register(conn.fileno(), select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            if any(fd == self._wake_r for fd, _ in poller.poll()):
                return
            pgconn.consume_input()  # raises OperationalError when the connection is gone
            while (notify := pgconn.notifies()) is not None:
                self._record(notify.relname.decode(), notify.extra.decode())

    def _should_stop(self) -> bool:
        with self._cond:
            return self._is_closing

    def _pause(self, seconds: float) -> None:
        with contextlib.suppress(OSError):
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            poller.poll(seconds * 1000)
