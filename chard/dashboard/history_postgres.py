"""The dashboard's history in the PostgreSQL result backend's schema: one table beside its own.

``<schema>.chard_dashboard_tasks`` with the columns and indexes of :mod:`.history_sql`,
filled from the record on write (``record::jsonb``), created by the ``dashboard``
component's migrations (:meth:`Database.ensure_schema`, as the backend's own tables).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chard._postgres.database import Database, Tx
from chard.dashboard.history import Record
from chard.dashboard.history_sql import COLUMNS, INDEXES, Row, SQLHistory
from chard.exceptions import BackendConnectionError, BackendError

TABLE = "{s}.chard_dashboard_tasks"

MIGRATIONS = (
    f"CREATE TABLE {TABLE} (uuid text PRIMARY KEY, changed double precision NOT NULL,"
    f" record text NOT NULL, {', '.join(f'{c} text' for c in COLUMNS)});"
    + ";".join(index.replace("IF NOT EXISTS ", "").replace("{t}", TABLE) for index in INDEXES),
)


def _json_path(path: str) -> str:
    """``$.extra.group_id`` as PostgreSQL's ``r::jsonb #>> '{extra,group_id}'``."""
    return "r::jsonb #>> '{" + ",".join(path.removeprefix("$.").split(".")) + "}'"


_SAVE = (
    f"INSERT INTO {TABLE} (uuid, changed, record, {', '.join(COLUMNS)}) "
    f"SELECT u, c, r, {', '.join(_json_path(p) for p in COLUMNS.values())} "
    "FROM unnest(%s::text[], %s::float8[], %s::text[]) AS batch(u, c, r) "
    "ON CONFLICT (uuid) DO UPDATE SET changed = excluded.changed, record = excluded.record, "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS)
)


class PostgresHistory(SQLHistory):
    """Task records in PostgreSQL, shared by every dashboard on the same backend."""

    contains = "strpos"

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.db = Database(
            url,
            options,
            role="dashboard",
            connection_error=BackendConnectionError,
            error=BackendError,
        )
        try:
            self.db.ensure_schema("dashboard", MIGRATIONS)
        except BaseException:
            self.db.close()
            raise

    def save(self, records: Sequence[Record]) -> None:
        latest = {uuid: (changed, text) for uuid, changed, text in records}
        if not latest:
            return
        columns = (list(latest), [c for c, _ in latest.values()], [t for _, t in latest.values()])
        self.db.autocommit(lambda tx: tx.run(_SAVE, columns))
        self.changed()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.db.rows(_native(sql), params)

    def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        def run(tx: Tx) -> int:
            return sum(tx.run(_native(sql), params) for sql, params in statements)

        return self.db.transaction(run)

    def close(self) -> None:
        self.db.close()


def _native(sql: str) -> str:
    """The shared SQL for psycopg: ``%s`` parameters, the table in the schema."""
    return sql.replace("?", "%s").replace("{t}", TABLE)
