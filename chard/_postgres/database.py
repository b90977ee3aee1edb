"""One PostgreSQL database as chard uses it: a connection per instance, transactions, migrations.

The only module (with :mod:`chard._postgres.listener`) that calls psycopg. Callers write SQL
with ``{s}`` where the schema goes (``SELECT … FROM {s}.chard_messages``) and get rows back
as tuples; psycopg's errors come out as chard's: the caller names which classes (a broker
raises :class:`~chard.exceptions.BrokerConnectionError`, a result backend
:class:`~chard.exceptions.BackendConnectionError`), and a missing permission is an
:class:`~chard.exceptions.ImproperlyConfigured` naming the grant to make.

Connections: one per :class:`Database`, behind a lock (a worker's consume thread and its
heartbeat thread share it; every use is one short statement or transaction). A connection
that failed is dropped and the next call opens a new one, so a database restart costs the
calls made while it was down, nothing more. After ``fork()`` the child opens its own and
never touches (nor closes: that would end the parent's session) the one it inherited.

Schema versions: each component (``broker``, ``results``, ``beat``) keeps its version in
``<schema>.chard_schema``; :meth:`Database.ensure_schema` applies the missing migration
scripts under an advisory lock, and refuses a schema written by a newer chard.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg

from chard._postgres.url import PostgresTarget, parse_postgres_url
from chard.exceptions import ChardError, ImproperlyConfigured

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds libpq waits for a server that does not answer, unless the URL says otherwise.
DEFAULT_CONNECT_TIMEOUT = 10
Row = tuple[Any, ...]

#: Connections opened before a fork, kept referenced in the child so that garbage collection
#: never finalises them there (libpq would say goodbye on the parent's socket).
_INHERITED: list[psycopg.Connection[Any]] = []


class Tx:
    """Run statements on one connection (inside a transaction, or each on its own)."""

    def __init__(self, conn: psycopg.Connection[Any], schema_sql: str) -> None:
        self._conn = conn
        self._schema_sql = schema_sql

    def sql(self, text: str) -> str:
        """Return ``text`` with ``{s}`` replaced by the quoted schema."""
        return text.replace("{s}", self._schema_sql)

    def rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[Row]:
        """Run one statement and return its rows (none for a statement without any)."""
        cursor = self._conn.execute(self.sql(sql), params)
        return cursor.fetchall() if cursor.description is not None else []

    def run(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> int:
        """Run one statement and return how many rows it touched."""
        cursor = self._conn.execute(self.sql(sql), params)
        return cursor.rowcount

    def copy(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Load ``rows`` into ``{s}.<table>`` with COPY: for large batches, the fastest way in."""
        statement = self.sql(f"COPY {{s}}.{table} ({', '.join(columns)}) FROM STDIN")
        with self._conn.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def notify(self, channel: str, payloads: Iterable[str]) -> None:
        """Send ``payloads`` on ``channel``; delivered when the transaction commits."""
        distinct = list(dict.fromkeys(payloads))
        if distinct:
            self._conn.execute(
                "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (channel, distinct)
            )


