"""Objects opened once per process, such as the app's broker and backend connections.

A connection must not cross a fork (two processes on one socket corrupt each other's
replies), so a child after fork sees an empty cache and opens its own. Its lock does
not cross either: a parent thread that held it at the fork never releases the child's
copy, so each cache gets a fresh lock in the child.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

_pid = os.getpid()
_caches: weakref.WeakSet[PerProcess] = weakref.WeakSet()


def _forked() -> None:
    global _pid
    _pid = os.getpid()
    for cache in list(_caches):  # the child's one thread: nobody else holds these yet
        cache._lock = threading.RLock()


os.register_at_fork(after_in_child=_forked)


def current_pid() -> int:
    """This process's id, kept up to date across forks (``os.getpid()`` is a system call)."""
    return _pid


class PerProcess:
    """A keyed cache whose entries belong to the process that opened them."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._pid = os.getpid()
        self._lock = threading.RLock()
        _caches.add(self)

    def peek(self, key: str) -> Any:
        """Return this process's ``key`` or None, without the lock (a dict read is atomic)."""
        item = self._items.get(key)
        return item if item is not None and self._pid == _pid else None

    def get(self, key: str, factory: Callable[[], Any]) -> Any:
        """Return this process's ``key``, opening it with ``factory`` on first use."""
        item = self.peek(key)
        if item is not None:
            return item  # the common case
        with self._lock:
            if self._pid != os.getpid():
                self._items, self._pid = {}, os.getpid()
            item = self._items.get(key)
            if item is None:
                item = self._items[key] = factory()
            return item

    def close(self) -> None:
        """Close every entry this process opened (each has ``close()``) and forget them."""
        with self._lock:
            items, self._items = self._items, {}
            if self._pid == os.getpid():
                for item in items.values():
                    item.close()
