"""The PostgreSQL schedule store: beat's tables beside the broker's, in the same schema.

Tables: ``chard_beat_entries`` (name, JSON definition), ``chard_beat_runs`` (name, last run in
epoch microseconds, total runs), ``chard_beat_lease`` (one row: owner, expiry) and
``chard_beat_firings`` (claimed slot keys, with expiry). The lease is one conditional upsert and
a firing claim one ``INSERT … ON CONFLICT DO NOTHING``, so both are atomic across machines, and
expiry uses the database's clock (beats on different hosts need no clock agreement).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chard._postgres.database import Database, Tx
from chard._utils.clock import Clock
from chard.beat.store import ScheduleStore
from chard.exceptions import BrokerConnectionError, BrokerError

MIGRATIONS = (
    """
    CREATE TABLE {s}.chard_beat_entries (name text PRIMARY KEY, definition text NOT NULL);
    CREATE TABLE {s}.chard_beat_runs (
        name text PRIMARY KEY, last_run_at bigint NOT NULL, total_run_count bigint NOT NULL
    );
    CREATE TABLE {s}.chard_beat_lease (
        id integer PRIMARY KEY CHECK (id = 1), owner text NOT NULL, expires timestamptz NOT NULL
    );
    CREATE TABLE {s}.chard_beat_firings (key text PRIMARY KEY, expires timestamptz NOT NULL);
    CREATE INDEX chard_beat_firings_expires ON {s}.chard_beat_firings (expires);
    """,
)
_UPSERT_RUN = """
INSERT INTO {s}.chard_beat_runs AS r (name, last_run_at, total_run_count) VALUES (%s, %s, %s)
ON CONFLICT (name) DO UPDATE SET
    last_run_at = greatest(r.last_run_at, excluded.last_run_at),
    total_run_count = greatest(r.total_run_count, excluded.total_run_count)
"""
_LEASE = """
INSERT INTO {s}.chard_beat_lease AS l (id, owner, expires)
VALUES (1, %(owner)s, now() + make_interval(secs => %(timeout)s))
ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, expires = excluded.expires
WHERE l.owner = excluded.owner OR l.expires <= now()
RETURNING owner
"""


class PostgresScheduleStore(ScheduleStore):
    """Beat's state in the broker's PostgreSQL schema: for beats and editors on any machine.

    Args:
        url: The broker's ``postgresql://`` URL (its ``?schema=`` too).
        options: The broker's transport options (``schema``).
        clock: Unused for expiry (the database's clock decides); kept for the interface.
    """

    def __init__(
        self, url: str, options: Mapping[str, Any] | None = None, clock: Clock | None = None
    ) -> None:
        super().__init__(clock)
        self.db = Database(
            url, options, role="beat", connection_error=BrokerConnectionError, error=BrokerError
        )
        try:
            self.db.ensure_schema("beat", MIGRATIONS)
        except BaseException:
            self.db.close()
            raise

    def __repr__(self) -> str:
        return f"<PostgresScheduleStore {self.db.target.redacted} schema={self.db.schema}>"

    def _read_definitions(self) -> dict[str, str]:
        rows = self.db.rows("SELECT name, definition FROM {s}.chard_beat_entries")
        return {str(name): str(text) for name, text in rows}

    def _write_definition(self, name: str, text: str) -> None:
        self.db.rows(
            "INSERT INTO {s}.chard_beat_entries (name, definition) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET definition = excluded.definition",
            (name, text),
        )

    def _delete_definition(self, name: str) -> bool:
        def delete(tx: Tx) -> bool:
            tx.run("DELETE FROM {s}.chard_beat_runs WHERE name = %s", (name,))
            return tx.run("DELETE FROM {s}.chard_beat_entries WHERE name = %s", (name,)) > 0

        return self.db.transaction(delete)

    def _read_runs(self) -> dict[str, tuple[int, int]]:
        rows = self.db.rows("SELECT name, last_run_at, total_run_count FROM {s}.chard_beat_runs")
        return {str(name): (int(at), int(count)) for name, at, count in rows}

    def _write_run(self, name: str, at_us: int, count: int) -> None:
        self.db.rows(_UPSERT_RUN, (name, at_us, count))

    def _acquire_lease(self, owner: str, timeout: float) -> bool:
        return bool(self.db.rows(_LEASE, {"owner": owner, "timeout": timeout}))

    def _release_lease(self, owner: str) -> None:
        self.db.rows("DELETE FROM {s}.chard_beat_lease WHERE id = 1 AND owner = %s", (owner,))

    def _read_lease(self) -> tuple[str, float] | None:
        rows = self.db.rows(
            "SELECT owner, extract(epoch FROM expires - now()) FROM {s}.chard_beat_lease"
            " WHERE id = 1 AND expires > now()"
        )
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    def _claim(self, key: str, ttl: float) -> bool:
        def claim(tx: Tx) -> bool:
            tx.run("DELETE FROM {s}.chard_beat_firings WHERE expires <= now()")
            return (
                tx.run(
                    "INSERT INTO {s}.chard_beat_firings (key, expires)"
                    " VALUES (%s, now() + make_interval(secs => %s)) ON CONFLICT DO NOTHING",
                    (key, ttl),
                )
                == 1
            )

        return self.db.transaction(claim)

    def close(self) -> None:
        """Close the connection; the next call reopens it."""
        self.db.close()
