"""Pick beat's schedule store by the broker's URL: the one module that knows every kind.

The store is always the broker's (its SQLite file, its Redis, with its key prefix), whatever
local files beat is given: the leader lease and the firing claims only pick one sender if every
beat reaches the same ones. A broker kind without a store is refused, never replaced by a local
file. The base class (:mod:`chard.beat.store`) sits below its implementations and imports none
of them; this factory sits above them all. The Redis and PostgreSQL stores are imported lazily, so
that beat on the SQLite default never needs the ``redis`` or ``postgres`` extra.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from chard._utils.log import redact_url
from chard.beat.store import ScheduleStore
from chard.beat.store_memory import MemoryScheduleStore
from chard.beat.store_sqlite import SQLiteScheduleStore
from chard.brokers import check_broker_url
from chard.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from chard.app import Celery

#: Broker URL schemes that have a schedule store (a new kind adds its scheme and a branch).
STORE_SCHEMES = ("sqlite", "redis", "rediss", "unix", "postgresql", "postgres", "memory")

#: One memory store per app, so beat and the Python API see the same state in a test.
_MEMORY_STORES: weakref.WeakKeyDictionary[Celery, MemoryScheduleStore] = weakref.WeakKeyDictionary()
_MEMORY_LOCK = threading.Lock()


def open_schedule_store(app: Celery) -> ScheduleStore:
    """Return the schedule store in ``app``'s broker, chosen by its URL.

    ``sqlite://`` (the embedded default) uses the broker's file, ``redis://``/``rediss://``/
    ``unix://`` the broker's Redis (and its ``global_keyprefix``), ``postgresql://`` the broker's
    PostgreSQL schema, ``memory://`` a store shared
    by everything in this process that uses ``app``.

    Raises:
        ImproperlyConfigured: the broker's URL is unknown or not supported yet (the broker's
            own message), or its kind has no schedule store yet.
    """
    url = app.broker_url
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return SQLiteScheduleStore(url)
    if scheme in ("redis", "rediss", "unix"):
        from chard.beat.store_redis import RedisScheduleStore  # needs the redis extra

        return RedisScheduleStore(url, app.conf.broker_transport_options)
    if scheme in ("postgresql", "postgres"):
        from chard.beat.store_postgres import PostgresScheduleStore  # needs the postgres extra

        return PostgresScheduleStore(url, app.conf.broker_transport_options)
    if scheme == "memory":
        with _MEMORY_LOCK:
            store = _MEMORY_STORES.get(app)
            if store is None:
                store = _MEMORY_STORES[app] = MemoryScheduleStore()
            return store
    check_broker_url(url)  # a URL chard cannot use at all (unknown, not built yet) says so
    raise ImproperlyConfigured(
        f"beat cannot keep its leader lease in broker {redact_url(url)!r} (scheme {scheme!r} has "
        f"no schedule store yet; supported: {', '.join(s + '://' for s in STORE_SCHEMES)}); "
        "run beat against a sqlite://, redis:// or postgresql:// broker"
    )
