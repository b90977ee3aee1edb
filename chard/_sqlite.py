"""chard's SQLite plumbing shared by the broker, the result backend and beat's store.

The URL parser, and the fork gate (:class:`ForkGate`) that every SQLite connection
is used behind so that a forked child never inherits a transaction in progress.

``sqlite:///relative/path`` and ``sqlite:////absolute/path`` (the third slash ends the
empty host, as in SQLAlchemy and Celery). All three users keep their data in one file
(chard's default puts broker, results and beat in ``chard.sqlite3``), so they must agree
on which file a URL names; that is why the parsing lives here, below all of them, rather
than in one of them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from chard.exceptions import ImproperlyConfigured


def parse_sqlite_url(url: str, *, should_ignore_query: bool = False) -> Path:
    """Return the absolute path of the database file ``url`` names.

    Args:
        url: A ``sqlite:///`` URL.
        should_ignore_query: Drop what follows ``?`` (the result backend always has);
            otherwise a query string is refused, so that an option put there by mistake
            is not silently lost (the broker takes its settings as transport options).

    Raises:
        ImproperlyConfigured: not a sqlite URL, a query string (unless ignored), no file
            path, or an in-memory database, which other connections could not see.
    """
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep:
        raise ImproperlyConfigured(f"not a sqlite URL: {url!r}; use 'sqlite:///chard.sqlite3'")
    rest, has_query, _ = rest.partition("?")
    if has_query and not should_ignore_query:
        raise ImproperlyConfigured(
            f"sqlite URL {url!r} has a query string; pass settings as broker options"
        )
    path = rest[1:] if rest.startswith("/") else ""  # the third slash ends the empty host
    if not path:
        raise ImproperlyConfigured(
            f"sqlite URL {url!r} has no file path; use 'sqlite:///relative.sqlite3' "
            "or 'sqlite:////absolute/path.sqlite3'"
        )
    if path == ":memory:" or path.startswith("file:"):
        raise ImproperlyConfigured(
            f"sqlite URL {url!r} names an in-memory database (or a SQLite URI), which other "
            "connections cannot see; use 'memory://' for an in-process broker or backend"
        )
    return Path(path).resolve()


class ForkGate:
    """Lets threads use SQLite together, and ``fork()`` happen only while none does.

    Why. SQLite keeps what a process holds on a file (its POSIX locks, the WAL-index
    lock masks) in memory shared by all of the process's connections to it. A child
    forked while a parent thread is inside a transaction inherits that memory: for
    SQLite, the child then holds the WAL write lock through a connection it never
    uses, and every write of its own is ``database is locked`` for good (a prefork
    worker child forked while its parent's mailbox or event thread was writing never
    leased a message). A thread forked mid-call can also leave SQLite's own mutexes
    locked in the child. So every use of a connection is a section (``with
    FORK_GATE:``) that counts itself in, and the fork waits in a ``before`` hook until
    the count is zero, letting no new one in until the fork is done. Sections nest
    (only a thread's outermost one counts). Without a fork under way, a section costs
    two acquisitions of an uncontended lock.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._inside = 0  # threads in a section now
        self._forking = False
        self._depth = threading.local()  # a thread's nesting: only the outermost counts

    def __enter__(self) -> None:
        depth = getattr(self._depth, "n", 0)
        if depth == 0:
            with self._lock:
                while self._forking:
                    self._cond.wait()
                self._inside += 1
        self._depth.n = depth + 1

    def __exit__(self, *exc_info: object) -> None:
        depth = self._depth.n = self._depth.n - 1
        if depth == 0:
            with self._lock:
                self._inside -= 1
                if self._forking:
                    self._cond.notify_all()

    def before_fork(self) -> None:
        """Wait until no thread is in a section (the lock is held across the fork).

        A section of the forking thread itself is not waited for (it could never end).
        """
        mine = 1 if getattr(self._depth, "n", 0) else 0
        self._lock.acquire()
        self._forking = True
        while self._inside > mine:
            self._cond.wait()

    def after_fork_in_parent(self) -> None:
        self._forking = False
        self._cond.notify_all()
        self._lock.release()

    def after_fork_in_child(self) -> None:
        """Start afresh: the child's one thread keeps only its own sections, if any."""
        depth = getattr(self._depth, "n", 0)
        self._reset()
        if depth:
            self._depth.n, self._inside = depth, 1


#: The one gate of this process: every chard SQLite connection is used inside it.
FORK_GATE = ForkGate()
os.register_at_fork(
    before=FORK_GATE.before_fork,
    after_in_parent=FORK_GATE.after_fork_in_parent,
    after_in_child=FORK_GATE.after_fork_in_child,
)
