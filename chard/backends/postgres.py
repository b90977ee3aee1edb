"""The PostgreSQL result backend: task metas in one table, waiters woken by LISTEN/NOTIFY.

Table ``chard_results`` (in the URL's schema, ``?schema=``, default ``public``): ``key``
(Celery's ``celery-task-meta-<id>``, ``celery-taskset-meta-<id>``, chord counters),
``value`` (the JSON meta, or a counter's digits) and ``expires_at`` (``result_expires``
from the store's time; NULL for never). Expired rows are invisible to reads at once and
deleted now and then by writers (at most once per ``purge_interval`` per process), so no
beat task is needed to clean up.

Every store ``pg_notify``s the key on ``chard.<schema>.results`` in the same statement; a
waiting ``get()`` sleeps on a :class:`~chard._postgres.listener.Listener` until one of its
keys is named, then reads. Chord counters are one atomic ``INSERT … ON CONFLICT DO
UPDATE``, safe across processes and machines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from chard import states
from chard._postgres.database import Database, Tx
from chard._postgres.listener import Listener
from chard.backends.base import Meta, ResultBackend
from chard.exceptions import BackendConnectionError, BackendError

logger = logging.getLogger(__name__)

#: Seconds between two deletions of expired rows by one process.
DEFAULT_PURGE_INTERVAL = 60.0
#: Seconds a first wait gives the listener to LISTEN before it polls instead.
LISTEN_READY_TIMEOUT = 5.0

MIGRATIONS = (
    """
    CREATE TABLE {s}.chard_results (
        key text PRIMARY KEY,
        value bytea NOT NULL,
        expires_at timestamptz
    );
    CREATE INDEX chard_results_expires_at ON {s}.chard_results (expires_at)
        WHERE expires_at IS NOT NULL;
    """,
)

_LIVE = "(expires_at IS NULL OR expires_at > now())"
_EXPIRES = "now() + make_interval(secs => %(ttl)s)"
_SET = f"""
WITH stored AS (
    INSERT INTO {{s}}.chard_results (key, value, expires_at)
    VALUES (%(key)s, %(value)s, {_EXPIRES})
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
    RETURNING key
)
SELECT pg_notify(%(channel)s, key) FROM stored
"""
# Several metas in one statement, keeping a stored state that must win (see
# ResultBackend._is_final_over): a live stored ready state stays unless it is not SUCCESS and
# the incoming one is ready too. Returns the keys written, each also notified.
_STATUS = "(convert_from({0}.value, 'UTF8')::jsonb ->> 'status')"
_STORE_METAS = f"""
WITH stored AS (
    INSERT INTO {{s}}.chard_results AS r (key, value, expires_at)
    SELECT k, v, {_EXPIRES} FROM unnest(%(keys)s::text[], %(values)s::bytea[]) AS m(k, v)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
    WHERE NOT (
        (r.expires_at IS NULL OR r.expires_at > now())
        AND {_STATUS.format("r")} = ANY(%(ready)s)
        AND ({_STATUS.format("r")} = 'SUCCESS' OR NOT {_STATUS.format("excluded")} = ANY(%(ready)s))
    )
    RETURNING key
)
SELECT key, pg_notify(%(channel)s, key) FROM stored
"""
# One statement, so the read-modify-write is atomic; an expired counter restarts from zero.
_INCR = f"""
INSERT INTO {{s}}.chard_results AS r (key, value, expires_at)
VALUES (%(key)s, '1'::bytea, {_EXPIRES})
ON CONFLICT (key) DO UPDATE SET
    value = CASE WHEN r.expires_at IS NOT NULL AND r.expires_at <= now() THEN '1'::bytea
        ELSE convert_to((convert_from(r.value, 'UTF8')::bigint + 1)::text, 'UTF8') END,
    expires_at = excluded.expires_at
