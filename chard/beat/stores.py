"""Pick beat's schedule store by the broker's URL: the one module that knows every kind.

The base class (:mod:`chard.beat.store`) sits below its implementations and imports none of
them; this factory sits above them all. The Redis store is imported lazily, so that beat on
the SQLite default never needs the ``redis`` extra.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from chard.beat.store import ScheduleStore
from chard.beat.store_memory import MemoryScheduleStore
from chard.beat.store_sqlite import SQLiteScheduleStore
from chard.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from chard.app import Celery

#: One memory store per app, so beat and the Python API see the same state in a test.
_MEMORY_STORES: weakref.WeakKeyDictionary[Celery, MemoryScheduleStore] = weakref.WeakKeyDictionary()
_MEMORY_LOCK = threading.Lock()


def open_schedule_store(app: Celery, path: str | None = None) -> ScheduleStore:
    """Return the schedule store for ``app``, chosen by its broker URL.

    ``sqlite://`` (the embedded default) uses the broker's file, ``redis://``/``rediss://``/
    ``unix://`` the broker's Redis (and its ``global_keyprefix``), ``memory://`` a store shared
    by everything in this process that uses ``app``. ``path`` (``beat -s``) forces a SQLite file,
    which then guards only the beats of one machine.

    Raises:
        ImproperlyConfigured: the broker's scheme has no schedule store yet.
    """
    url = app.broker_url
    scheme = url.partition("://")[0].lower()
    if path is not None or scheme == "sqlite":
        return SQLiteScheduleStore(path if path is not None else url)
    if scheme in ("redis", "rediss", "unix"):
        from chard.beat.store_redis import RedisScheduleStore  # needs the redis extra

        return RedisScheduleStore(url, app.conf.broker_transport_options)
    if scheme == "memory":
        with _MEMORY_LOCK:
            store = _MEMORY_STORES.get(app)
            if store is None:
                store = _MEMORY_STORES[app] = MemoryScheduleStore()
            return store
    raise ImproperlyConfigured(
        f"beat has no schedule store for broker scheme {scheme!r}; use a sqlite:// or redis:// "
        "broker, or pass -s/--schedule path/to/beat.sqlite3 for a local SQLite store"
    )
