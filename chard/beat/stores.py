"""Pick beat's schedule store by the broker's URL: the one module that knows every kind.

The store is the broker's (its SQLite file, its Redis, with its key prefix), whatever local
files beat is given: the leader lease and the firing claims only pick one sender if every beat
reaches the same ones. RabbitMQ is the exception, having nothing that can hold a lease: there
the result backend's database is used, or, if it has none, a local file with a warning (see
:func:`open_schedule_store`). Any other broker kind without a store is refused. The base
class (:mod:`chard.beat.store`) sits below its implementations and imports none of them; this
factory sits above them all. The Redis and PostgreSQL stores are imported lazily, so
that beat on the SQLite default never needs the ``redis`` or ``postgres`` extra.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
#: RabbitMQ's schemes: the store is the result backend's, or a local file (see below).
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")

logger = logging.getLogger(__name__)

#: Appended to beat's state file (``-s``) for its local store beside a RabbitMQ broker.
LOCAL_SUFFIX = ".chard.sqlite3"

#: One memory store per app, so beat and the Python API see the same state in a test.
_MEMORY_STORES: weakref.WeakKeyDictionary[Celery, MemoryScheduleStore] = weakref.WeakKeyDictionary()
_MEMORY_LOCK = threading.Lock()


def open_schedule_store(
    app: Celery, state_file: str | os.PathLike[str] | None = None
) -> ScheduleStore:
    """Return the schedule store in ``app``'s broker, chosen by its URL.

    ``sqlite://`` (the embedded default) uses the broker's file, ``redis://``/``rediss://``/
    ``unix://`` the broker's Redis (and its ``global_keyprefix``), ``postgresql://`` the broker's
    PostgreSQL schema, ``memory://`` a store shared
    by everything in this process that uses ``app``.

    RabbitMQ (``amqp://``) has nothing that holds a lease, so there the store is the result
    backend's (SQLite, Redis or PostgreSQL: every beat using that backend agrees on one
    sender), or, when the backend has none (``rpc://``, no backend), a local SQLite file
    beside ``state_file`` (``-s``, ``beat_schedule_filename``): only the beats sharing that
    file agree, which a warning says.

    Raises:
        ImproperlyConfigured: the broker's URL is unknown or not supported yet (the broker's
            own message), or its kind has no schedule store yet.
    """
    url = app.broker_url
    scheme = url.partition("://")[0].lower()
    if scheme in AMQP_SCHEMES:
        return _store_beside_rabbitmq(app, state_file)
    store = _store_at(url, app.conf.broker_transport_options)
    if store is not None:
        return store
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


def _store_at(url: str, options: Mapping[str, Any] | None) -> ScheduleStore | None:
    """The store in the database ``url`` names (SQLite, Redis, PostgreSQL), or None."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return SQLiteScheduleStore(url)
    if scheme in ("redis", "rediss", "unix"):
        from chard.beat.store_redis import RedisScheduleStore  # needs the redis extra

        return RedisScheduleStore(url, options)
    if scheme in ("postgresql", "postgres"):
        from chard.beat.store_postgres import PostgresScheduleStore  # needs the postgres extra

        return PostgresScheduleStore(url, options)
    return None


def _store_beside_rabbitmq(app: Celery, state_file: str | os.PathLike[str] | None) -> ScheduleStore:
    backend = str(app.conf.result_backend or "")
    store = _store_at(backend, app.conf.result_backend_transport_options)
    if store is not None:
        logger.info(
            "beat: RabbitMQ holds no lease; the schedule, leader lease and claims are in the "
            "result backend %s",
            redact_url(backend),
        )
        return store
    path = Path(state_file or app.conf.beat_schedule_filename).expanduser().absolute()
    local = path.with_name(path.name + LOCAL_SUFFIX)
    logger.warning(
        "beat: RabbitMQ holds no lease and the result backend %s has no store: the schedule "
        "and leader lease are in the local file %s, so only beats sharing that file agree on "
        "one sender; for beats on several hosts set result_backend to redis://, "
        "postgresql:// or a sqlite:// file they share",
        redact_url(backend) if backend else "(none)",
        local,
    )
    return SQLiteScheduleStore(f"sqlite:///{local}")