RETURNING convert_from(value, 'UTF8')::bigint
"""


class PostgresResultBackend(ResultBackend):
    """Store results in PostgreSQL; ``get()`` is woken by notifications, never polls.

    Options:
        schema: the schema of chard's tables (also ``?schema=`` in the URL).
        purge_interval: seconds between deletions of expired rows (default 60).
        synchronous_commit: ``"off"`` by default (see the broker); ``"on"`` makes every
            store wait for its WAL flush.
    """

    has_native_wait = True

    def __init__(
        self,
        url: str,
        *,
        expires: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(url, expires=expires, options=options)
        self.db = Database(
            url,
            self.options,
            role="results",
            connection_error=BackendConnectionError,
            error=BackendError,
            # A result undone by a server crash is recomputed: its ack, committed later,
            # is undone too (WAL is flushed in order). See Database.
            synchronous_commit=str(self.options.get("synchronous_commit", "off")),
        )
        self.channel = self.db.channel("results")
        self.purge_interval = float(self.options.get("purge_interval", DEFAULT_PURGE_INTERVAL))
        self._next_purge = 0.0
        self._listener: Listener | None = None
        self._listener_lock = threading.Lock()
        self._seen = threading.local()  # .seq: the listener's number before this thread's read
        self._is_schema_ready = False

    # -- primitives -------------------------------------------------------------------
    def _get(self, key: str) -> bytes | None:
        rows = self._rows(
            f"SELECT value FROM {{s}}.chard_results WHERE key = %s AND {_LIVE}", (key,)
        )
        return bytes(rows[0][0]) if rows else None

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """Fetch every key in one statement."""
        rows = self._rows(
            f"SELECT key, value FROM {{s}}.chard_results WHERE key = ANY(%s) AND {_LIVE}",
            (list(dict.fromkeys(keys)),),
        )
        found = {key: bytes(value) for key, value in rows}
        return [found.get(key) for key in keys]

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        params = {"key": key, "value": value, "ttl": ttl, "channel": self.channel}
        self._rows(_SET, params)
        self._purge_expired()

    def _store_metas(self, metas: Sequence[tuple[Meta, bytes]]) -> list[Meta]:
        """Store every meta in one statement, state precedence decided by the database."""
        keys = [self.task_key(meta["task_id"]) for meta, _ in metas]
        if len(set(keys)) != len(keys):  # one key twice: the order decides, one at a time
            return super()._store_metas(metas)
        params = {
            "keys": keys,
            "values": [data for _, data in metas],
            "ttl": self.expires,
            "ready": sorted(states.READY_STATES),
            "channel": self.channel,
        }
        written = {row[0] for row in self._rows(_STORE_METAS, params)}
        self._purge_expired()
        kept_keys = [key for key in keys if key not in written]
        current = dict(zip(kept_keys, self._mget(kept_keys), strict=True)) if kept_keys else {}
        return [
            meta if key in written else (self._load(current[key]) or meta)
            for (meta, _), key in zip(metas, keys, strict=True)
        ]

    def _delete(self, key: str) -> None:
        self._rows("DELETE FROM {s}.chard_results WHERE key = %s", (key,))

    def _incr(self, key: str, ttl: float | None) -> int:
        rows = self._rows(_INCR, {"key": key, "ttl": ttl})
        self._purge_expired()
        return int(rows[0][0])

    # -- waiting ----------------------------------------------------------------------
    def _listen(self, keys: Sequence[str], deadline: float | None) -> Mapping[str, bytes] | None:
        """Start listening (once per process) and note where this thread's read begins."""
        self._seen.seq = self._listener_for_wait().seq
        return None

    def _wait_for_values(self, keys: Collection[str], timeout: float) -> Mapping[str, bytes] | None:
        """Sleep until a notification names one of ``keys``; None then (read them), else ``{}``."""
        listener = self._listener_for_wait()
        since: int = getattr(self._seen, "seq", 0)
        wanted = set(keys)
        if not listener.wait(since, timeout, lambda _, payload: payload in wanted):
            return {}
        self._seen.seq = listener.seq  # noted before the caller reads the keys again
        return None

    def close(self) -> None:
        """Close the connection and the listener; a later call reopens them."""
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is not None and listener.is_mine():
            listener.close()
        self.db.close()

    # -- helpers ------------------------------------------------------------------------
    def _rows(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        if not self._is_schema_ready:
            try:
                self.db.ensure_schema("results", MIGRATIONS)
            except BaseException:
                self.db.close()  # a bad set-up: no session left open behind the error
                raise
            self._is_schema_ready = True
        return self.db.rows(sql, params)

    def _listener_for_wait(self) -> Listener:
        with self._listener_lock:
            listener = self._listener
            if listener is not None and listener.is_mine():
                return listener
            listener = self._listener = Listener(self.db, [self.channel], purpose="results")
        if not listener.wait_ready(LISTEN_READY_TIMEOUT):
            logger.warning("Cannot LISTEN on %s yet; polling meanwhile", self.db.target.redacted)
        return listener

    def _purge_expired(self) -> None:
        """Delete expired rows at most once per ``purge_interval`` in this process."""
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + self.purge_interval

        def purge(tx: Tx) -> int:
            return tx.run(
                "DELETE FROM {s}.chard_results WHERE expires_at IS NOT NULL AND expires_at <= now()"
            )

        try:
            deleted = self.db.autocommit(purge)
        except BackendError as exc:  # housekeeping: the next writer tries again
            logger.warning("Cannot delete expired results: %s", exc)
            self._next_purge = now
            return
        if deleted:
            logger.debug("Deleted %d expired results", deleted)