class Database:
    """A PostgreSQL database reached through one lazily opened, fork-aware connection.

    Args:
        url: ``postgresql://`` URL (see :mod:`chard._postgres.url`).
        options: transport options (``schema``).
        role: a word naming the user, for ``application_name`` and error messages.
        connection_error: raised (chained) when the server cannot be reached.
        error: raised (chained) for any other database failure.
        synchronous_commit: the sessions' ``synchronous_commit`` (None: the server's). The
            broker and the result backend settle with ``off``: a commit does not wait for
            its WAL flush, and a crash of the server may undo the last fraction of a second
            of leases, acks and results, never a message (publishes commit with ``on``).
            WAL is flushed in order, so an undone result also undoes the later ack, and the
            task runs again: at-least-once holds.
    """

    def __init__(
        self,
        url: str,
        options: Mapping[str, Any] | None = None,
        *,
        role: str,
        connection_error: type[ChardError],
        error: type[ChardError],
        synchronous_commit: str | None = None,
    ) -> None:
        self.target: PostgresTarget = parse_postgres_url(url, options)
        self.role = role
        self.synchronous_commit = synchronous_commit
        self._connection_error = connection_error
        self._error = error
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        #: Whether the connection is new, so a failure on it is no stale session's.
        self._is_fresh = False
        self._pid = os.getpid()

    @property
    def schema(self) -> str:
        return self.target.schema

    def channel(self, kind: str) -> str:
        """Return the notification channel of ``kind`` in this schema: ``chard.<schema>.<kind>``.

        PostgreSQL refuses channel names of 64 bytes or more, so a long schema name is
        replaced by a digest of it (the same in every process).
        """
        name = f"chard.{self.schema}.{kind}"
        if len(name) < 64:
            return name
        digest = hashlib.sha256(self.schema.encode()).hexdigest()[:24]
        return f"chard.{digest}.{kind}"

    # -- running SQL ---------------------------------------------------------------
    def transaction(self, action: Callable[[Tx], T]) -> T:
        """Run ``action`` in one transaction: committed if it returns, rolled back if it raises.

        On a connection that turns out dead (the server restarted since its last use), the
        transaction is run again once on a new one: ``action`` must be safe to repeat, as
        every use in chard is (at worst a message is leased twice and one lease lapses).
        """

        def run(conn: psycopg.Connection[Any]) -> T:
            with conn.transaction():
                return action(Tx(conn, self.target.quoted_schema))

        return self._run(run)

    def autocommit(self, action: Callable[[Tx], T]) -> T:
        """Run ``action`` with each statement its own transaction (no BEGIN/COMMIT trips).

        Retried once on a new connection like :meth:`transaction`.
        """
        return self._run(lambda conn: action(Tx(conn, self.target.quoted_schema)))

    def _run(self, action: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._connection() as conn:
            is_fresh = self._is_fresh
            self._is_fresh = False
            try:
                with self.errors():
                    return action(conn)
            except ChardError as exc:
                stale = isinstance(exc.__cause__, psycopg.OperationalError | psycopg.InterfaceError)
                if is_fresh or not stale or self._conn is not None:
                    raise
                logger.warning("%s; reconnecting to retry once", exc)
        with self._connection() as conn, self.errors():
            self._is_fresh = False
            return action(conn)

    def rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[Row]:
        """Run one statement on its own and return its rows."""
        return self.autocommit(lambda tx: tx.rows(sql, params))

    def connect(self, *, purpose: str) -> psycopg.Connection[Any]:
        """Open a new autocommit connection (a listener's); the caller closes it."""
        settings: dict[str, Any] = {}
        if self.synchronous_commit is not None:
            settings["options"] = f"-c synchronous_commit={self.synchronous_commit}"
        with self.errors(is_connecting=True):
            return psycopg.connect(
                self.target.conninfo,
                autocommit=True,
                connect_timeout=DEFAULT_CONNECT_TIMEOUT,
                # Names the process, so an operator (or a test) can tell whose session it is.
                application_name=f"chard-{self.role}-{purpose}-{os.getpid()}"[:63],
                **settings,
            )

    def close(self) -> None:
        """Close this process's connection; a later call opens a new one."""
        self._check_fork()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- schema --------------------------------------------------------------------
    def ensure_schema(self, component: str, migrations: Sequence[str]) -> int:
        """Bring ``component``'s tables to the newest version; return the version found before.

        ``migrations[i]`` is the SQL script that takes the component from version ``i`` to
        ``i + 1``; applied in one transaction under an advisory lock, so concurrent starts
        migrate once. A version already current costs one read and takes no lock.

        Raises:
            ImproperlyConfigured: the schema was written by a newer chard, or the user may
                not create what is missing.
        """
        current = self.autocommit(lambda tx: self._version(tx, component))
        if current == len(migrations):
            return current
        self._refuse_newer(component, current, len(migrations))

        def migrate(tx: Tx) -> int:
            tx.run("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"chard-schema:{self.schema}",))
            if not tx.rows("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)):
                tx.run("CREATE SCHEMA IF NOT EXISTS {s}")
            tx.run(
                "CREATE TABLE IF NOT EXISTS {s}.chard_schema"
                " (component text PRIMARY KEY, version integer NOT NULL)"
            )
            found = self._version(tx, component)
            self._refuse_newer(component, found, len(migrations))
            for script in migrations[found:]:
                tx.run(script)
            tx.run(
                "INSERT INTO {s}.chard_schema (component, version) VALUES (%s, %s)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, len(migrations)),
            )
            return found

        found = self.transaction(migrate)
        if found < len(migrations):
            logger.info(
                "Migrated chard's %s tables in schema %s from version %d to %d",
                component,
                self.schema,
                found,
                len(migrations),
            )
        return found

    def _version(self, tx: Tx, component: str) -> int:
        if tx.rows("SELECT to_regclass(%s)", (f"{self.target.quoted_schema}.chard_schema",)) == [
            (None,)
        ]:
            return 0
        rows = tx.rows("SELECT version FROM {s}.chard_schema WHERE component = %s", (component,))
        return int(rows[0][0]) if rows else 0

    def _refuse_newer(self, component: str, found: int, known: int) -> None:
        if found > known:
            raise ImproperlyConfigured(
                f"chard's {component} tables in schema {self.schema!r} of "
                f"{self.target.redacted!r} are at version {found}, newer than this chard "
                f"knows ({known}); upgrade chard on this machine to the version that wrote them"
            )

    # -- plumbing --------------------------------------------------------------------
    @contextmanager
    def errors(self, *, is_connecting: bool = False) -> Iterator[None]:
        """Turn psycopg's errors into chard's; forget a connection that broke."""
        try:
            yield
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ImproperlyConfigured(
                f"the PostgreSQL user of {self.target.redacted!r} lacks a permission: "
                f"{_first_line(exc)}; grant it CREATE and USAGE on schema {self.schema!r} "
                "(or CREATE on the database), or choose another schema with '?schema='"
            ) from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if not is_connecting and not self._is_connection_lost(exc):  # a lock timeout...
                raise self._error(
                    f"PostgreSQL {self.target.redacted!r} ({self.role}) failed: {_first_line(exc)}"
                ) from exc
            self._drop_broken()
            raise self._connection_error(
                f"PostgreSQL {self.target.redacted!r} ({self.role}) cannot be reached: "
                f"{_first_line(exc)}; is the server running, and are host, port and "
                "database name right?"
            ) from exc
        except psycopg.Error as exc:
            raise self._error(
                f"PostgreSQL {self.target.redacted!r} ({self.role}) failed: {_first_line(exc)}"
            ) from exc

    def _is_connection_lost(self, exc: psycopg.Error) -> bool:
        """Return whether ``exc`` means the session is gone (worth a reconnect and a retry)."""
        conn = self._conn
        sqlstate = getattr(exc, "sqlstate", None) or ""
        # 08: connection exceptions; 57P: the server shutting down or ending the session.
        return conn is None or conn.broken or conn.closed or sqlstate.startswith(("08", "57P"))

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        self._check_fork()
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = self.connect(purpose="db")
                self._is_fresh = True
            yield self._conn

    def _drop_broken(self) -> None:
        """Close the connection if it is broken (called with the lock held or not)."""
        conn = self._conn
        if conn is not None and (conn.broken or conn.closed):
            self._conn = None
            try:
                conn.close()
            except psycopg.Error as exc:
                logger.debug("Closing a broken PostgreSQL connection failed: %s", exc)

    def _check_fork(self) -> None:
        if self._pid == os.getpid():
            return
        self._lock = threading.Lock()
        if self._conn is not None:
            _INHERITED.append(self._conn)
        self._conn, self._pid = None, os.getpid()


def run_on(
    connection: Any, schema_sql: str, statements: Sequence[tuple[str, Sequence[Any]]]
) -> None:
    """Run ``statements`` on the application's own connection, inside its open transaction.

    ``connection`` is any DB-API connection to PostgreSQL that takes ``%s`` parameters
    (psycopg 3 or 2, Django's ``connection``): what it commits, they commit; what it rolls
    back, vanishes. Its errors are its own and pass through unchanged.
    """
    cursor = connection.cursor()
    try:
        for sql, params in statements:
            cursor.execute(sql.replace("{s}", schema_sql), params)
    finally:
        cursor.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
